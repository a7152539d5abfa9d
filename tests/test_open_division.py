"""The open division: a submission's own model trains, checkpoints and is scored without being trusted.

The rules (which division a submission is in, what each may set, what the records and tracks say), the
optimizer groups of unknown models, every refusal of the open conformance check (each a small broken
model written to tmp_path), the two ported ideas against the baseline they extend, the open eval on the
val data, and end to end: an open submission through `speedrun run` on the tiny track, whose eval runs
the copied source in harness/open_eval.py and refuses a model that learns, writes, reads or connects.
"""

import functools
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from pydantic import ValidationError

import sandbox
from baseline.checkpoint import build_model, latest_checkpoint, load_model, read_meta
from baseline.config import plan_training
from baseline.gpt import GPT
from baseline.optim import build_param_groups
from baseline.tokenizer import Tokenizer
from eval.bpb import val_bpb
from eval.open_model import score
from eval.open_scoring import score_in_sandbox
from harness import campaign, runner
from harness.guard import Guard, RefusedAccess
from harness.submit import pack
from protocol.hashing import file_sha256, folder_or_file_hash
from protocol.record import EXIT_INVALID, SubmissionRef, read_record, read_spec
from protocol.source import SOURCE_FILE, check_source, pack_source
from protocol.tracks import load_track
from submissions import SubmissionError, check_submission, load_submission
from submissions.conformance import CHECK_CONFIG, check_plan
from submissions.contract import OPEN_OVERRIDES
from submissions.param_groups import open_param_groups, parameter_roles
from submissions.scaffold import scaffold
from tests.conftest import GOLDEN, PRETRAIN, REPO
from tests.test_harness import cache, write_track  # noqa: F401 -- the tokenizer cache fixture
from tests.test_trust import STEPS, honest  # noqa: F401 -- the baseline's run on the tiny track, seed 5

METADATA = "METADATA = {'authors': ['t'], 'description': 'an open model'}\n"
# A baseline GPT whose logits pass through `logits` and whose loss is the cross-entropy of those logits:
# each refusal below changes one thing of it (MODEL names the class build_model builds).
OPEN_MODEL = """
import torch
import torch.nn as nn
import torch.nn.functional as F
from baseline.checkpoint import build_model as build_gpt
from baseline.gpt import GPT


class Model(GPT):
    def forward(self, idx, targets=None, kv_cache=None, loss_reduction="mean"):
        logits = self.logits(idx)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1, reduction=loss_reduction)
        return loss.view(targets.shape) if loss_reduction == "none" else loss

    def logits(self, idx):
        return super().forward(idx)


MODEL = Model


def build_model(plan, device, compute_dtype):
    return build_gpt(plan.model_config, device, compute_dtype, model_class=MODEL)
"""


def write_open(tmp_path: Path, body: str = "", name: str = "open_model") -> Path:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    (folder / "submission.py").write_text(METADATA + OPEN_MODEL + textwrap.dedent(body))
    return folder


def refused(tmp_path: Path, body: str, match: str) -> str:
    with pytest.raises(SubmissionError) as e:
        check_submission(load_submission(write_open(tmp_path, body)))
    message = str(e.value)
    assert "\n" not in message and match in message and "open_model" in message, message
    return message


# ---------------------------------------------------------------------------------------- the rules


def test_a_submission_is_open_exactly_when_it_defines_build_model(tmp_path):
    assert load_submission("baseline").division == "closed" and load_submission("cosine_schedule").division == "closed"
    sub = load_submission(write_open(tmp_path))
    assert sub.division == "open" and sub.hooks().build_model is sub.build_model
    check_submission(sub)


@pytest.mark.parametrize("field", sorted(OPEN_OVERRIDES))
def test_the_closed_division_refuses_the_architecture_dials_and_names_the_open_one(tmp_path, field):
    folder = tmp_path / "closed_model"
    folder.mkdir()
    (folder / "submission.py").write_text(METADATA + f"CONFIG = {{{field!r}: {getattr(CHECK_CONFIG, field)!r}}}\n")
    with pytest.raises(SubmissionError, match=f"may not set '{field}' in the closed division.*define build_model"):
        load_submission(folder)


