"""Every folder in submissions/ keeps the contract, and every broken submission is refused before training.

The conformance tests run on each folder: it imports with its metadata, its README has the reviewers'
sections, its optimizer covers every parameter once, its schedule is finite, its kernels compute the
baseline's functions, and one short training run on CPU leaves a checkpoint the baseline model loads (an
open-division submission's: one its own code loads, and the baseline's refuses; tests/test_open_division.py).
The refusal tests write deliberately broken submissions to tmp_path, one per rule.
"""

import functools
import math
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch

from baseline.checkpoint import build_model, load_model, load_state_into, load_weights, read_meta
from baseline.config import TrainConfig
from baseline.device import init_runtime
from baseline.hooks import baseline_optimizer, baseline_schedule
from baseline.train import train
from eval.open_model import load_open_model
from protocol.hashing import folder_or_file_hash
from protocol.record import EXIT_INVALID, RunSpec, write_spec
from submissions import SubmissionError, check_submission, load_submission
from submissions.conformance import CHECKED_KINDS, check_kernels, check_optimizer, check_plan, check_schedule
from submissions.contract import ALLOWED_OVERRIDES, FORBIDDEN_OVERRIDES, KERNEL_SPECS, OPEN_OVERRIDES, check_eval_budget
from submissions.scaffold import scaffold
from tests.conftest import GOLDEN, PRETRAIN, REPO
from tests.test_train import TINY as TRAIN_TINY

SUBMISSIONS = sorted(p.name for p in (REPO / "submissions").iterdir() if (p / "submission.py").is_file())
TINY = replace(TRAIN_TINY, total_batch_size=256, num_iterations=1)  # one step of test_train's tiny model


@functools.cache
def loaded(name: str):
    """Each submission imported once per session, so compiled kernels compile once."""
    return load_submission(name)


def test_the_examples_are_all_here():
    assert {"baseline", "muon_newton_schulz", "cosine_schedule", "fused_kernels"} <= set(SUBMISSIONS)
    assert {"unet_skips", "attention_gate"} <= set(SUBMISSIONS)  # the open division's


# ---------------------------------------------------------------------------------------- conformance


@pytest.mark.parametrize("name", SUBMISSIONS)
def test_submission_imports_with_metadata(name):
    sub = loaded(name)
    assert sub.name == name and sub.path == REPO / "submissions" / name
    assert sub.metadata["authors"] and sub.metadata["description"]
    assert set(sub.config_overrides) <= set(ALLOWED_OVERRIDES) | (
        set(OPEN_OVERRIDES) if sub.division == "open" else set()
    )


@pytest.mark.parametrize("name", SUBMISSIONS)
def test_readme_has_claim_method_results_and_command(name):
    readme = (REPO / "submissions" / name / "README.md").read_text()
    headings = re.findall(r"^## (\w+)", readme, flags=re.M)
    assert headings == ["Claim", "Method", "Results", "Reproduce"], headings
    assert re.search(r"\| *run id *\| *seed *\| *timed seconds *\|", readme), "results table lacks run id/seed/time"
    assert f"speedrun run {name} --track" in readme


@pytest.mark.parametrize("name", SUBMISSIONS)
def test_optimizer_covers_every_parameter_once_and_steps(name):
    check_optimizer(loaded(name))


@pytest.mark.parametrize("name", SUBMISSIONS)
def test_schedule_is_finite_at_every_step(name):
    check_schedule(loaded(name))


@pytest.mark.parametrize("name", SUBMISSIONS)
def test_kernels_compute_the_baseline_functions(name):
    check_kernels(loaded(name))


@pytest.mark.parametrize("name", SUBMISSIONS)
def test_trains_on_cpu_into_a_checkpoint_the_baseline_loads(name, tmp_path, golden, pretrain_dir):
    sub = loaded(name)
    recipe = {k: v for k, v in sub.config_overrides.items() if (ALLOWED_OVERRIDES | OPEN_OVERRIDES)[k] in CHECKED_KINDS}
    open_meta = {"division": "open", "submission": {"name": name, "hash": folder_or_file_hash(sub.path)}}
    result = train(
        replace(TINY, **recipe),
        init_runtime("cpu"),
        data_dir=PRETRAIN,
        tokenizer_dir=GOLDEN / "tokenizer",
        out_dir=tmp_path,
        hooks=sub.hooks(),
        log=lambda _msg: None,
        checkpoint_meta=open_meta if sub.division == "open" else None,
    )
    assert result.status == "completed" and result.step == 1 and math.isfinite(result.final_loss)
    if sub.division == "open":  # its weights fit its own code, which the open eval runs; the baseline's refuses
        load_open_model(sub.path, result.checkpoint)
        with pytest.raises(ValueError, match="open-division model"):
            load_model(result.checkpoint, tokenizer_dir=GOLDEN / "tokenizer")
        return
    # No submission code is needed to read the weights back: the architecture is the baseline's.
    from baseline.gpt import GPTConfig

    model = build_model(GPTConfig(**read_meta(result.checkpoint)["model_config"]), "cpu")
    load_state_into(model, load_weights(result.checkpoint))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU paths (Triton) need a CUDA device")