def test_the_open_division_sets_the_architecture_dials_and_build_model_gets_them(tmp_path):
    sub = load_submission(
        write_open(tmp_path, "CONFIG = {'head_dim': 64, 'window_pattern': 'SL', 'matrix_lr': 0.03}\n")
    )
    check_submission(sub)
    plan = check_plan(sub)
    assert plan.model_config.n_head == 2 and plan.model_config.window_pattern == "SL"  # 128 wide, heads of 64
    model = sub.build_model(plan, "cpu", torch.float32)
    assert model.transformer.h[0].attn.head_dim == 64


def test_an_open_submission_brings_its_own_operations_not_kernels(tmp_path):
    body = "from baseline import kernels\nKERNELS = {'rms_norm': kernels.rms_norm}\n"
    with pytest.raises(SubmissionError, match=r"KERNELS\['rms_norm'\] replaces an operation of the baseline model"):
        load_submission(write_open(tmp_path, body))
    sub = load_submission(
        write_open(tmp_path, "from baseline.optim import polar_express\nKERNELS = {'orthogonalize': polar_express}\n")
    )
    plan = check_plan(sub)
    optimizer = sub.hooks().build_optimizer(sub.build_model(plan, "cpu", torch.float32), plan, torch.float32)
    assert optimizer.orthogonalize is sub.kernels["orthogonalize"]


def test_build_model_must_take_plan_device_and_compute_dtype(tmp_path):
    with pytest.raises(SubmissionError, match=r"build_model cannot be called as build_model\(plan, device, compute"):
        load_submission(write_open(tmp_path, "def build_model(plan):\n    return None\n"))


def test_importing_the_baselines_build_model_under_its_name_is_not_entering_the_open_division(tmp_path):
    folder = tmp_path / "closed_model"
    folder.mkdir()
    (folder / "submission.py").write_text(METADATA + "from baseline.checkpoint import build_model\n")
    with pytest.raises(SubmissionError, match="imported under the hook's name.*import it as another name"):
        load_submission(folder)


def test_records_carry_the_division_and_the_schema_knows_only_two():
    assert SubmissionRef(name="x").division == "closed"
    assert SubmissionRef(name="x", division="open").division == "open"
    with pytest.raises(ValidationError):
        SubmissionRef(name="x", division="mixed")


def test_tracks_declare_the_divisions_they_rank(tmp_path):
    assert all(load_track(t).divisions == ("closed", "open") for t in ("gpt2", "d12", "cpu-books"))
    assert load_track("cpu").divisions == ("closed",)  # not declared: closed only
    path = write_track(tmp_path)
    path.write_text(path.read_text().replace("provisional = true", 'provisional = true\ndivisions = ["mixed"]'))
    with pytest.raises(ValueError, match="divisions \\['mixed'\\] must be some of"):
        load_track(path)


def test_the_runner_refuses_an_open_submission_where_it_cannot_be_ranked_or_scored(tmp_path):
    sub = write_open(tmp_path)
    with pytest.raises(ValueError, match="track cpu ranks the closed division only, and open_model is in the open"):
        campaign.plan_campaign(load_track("cpu"), str(sub), [1])
    with pytest.raises(ValueError, match="track gpt2 is judged by core.*scores val bpb only"):
        campaign.plan_campaign(load_track("gpt2"), str(sub), [1])


# ---------------------------------------------------------------------------------------- optimizer groups


def test_the_open_groups_of_the_baseline_model_are_the_baseline_groups():
    plan = plan_training(CHECK_CONFIG)
    model = build_model(plan.model_config, "cpu")
    ours, theirs = open_param_groups(model, plan), build_param_groups(model, **plan.optimizer_kwargs())
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert [id(p) for p in a["params"]] == [id(p) for p in b["params"]]
        assert {k: v for k, v in a.items() if k != "params"} == {k: v for k, v in b.items() if k != "params"}


class _Extended(GPT):
    """The baseline GPT with a new matrix, a new scalar vector and a new embedding table."""

    def __init__(self, config, kernels=None):
        super().__init__(config, kernels)
        self.mixer = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.gains = nn.Parameter(torch.ones(config.n_layer))
        self.bigram = nn.Embedding(config.vocab_size, config.n_embd)


def test_new_parameters_get_a_role_and_every_parameter_is_in_exactly_one_group():
    plan = plan_training(CHECK_CONFIG)
    model = _Extended(plan.model_config)
    roles = parameter_roles(model)
    assert (roles["mixer.weight"], roles["gains"], roles["bigram.weight"]) == ("muon", "scalars", "value_embeds")
    assert roles["lm_head.weight"] == "lm_head" and roles["transformer.h.0.attn.c_q.weight"] == "muon"
    held = [id(p) for g in open_param_groups(model, plan) for p in g["params"]]
    assert sorted(held) == sorted(id(p) for p in model.parameters())


# ---------------------------------------------------------------------------------------- conformance refusals

EXTRA_PARAMETER = """
class Biased(Model):
    def __init__(self, config, kernels=None):
        super().__init__(config, kernels)
        self.logit_bias = nn.Parameter(torch.empty(config.vocab_size))

    def init_weights(self, compute_dtype=torch.float32):
        super().init_weights(compute_dtype)
        with torch.no_grad():
            self.logit_bias.zero_()

    def logits(self, idx):
        return super().logits(idx) + self.logit_bias


MODEL = Biased
"""
LEAVES_IT_OUT = (
    EXTRA_PARAMETER
    + """
def build_optimizer(model, plan, compute_dtype):
    from baseline.optim import MuonAdamW
    from submissions.param_groups import open_param_groups

    groups = open_param_groups(model, plan)
    for group in groups:
        group["params"] = [p for p in group["params"] if p is not model.logit_bias]
    return MuonAdamW([g for g in groups if g["params"]], compute_dtype=compute_dtype)
"""
)
STATE_OUTSIDE_THE_CHECKPOINT = """
class Offset(Model):
    def __init__(self, config, kernels=None):
        super().__init__(config, kernels)
        self.register_buffer("offset", torch.empty(config.vocab_size), persistent=False)  # not in the state_dict

    def init_weights(self, compute_dtype=torch.float32):
        super().init_weights(compute_dtype)
        self.offset.normal_()

    def logits(self, idx):
        return super().logits(idx) + self.offset


MODEL = Offset
"""
COUNTS_IN_A_BUFFER = """
class Counting(Model):
    def __init__(self, config, kernels=None):
        super().__init__(config, kernels)
        self.register_buffer("seen", torch.zeros(()))

    def init_weights(self, compute_dtype=torch.float32):
        super().init_weights(compute_dtype)
        self.seen.zero_()

    def logits(self, idx):
        if not self.training:
            self.seen += 1  # learns from every batch it is scored on
        return super().logits(idx) - 0.01 * self.seen


MODEL = Counting
"""
# Learns in a plain attribute (no parameter or buffer changes); only rows longer than the check's 32 tokens
# when LONG_ROWS_ONLY, so that the tiny conformance check passes and the run's eval has to catch it.
REMEMBERS_IN_AN_ATTRIBUTE = """
LONG_ROWS_ONLY = {long_rows_only}


class Memory(Model):
    def logits(self, idx):
        out = super().logits(idx)
        if not self.training and (idx.size(1) > 32 or not LONG_ROWS_ONLY):
            self.memory = getattr(self, "memory", 0.0) + 0.01
            out = out + self.memory * torch.nn.functional.one_hot(idx, out.size(-1))  # favours repeated tokens
        return out


MODEL = Memory
"""