@pytest.mark.parametrize("name", SUBMISSIONS)
def test_kernels_compute_the_baseline_functions_on_cuda(name):
    check_kernels(loaded(name), device="cuda")


# ---------------------------------------------------------------------------------------- the rules as code


def test_every_config_field_is_either_allowed_or_forbidden():
    names = {f.name for f in fields(TrainConfig)}
    assert set(ALLOWED_OVERRIDES).isdisjoint(FORBIDDEN_OVERRIDES)
    assert set(ALLOWED_OVERRIDES) | set(FORBIDDEN_OVERRIDES) == names


def test_kernel_names_are_the_model_operations_and_orthogonalize():
    from baseline.kernels import Kernels

    assert set(KERNEL_SPECS) == {f.name for f in fields(Kernels)} | {"orthogonalize"}


def test_every_allowed_override_loads(tmp_path):
    config = {k: getattr(TrainConfig(), k) for k in ALLOWED_OVERRIDES}
    sub = load_submission(write(tmp_path, f"CONFIG = {config!r}"))
    assert sub.config_overrides == config


def test_eval_budget_must_split_into_whole_batches():
    config = TrainConfig(max_seq_len=512, eval_tokens=262_144, device_batch_size=32)
    check_eval_budget(config)
    with pytest.raises(SubmissionError, match="device_batch_size that divides"):
        check_eval_budget(replace(config, device_batch_size=24))


def test_orthogonalize_kernel_goes_to_the_baseline_optimizer(tmp_path):
    body = "from baseline.optim import polar_express\nKERNELS = {'orthogonalize': polar_express}"
    sub = load_submission(write(tmp_path, body))
    check_submission(sub)
    plan = check_plan(sub)
    optimizer = sub.hooks().build_optimizer(build_model(plan.model_config, "cpu"), plan, torch.float32)
    assert optimizer.orthogonalize is sub.kernels["orthogonalize"]


# ---------------------------------------------------------------------------------------- refusals

METADATA = "METADATA = {'authors': ['t'], 'description': 'a broken submission'}\n"


def write(tmp_path: Path, body: str, metadata: str = METADATA) -> Path:
    folder = tmp_path / "broken"
    folder.mkdir(exist_ok=True)
    (folder / "submission.py").write_text(metadata + textwrap.dedent(body))
    return folder


def refused(tmp_path: Path, body: str, match: str, metadata: str = METADATA, check: bool = False) -> str:
    """The submission is refused with one line containing `match` (by load, or by the checks)."""
    with pytest.raises(SubmissionError) as e:
        sub = load_submission(write(tmp_path, body, metadata))
        if check:
            check_submission(sub)
    message = str(e.value)
    assert "\n" not in message and match in message, message
    assert "broken" in message or "not found" in message, message  # it names the submission
    return message


def test_refuses_a_missing_submission():
    with pytest.raises(SubmissionError, match="not found.*speedrun new"):
        load_submission("no_such_submission")


@pytest.mark.parametrize(
    "body, match",
    [
        ("raise RuntimeError('boom')", "failed to import: RuntimeError: boom"),
        ("import no_such_module", "failed to import: ModuleNotFoundError"),
        ("def build_optimizer(:", "failed to import: SyntaxError"),
    ],
)
def test_refuses_a_submission_that_fails_to_import(tmp_path, body, match):
    refused(tmp_path, body, match)


@pytest.mark.parametrize(
    "metadata, match",
    [
        ("", "has no METADATA"),
        ("METADATA = {'description': 'x'}\n", "lacks 'authors'"),
        ("METADATA = {'authors': ['t'], 'description': ''}\n", "non-empty str"),
        ("METADATA = {'authors': 't', 'description': 'x'}\n", "non-empty list"),
        ("METADATA = {'authors': ['t'], 'description': 'x', 'speedup': 2}\n", "unknown METADATA key 'speedup'"),
    ],
)
def test_refuses_missing_or_malformed_metadata(tmp_path, metadata, match):
    refused(tmp_path, "", match, metadata=metadata)


@pytest.mark.parametrize("field", sorted(FORBIDDEN_OVERRIDES))
def test_refuses_a_forbidden_override(tmp_path, field):
    message = refused(tmp_path, f"CONFIG = {{{field!r}: {getattr(TrainConfig(), field)!r}}}", f"may not set {field!r}")
    assert "remove it" in message


@pytest.mark.parametrize(
    "config, match",
    [
        ("{'data_dir': 'mine'}", "'data_dir' is not a TrainConfig field"),
        ("{'depth': '12'}", "CONFIG['depth'] = '12' is not int"),
        ("{'fp8': 1}", "is not bool"),
        ("[('depth', 12)]", "CONFIG must be a dict"),
    ],
)
def test_refuses_unknown_or_mistyped_overrides(tmp_path, config, match):
    refused(tmp_path, f"CONFIG = {config}", match)


LEAVES_OUT_LM_HEAD = """
from baseline.optim import MuonAdamW, build_param_groups

def build_optimizer(model, plan, compute_dtype):
    groups = build_param_groups(model, **plan.optimizer_kwargs())
    return MuonAdamW(groups[1:], compute_dtype=compute_dtype)  # forgot lm_head
"""
IN_TWO_GROUPS = LEAVES_OUT_LM_HEAD.replace("groups[1:]", "groups + [dict(groups[1])]")
TWICE_IN_A_GROUP = LEAVES_OUT_LM_HEAD.replace(
    "groups[1:]", "[*groups[:1], dict(groups[1], params=2 * groups[1]['params']), *groups[2:]]"
)
NO_INITIAL_LR = """
import torch

def build_optimizer(model, plan, compute_dtype):
    return torch.optim.SGD(model.parameters(), lr=0.1)
"""


@pytest.mark.parametrize(
    "body, match",
    [
        (LEAVES_OUT_LM_HEAD, "leaves out 1 trainable parameter(s) (lm_head.weight)"),
        (IN_TWO_GROUPS, "more than one parameter group"),
        (TWICE_IN_A_GROUP, "holds transformer.wte.weight more than once"),
        (NO_INITIAL_LR, "lacks 'initial_lr'"),
        ("def build_optimizer(model, plan, compute_dtype):\n    return None", "returned NoneType"),
        ("def build_optimizer(model, plan, compute_dtype):\n    raise KeyError('lr')", "raised KeyError"),
        ("build_optimizer = 3", "build_optimizer is not a function (got int)"),
    ],
    ids=["leaves-out-lm-head", "in-two-groups", "twice-in-a-group", "no-initial-lr", "returns-none", "raises", "int"],
)
@pytest.mark.filterwarnings("ignore:optimizer contains a parameter group with duplicate parameters")
def test_refuses_an_optimizer_that_does_not_cover_the_model(tmp_path, body, match):
    refused(tmp_path, body, match, check=True)


NAN_SCHEDULE = """
def build_schedule(plan):
    class Broken:
        def lr_multiplier(self, step, progress): return float('nan') if step == 7 else 1.0
        def muon_momentum(self, step, progress): return 0.95
        def muon_weight_decay(self, step, progress): return 0.0
    return Broken()
"""


def test_refuses_a_schedule_that_is_not_finite(tmp_path):
    refused(tmp_path, NAN_SCHEDULE, "schedule.lr_multiplier(7, ", check=True)


def test_refuses_a_schedule_that_ignores_progress(tmp_path):
    """Schedules take (step, progress): a step-only one would not know where a fixed-budget run ends."""
    body = NAN_SCHEDULE.replace("(self, step, progress)", "(self, step)")
    refused(tmp_path, body, "TypeError", check=True)