def _logits(expression: str) -> str:
    """A Model whose logits are `expression` of the baseline's (`out`) and the input (`idx`)."""
    return textwrap.dedent(f"""
        class Changed(Model):
            def logits(self, idx):
                out = super().logits(idx)
                return {expression}


        MODEL = Changed
    """)


def _loss(expression: str) -> str:
    """A Model whose loss (with targets) is `expression` of the honest one (`out`)."""
    return textwrap.dedent(f"""
        class Changed(Model):
            def forward(self, idx, targets=None, **kwargs):
                out = super().forward(idx, targets, **kwargs)
                return out if targets is None else {expression}


        MODEL = Changed
    """)


@pytest.mark.parametrize(
    "body, match",
    [
        (_logits("torch.cat([out, out[..., :1]], dim=-1)"), "model(idx) returned (2, 32, 513) torch.float32"),
        (_logits("out.flatten(0, 1)"), "model(idx) returned (64, 512) torch.float32"),
        (_logits("out.bfloat16()"), "model(idx) returned (2, 32, 512) torch.bfloat16; the logits must be float32"),
        (_logits("out * float('nan')"), "model(idx) has non-finite logits"),
        (_loss("out * float('inf')"), "model(idx, targets) has non-finite loss"),
        (_loss("out * 0.5"), "is not the cross-entropy of model(idx)'s logits"),
        (_logits("out + 5 * F.one_hot(idx.roll(-1, dims=1), out.size(-1))"), "changing the tokens after position 15"),
        (_logits("out + out.mean(0, keepdim=True)"), "row 1 alone (the other row removed) changes the logits"),
        (LEAVES_IT_OUT, "build_optimizer leaves out 1 trainable parameter(s) (logit_bias)"),
        (EXTRA_PARAMETER.replace("return super().logits(idx) + self.logit_bias", "return super().logits(idx)"),
         "logit_bias did not change in 4 training steps"),
        (STATE_OUTSIDE_THE_CHECKPOINT, "cannot load its own checkpoint"),
        (_logits("out + 0.01 * torch.randn(out.size(-1))"), "is not deterministic in eval mode"),
        (COUNTS_IN_A_BUFFER, "scoring the val data changed the model's seen"),
        (REMEMBERS_IN_AN_ATTRIBUTE.format(long_rows_only=False), "scoring the batches in reverse order changes batch"),
    ],
    ids=["wrong-vocab", "wrong-shape", "bf16-logits", "nan-logits", "inf-loss", "loss-not-of-logits", "peeks",
         "rows-leak", "left-out-of-optimizer", "never-trains", "state-outside-checkpoint", "nondeterministic",
         "learns-in-a-buffer", "learns-in-an-attribute"],
)  # fmt: skip
def test_the_open_check_refuses_a_broken_model(tmp_path, body, match):
    refused(tmp_path, body, match)


def test_speedrun_new_open_writes_the_rules_and_passes_conformance(tmp_path):
    folder = scaffold("my_model", tmp_path, open_division=True)
    source = (folder / "submission.py").read_text()
    assert all(len(line) <= 120 for line in source.splitlines())
    for rule in ("1. Return an initialised torch.nn.Module", "3. Causal, row by row", "5. In eval mode", "7. No files"):
        assert rule in source, rule
    for name in OPEN_OVERRIDES:
        assert f'#     "{name}": ...,  # architecture' in source, name
    sub = load_submission(folder)
    assert sub.division == "open"
    check_submission(sub)


# ---------------------------------------------------------------------------------------- the two ports


@functools.cache
def _port(name: str):
    sub = load_submission(name)
    plan = check_plan(sub)
    torch.manual_seed(0)
    model = sub.build_model(plan, "cpu", torch.float32)
    torch.manual_seed(0)
    return model, build_model(plan.model_config, "cpu"), torch.randint(0, CHECK_CONFIG.vocab_size, (2, 32))


@pytest.mark.parametrize("name", ["unet_skips", "attention_gate"])
def test_a_port_starts_from_the_baselines_weights_plus_its_own(name):
    model, baseline, _ = _port(name)
    theirs, ours = baseline.state_dict(), model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in theirs.items())
    extra = set(ours) - set(theirs)
    assert extra == (
        {"skip_weights"} if name == "unet_skips" else {f"transformer.h.{i}.attn.attn_gate.weight" for i in range(2)}
    )


@torch.no_grad()
def test_unet_skips_is_the_baseline_when_its_skips_are_closed():
    model, baseline, x = _port("unet_skips")
    for block in (*model.transformer.h, *baseline.transformer.h):  # make every layer matter
        block.attn.c_proj.weight.normal_(0, 0.02)
        block.mlp.c_proj.weight.normal_(0, 0.02)
    baseline.load_state_dict({k: v for k, v in model.state_dict().items() if k != "skip_weights"})
    assert not torch.allclose(model(x), baseline(x), atol=1e-4)  # open skips change the function
    model.skip_weights.zero_()
    assert torch.allclose(model(x), baseline(x), atol=1e-6)


@torch.no_grad()
def test_attention_gate_is_the_baseline_when_its_gates_are_constant():
    model, baseline, x = _port("attention_gate")
    for block, theirs in zip(model.transformer.h, baseline.transformer.h, strict=True):
        block.attn.c_proj.weight.normal_(0, 0.02)
        theirs.attn.c_proj.weight.copy_(0.5 * block.attn.c_proj.weight)  # every gate is sigmoid(0) = 0.5
    assert torch.allclose(model(x), baseline(x), atol=1e-6)
    model.transformer.h[0].attn.attn_gate.weight.normal_()
    assert not torch.allclose(model(x), baseline(x), atol=1e-4)


# ---------------------------------------------------------------------------------------- the eval on val data


@pytest.fixture(scope="module")
def tokenizer(golden, pretrain_dir):
    return Tokenizer.load(GOLDEN / "tokenizer")


def _scored(model, tokenizer):
    return score(model.eval(), tokenizer, PRETRAIN, tokens=4 * 128 * 3, batch_size=4, seq_len=128)


def _tiny_gpt(tokenizer, model_class=GPT):
    config = replace(CHECK_CONFIG, vocab_size=tokenizer.vocab_size, max_seq_len=128, total_batch_size=256)
    torch.manual_seed(0)
    return build_model(plan_training(config).model_config, "cpu", model_class=model_class)


def test_scoring_the_logits_gives_the_closed_evals_bpb_to_the_bit(tokenizer):
    model = _tiny_gpt(tokenizer)
    result = _scored(model, tokenizer)
    closed = val_bpb(model, tokenizer, PRETRAIN, tokens=4 * 128 * 3, batch_size=4, seq_len=128)
    assert result["problem"] is None and result["bpb"] == closed["bpb"] and result["steps"] == 3
    assert result["batch_nats"] == result["reverse_batch_nats"] and sum(result["batch_nats"]) > 0


class _Remembers(GPT):
    """Learns from what it scores: every forward in eval mode sharpens its logits a little more."""

    def forward(self, idx, targets=None, kv_cache=None, loss_reduction="mean"):
        self.seen = getattr(self, "seen", 0) + 1
        return super().forward(idx) * (1 + 0.1 * self.seen)


class _Peeks(GPT):
    """Sees the next token: its logits favour the token that follows each position."""

    def forward(self, idx, targets=None, kv_cache=None, loss_reduction="mean"):
        return super().forward(idx) + 3 * nn.functional.one_hot(idx.roll(-1, dims=1), self.config.vocab_size)


@pytest.mark.parametrize(
    "model_class, match",
    [(_Remembers, "scores .* nats in order and .* in reverse order"), (_Peeks, "the model is not causal")],
)
def test_the_eval_refuses_a_model_that_learns_from_the_order_or_peeks(tokenizer, model_class, match):
    model = _tiny_gpt(tokenizer, model_class)
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.05)  # logits of some size (they start near 0), so that changes show
    result = _scored(model, tokenizer)
    assert result["problem"] is not None and re.search(match, result["problem"]), result