@pytest.mark.parametrize(
    "kernel, match",
    [
        ("'mlp_activation': torch.relu", "kernel mlp_activation is not equivalent"),
        ("'rms_norm': lambda x: F.rms_norm(x, (x.size(-1),), eps=1e-3)", "kernel rms_norm is not equivalent"),
        ("'rms_norm': lambda x: F.rms_norm(x, (x.size(-1),)).detach()", "gives no gradient of input 0"),
        ("'rotary': lambda x, cos, sin: k.rotary(x, cos, -sin)", "kernel rotary is not equivalent"),
        ("'attention': lambda q, kk, v, w: attention(q, kk, v, 10**9)", "attention window 16 of 64"),
        ("'softcap_cross_entropy': lambda l, t, r='mean': F.cross_entropy(l.flatten(0, 1), t.flatten(), "
         "ignore_index=-1)", "kernel softcap_cross_entropy is not equivalent"),
        ("'softcap_cross_entropy': lambda l, t, r='mean': k.softcap_cross_entropy(l, t.clamp_min(0), r)",
         "kernel softcap_cross_entropy is not equivalent"),
        ("'orthogonalize': lambda X, steps: optim.polar_express(X, steps - 2)",
         "kernel orthogonalize is not equivalent"),
        ("'attention': lambda q, kk, v, w: attention(q.cuda(), kk, v, w)", "must run in fp32 on CPU"),
    ],
    ids=["relu", "rms-eps", "rms-detached", "rotary-sign", "attention-no-window", "ce-no-softcap", "ce-ignores-none",
         "ortho-3-steps", "cuda-only"],
)  # fmt: skip
def test_refuses_a_kernel_that_is_not_equivalent(tmp_path, kernel, match):
    body = f"""
    import torch
    import torch.nn.functional as F
    from baseline import kernels as k, optim
    from baseline.attention import attention
    KERNELS = {{{kernel}}}
    """
    refused(tmp_path, body, match, check=True)


@pytest.mark.parametrize(
    "body, match",
    [
        ("def build_optimiser(model, plan, compute_dtype): pass", "'build_optimiser', which the trainer never reads"),
        ("def build_scheduler(plan): pass", "did you mean 'build_schedule'"),
        ("config = {'matrix_lr': 0.03}", "did you mean 'CONFIG'"),
        ("KERNEL = {'rms_norm': print}", "did you mean 'KERNELS'"),
    ],
)
def test_refuses_a_misspelt_hook_that_would_silently_be_the_baseline(tmp_path, body, match):
    refused(tmp_path, body, match)


def test_refuses_an_unknown_kernel_name(tmp_path):
    message = refused(tmp_path, "KERNELS = {'rmsnorm': print}", "unknown kernel 'rmsnorm'")
    assert "'rms_norm'" in message  # the fix: the list of known names


def test_refuses_orthogonalize_next_to_its_own_optimizer(tmp_path):
    body = "from baseline.optim import polar_express\nKERNELS = {'orthogonalize': polar_express}\n"
    refused(tmp_path, body + LEAVES_OUT_LM_HEAD, "sets both build_optimizer")


def test_the_training_process_refuses_a_broken_plugin_before_training(tmp_path):
    folder = write(tmp_path, "CONFIG = {'seed': 7}")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    spec = RunSpec(
        submission=f"../{folder.name}", config={}, data_dir=".", val_dir=".", tokenizer_dir=".", device="cpu"
    )
    write_spec(run_dir, spec)
    # In a child process, as the runner starts it (its guard's audit hook would outlive the call here).
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "harness.trainer_process", str(run_dir)], env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == EXIT_INVALID and "may not set 'seed'" in out.stderr.strip().splitlines()[-1], out.stderr
    assert list(run_dir.iterdir()) == [run_dir / "run.json"]  # nothing trained, nothing written


# ---------------------------------------------------------------------------------------- scaffold


def test_scaffold_writes_every_hook_commented_out_and_is_the_baseline(tmp_path):
    folder = scaffold("my_idea", tmp_path)
    source = (folder / "submission.py").read_text()
    for hook in ("# CONFIG = {", "# def build_optimizer(", "# def build_schedule(", "# KERNELS = {"):
        assert hook in source, hook
    for name in [*ALLOWED_OVERRIDES, *KERNEL_SPECS]:
        assert f'#     "{name}":' in source, name
    assert all(len(line) <= 120 for line in source.splitlines())
    sub = load_submission(folder)
    check_submission(sub)
    hooks = sub.hooks()
    assert hooks.build_optimizer is baseline_optimizer and hooks.build_schedule is baseline_schedule
    assert sub.config_overrides == {} and sub.kernels == {}
    readme = (folder / "README.md").read_text()
    assert re.findall(r"^## (\w+)", readme, flags=re.M) == ["Claim", "Method", "Results", "Reproduce"]
    assert "speedrun run my_idea --track" in readme


@pytest.mark.parametrize(
    "name, match", [("My Idea", "lowercase"), ("baseline", "frozen baseline"), ("x.y", "lowercase")]
)
def test_scaffold_refuses_bad_names(tmp_path, name, match):
    with pytest.raises(ValueError, match=match):
        scaffold(name, tmp_path)


def test_scaffold_never_overwrites(tmp_path):
    scaffold("mine", tmp_path)
    with pytest.raises(ValueError, match="already exists"):
        scaffold("mine", tmp_path)