# ---------------------------------------------------------------------------------------- end to end


def write_open_track(tmp_path: Path, steps: int) -> Path:
    path = write_track(tmp_path, steps=steps)
    path.write_text(
        path.read_text().replace("provisional = true", 'provisional = true\ndivisions = ["closed", "open"]')
    )
    return path


@pytest.fixture(scope="session")
def open_run(tmp_path_factory):
    """`speedrun new --open`'s submission (the baseline's model, built by build_model) on the tiny track, seed 5.

    Session-wide: the open verification and open chat tests read the same run, trained once."""
    tmp = tmp_path_factory.mktemp("open")
    os.environ["SPEEDRUN_CACHE"] = str(tmp_path_factory.getbasetemp() / "speedrun-cache")
    sub = scaffold("open_baseline", tmp, open_division=True)
    [run_dir] = runner.run(load_track(write_open_track(tmp, STEPS)), str(sub), seeds=[5], runs_dir=tmp / "runs")
    return sub, run_dir, read_record(run_dir)


def test_an_open_run_trains_the_copied_source_and_the_open_eval_scores_it(open_run):
    sub, run_dir, record = open_run
    assert record.status == "completed" and record.official, record.error
    assert record.submission.division == "open" and record.provenance.submission.division == "open"
    source = run_dir / "source" / "open_baseline"
    assert folder_or_file_hash(source) == folder_or_file_hash(sub) == record.submission.hash
    meta = read_meta(run_dir / record.files.checkpoint)
    assert meta["division"] == "open" and meta["submission"] == {
        "name": "open_baseline",
        "hash": record.submission.hash,
    }
    assert "open eval: val bpb" in (run_dir / "train.log").read_text()  # harness/open_eval.py scored it
    assert (run_dir / "open_eval.json").is_file() and 0 < record.result.val_bpb < 10
    with pytest.raises(ValueError, match="holds an open-division model"):
        load_model(run_dir / record.files.checkpoint)


def test_an_open_submission_of_the_baselines_model_scores_the_closed_runs_bpb(open_run, honest):  # noqa: F811
    """The same model, optimizer groups, seed and data through the open path: the same number, to the bit."""
    assert open_run[2].result.val_bpb == honest[1].result.val_bpb


def _open_eval(run_dir: Path, tmp_path: Path, body: str | None, keep_hash: bool = False) -> subprocess.CompletedProcess:
    """harness/open_eval.py on a copy of the open run (a sibling: run.json's paths hold), its source edited."""
    copy = run_dir.with_name(f"{run_dir.name}-{tmp_path.name}")
    shutil.copytree(run_dir, copy, symlinks=True)
    source = copy / "source" / "open_baseline"
    expected = folder_or_file_hash(source)
    if body is not None:
        (source / "submission.py").write_text((source / "submission.py").read_text() + textwrap.dedent(body))
    checkpoint = latest_checkpoint(copy / "checkpoints")
    args = [
        copy,
        checkpoint,
        file_sha256(checkpoint / "model.safetensors"),
        expected if keep_hash else folder_or_file_hash(source),
    ]
    return subprocess.run([sys.executable, "-m", "harness.open_eval", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip


WRAPPED = """
from baseline.gpt import GPT as _GPT


class Wrapped(_GPT):
    def forward(self, idx, targets=None, kv_cache=None, loss_reduction="mean"):
        out = super().forward(idx, targets, kv_cache, loss_reduction)
        {action}
        return out


def build_model(plan, device, compute_dtype):
    return build_baseline_gpt(plan.model_config, device, compute_dtype, model_class=Wrapped)
"""


@pytest.mark.parametrize(
    "action, match",
    [
        ("open(__import__('pathlib').Path(__file__).parents[3] / 'stash.txt', 'w').write('val data')",
         "writing .*stash.txt was refused"),
        ("open(__import__('pathlib').Path(__file__).parents[2] / 'data/train/shard_00000.parquet', 'rb').read(1)",
         "reading .*shard_00000.parquet was refused"),
        ("__import__('socket').create_connection(('127.0.0.1', 9))", "opening a network connection"),
        ("__import__('subprocess').run(['true'])", "starting a process"),
    ],
    ids=["writes-outside", "reads-training-data", "connects", "starts-a-process"],
)  # fmt: skip
def test_the_open_eval_of_a_run_refuses_a_model_that(open_run, tmp_path, action, match):
    out = _open_eval(open_run[1], tmp_path, WRAPPED.format(action=action))
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == EXIT_INVALID and last.startswith("speedrun: invalid: "), out.stderr
    assert re.search(match, last), last


# Learns only on rows longer than the conformance check's 32 tokens: the tiny check passes, the run's eval catches it.
LEARNS_ON_LONG_ROWS = (
    "self.seen = getattr(self, 'seen', 0) + 1; out = out * (1 + 0.01 * self.seen) if idx.size(1) > 32 else out"
)


def test_a_model_that_learns_only_on_long_rows_passes_the_tiny_check_and_the_runs_eval_refuses_it(open_run, tmp_path):
    variant = tmp_path / "variant"
    shutil.copytree(open_run[0], variant)
    learner = WRAPPED.format(action=LEARNS_ON_LONG_ROWS)
    (variant / "submission.py").write_text((variant / "submission.py").read_text() + learner)
    check_submission(load_submission(variant))
    out = _open_eval(open_run[1], tmp_path, learner)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == EXIT_INVALID and re.search("nats in order and .* in reverse order", last), out.stderr


def test_the_open_eval_refuses_a_source_changed_after_registration(open_run, tmp_path):
    out = _open_eval(open_run[1], tmp_path, "\n# an edit after the run was registered\n", keep_hash=True)
    assert out.returncode == EXIT_INVALID and "changed after the run was registered" in out.stderr, out.stderr


def test_the_bundle_of_an_open_run_carries_its_source_as_the_record_hashes_it(open_run, tmp_path):
    _, run_dir, record = open_run
    with tarfile.open(fileobj=io.BytesIO(pack(run_dir))) as bundle:
        member = bundle.extractfile(SOURCE_FILE).read()
    assert member == pack_source(run_dir / "source" / "open_baseline")  # the code it trained from, the same bytes
    unpacked = check_source(member, tmp_path / "unpacked", name="open_baseline", expected=record.submission.hash)
    assert folder_or_file_hash(unpacked) == record.submission.hash


@pytest.mark.skipif(sandbox.available() is not None, reason=f"no sandbox here: {sandbox.available()}")
def test_the_server_can_score_an_open_checkpoint_in_the_sandbox(open_run, tmp_path):
    """eval.open_scoring.score_in_sandbox: the leaderboard's way in; the same number as the run's own open eval."""
    _, run_dir, record = open_run
    spec = read_spec(run_dir)
    result = score_in_sandbox(
        source=spec.path(run_dir, "submission"), checkpoint=run_dir / record.files.checkpoint,
        tokenizer_dir=spec.path(run_dir, "tokenizer_dir"), val_dir=spec.path(run_dir, "val_dir"),
        tokens=record.config["eval_tokens"], batch_size=record.config["device_batch_size"], work_dir=tmp_path / "work",
    )  # fmt: skip
    assert result["problem"] is None and result["bpb"] == record.result.val_bpb


def test_an_isolated_guard_refuses_sockets_and_processes(tmp_path):
    guard = Guard(threads=None, allow_writing=[tmp_path], isolated=True)
    guard.install()
    try:
        with pytest.raises(RefusedAccess, match="network connection"):
            __import__("socket").socket()
        with pytest.raises(RefusedAccess, match="starting a process"):
            subprocess.run(["true"])
    finally:
        guard.active = False  # an audit hook cannot be removed: switch it off for the rest of this process
