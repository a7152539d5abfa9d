"""CORE equals nanochat's, example by example; the batched scorer equals the reference scorer.

Golden: ../shared/golden/core (nanochat's evaluate_core on the trained golden model, 24 examples per
task). These tests run with one torch thread: on a shared 2-core box two OpenMP threads stall each
other (10x slower here), and the golden logits are bitwise the same with 1 or 2 threads.
"""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from baseline.attention import attention as default_attention
from baseline.checkpoint import build_model, load_state_into, save_checkpoint
from baseline.gpt import GPTConfig
from baseline.tokenizer import Tokenizer
from eval import bundle, core, core_reference
from eval.core_tasks import build_examples, load_task
from eval.prefix_cache import PrefixCache, banded_attention
from eval.run import add_arguments, evaluate, evaluate_task, format_table, main
from tests.conftest import DATA, load_json
from tests.test_gpt import GOLDEN_CONFIG

BUNDLE = DATA / "eval_bundle"
CHEAP_TASKS = ["copa", "openbook_qa", "lambada_openai", "winograd", "winogrande", "bigbench_qa_wikidata"]
# Tiny random models: sliding windows far shorter than 10-shot prompts (so the batched scorer cuts
# them), GQA, and a long-window one where nothing is cut.
TINY = {
    "short_windows_gqa": GPTConfig(
        sequence_len=64, vocab_size=4096, n_layer=2, n_head=2, n_kv_head=1, n_embd=64, window_pattern="SL"
    ),
    "long_windows": GPTConfig(sequence_len=1024, vocab_size=4096, n_layer=3, n_head=4, n_kv_head=2, n_embd=64),
}
# One task per kind of work: 10-shot MC (long shared prompt), 0-shot MC, schema, 0-shot LM, 10-shot LM, and
# squad (prompts up to 3.7k tokens).
MIXED_TASKS = ["arc_easy", "copa", "winograd", "lambada_openai", "bigbench_operators", "squad"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run faster on one thread


@pytest.fixture(scope="module")
def bundle_dir():
    if not (BUNDLE / "core.yaml").is_file():
        pytest.skip(f"eval bundle not found at {BUNDLE} (set SPEEDRUN_SHARED)")
    return BUNDLE


@pytest.fixture(scope="module")
def tokenizer(golden):
    return Tokenizer.load(golden / "tokenizer")


@pytest.fixture(scope="module")
def trained(golden):
    model = build_model(GPTConfig(**GOLDEN_CONFIG), "cpu")
    model.load_state_dict(load_file(golden / "optim" / "state_step6.safetensors"))
    return model.eval()


@pytest.fixture(scope="module")
def golden_results(golden):
    return {t["label"]: t for t in load_json(golden / "core" / "results.json")["tasks"]}


@pytest.fixture(scope="module")
def golden_examples(golden):
    lines = (golden / "core" / "examples.jsonl").read_text().splitlines()
    examples = {}
    for line in lines:
        ex = json.loads(line)
        examples.setdefault(ex["task"], []).append(ex)
    return examples


def specs(bundle_dir):
    return {s.label: s for s in bundle.read_tasks(bundle_dir)}


def task_examples(bundle_dir, tokenizer, label, max_per_task):
    spec = specs(bundle_dir)[label]
    return build_examples(spec, load_task(bundle_dir, spec, max_per_task), tokenizer)


def random_model(config: GPTConfig, seed: int):
    """Init, then noise on every weight (lm_head strongest) so that every path carries signal."""
    torch.manual_seed(seed)
    model = build_model(config, "cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p += (0.5 if name == "lm_head.weight" else 0.1) * torch.randn(p.shape, generator=g)
    model.extend_rotary(4096)
    return model.eval()


# ------------------------------------------------------------------ prompts, tokens, spans


def test_prompts_tokens_and_spans_equal_nanochats(bundle_dir, tokenizer, golden, golden_results):
    prompts = [json.loads(line) for line in (golden / "core" / "prompts.jsonl").read_text().splitlines()]
    assert {p["task"] for p in prompts} == set(golden_results) and len(prompts) == 3 * len(golden_results)
    for label, spec in specs(bundle_dir).items():
        data = load_task(bundle_dir, spec, 24)
        assert [line for line, _ in data] == golden_results[label]["source_lines"], label
        examples = build_examples(spec, data, tokenizer, range(3))
        for want in (p for p in prompts if p["task"] == label):
            ex = examples[want["idx"]]
            assert ex.fewshot == want["fewshot_indices"], label
            assert ex.prompts == want["prompts"], label
            assert ex.rows == want["tokens"], label
            assert (ex.starts, ex.ends) == (want["start_idxs"], want["end_idxs"]), label
            assert ex.gold == want["gold"], label


# ------------------------------------------------------------------ equality with nanochat


@pytest.fixture(scope="module")
def golden_run(bundle_dir, tokenizer, trained):
    return evaluate(model=trained, tokenizer=tokenizer, eval_bundle=bundle_dir, max_per_task=24)


def test_batched_core_equals_nanochats_for_every_example_and_task(golden_run, golden, golden_results):
    assert golden_run["tasks_scored"] == list(golden_results)
    for label, want in golden_results.items():
        got = golden_run["tasks"][label]
        assert got["correct"] == want["correct"], label
        assert got["accuracy"] == want["accuracy"] and got["centered"] == want["centered"], label
        assert (got["n"], got["shots"], got["type"]) == (want["n"], want["num_fewshot"], want["task_type"])
        assert got["rechecked"] == 0, label  # the golden margins are >= 0.0163: no near ties
    expected = load_json(golden / "core" / "results.json")["core_metric"]
    assert golden_run["core"] == pytest.approx(expected, rel=1e-9)
    assert golden_run["official"] is False  # 19 of the 22 tasks, 24 examples each
    assert golden_run["tasks_not_scored"] == ["hellaswag_zeroshot", "hellaswag", "coqa"]
    assert golden_run["bundle"]["content_sha256"] == bundle.content_sha256(BUNDLE, bundle.read_tasks(BUNDLE))
    assert "CORE 0.028489" in format_table(golden_run)


def check_against_golden(scores, golden_examples, label):
    for score, want in zip(scores, golden_examples[label], strict=True):
        assert score.correct == want["correct"], label
        if "mean_losses" in want:
            assert score.mean_losses == pytest.approx(want["mean_losses"], abs=1e-4), label
        else:
            assert score.predicted == want["predicted_tokens"], label


@pytest.mark.parametrize("scorer", [core_reference, core], ids=["reference", "batched"])
def test_scored_numbers_equal_nanochats_on_cheap_tasks(bundle_dir, tokenizer, trained, golden_examples, scorer):
    trained.extend_rotary(8192)
    for label in CHEAP_TASKS:
        examples = task_examples(bundle_dir, tokenizer, label, 24)
        check_against_golden(scorer.score_examples(trained, examples, tokenizer.bos_id), golden_examples, label)


@pytest.mark.slow
def test_reference_scorer_equals_nanochat_on_every_task(bundle_dir, tokenizer, trained, golden_examples):
    trained.extend_rotary(8192)
    for label in specs(bundle_dir):
        examples = task_examples(bundle_dir, tokenizer, label, 24)
        check_against_golden(core_reference.score_examples(trained, examples, tokenizer.bos_id), golden_examples, label)


# ------------------------------------------------------------------ batched == reference


@pytest.mark.parametrize("name", sorted(TINY))
def test_batched_scorer_equals_reference_on_random_tiny_models(bundle_dir, tokenizer, name):
    model = random_model(TINY[name], seed=7)
    rechecked = total = 0
    for label in MIXED_TASKS if name == "short_windows_gqa" else MIXED_TASKS[:-1]:  # squad: slow, cut anyway
        examples = task_examples(bundle_dir, tokenizer, label, 12)
        reference = core_reference.score_examples(model, examples, tokenizer.bos_id)
        batched = core.score_examples(model, examples, tokenizer.bos_id)
        assert [s.correct for s in batched] == [s.correct for s in reference], label
        for b, r in zip(batched, reference, strict=True):
            if r.mean_losses is not None:
                assert b.mean_losses == pytest.approx(r.mean_losses, abs=1e-5), label
        # the fast path alone (no fallback to the reference) decides the same way on these seeds
        raw = core.score_examples(model, examples, tokenizer.bos_id, tie_tolerance=0.0)
        assert [s.correct for s in raw] == [s.correct for s in reference], label
        assert not any(s.rechecked for s in raw), label
        rechecked += sum(s.rechecked for s in batched)
        total += len(examples)
    assert rechecked <= total // 10  # the batched path decides almost everything itself


def test_batched_scorer_equals_reference_in_bfloat16(bundle_dir, tokenizer, golden):
    """Half precision rounds ~1e4 times coarser; the wider tie tolerance keeps the answers equal."""
    model = build_model(GPTConfig(**GOLDEN_CONFIG), "cpu", torch.bfloat16)
    load_state_into(model, load_file(golden / "optim" / "state_step6.safetensors"))
    for label in ["copa", "winograd", "piqa", "lambada_openai"]:
        examples = task_examples(bundle_dir, tokenizer, label, 24)
        reference = core_reference.score_examples(model.eval(), examples, tokenizer.bos_id)
        batched = core.score_examples(model, examples, tokenizer.bos_id)
        assert [s.correct for s in batched] == [s.correct for s in reference], label
        for b, r in zip(batched, reference, strict=True):
            if r.mean_losses is not None:
                assert b.mean_losses == pytest.approx(r.mean_losses, abs=core.HALF_TIE_TOLERANCE / 2), label


def test_plans_cut_unseen_tokens_and_forward_shared_prompts_once(bundle_dir, tokenizer, trained):
    """What makes the batched scorer fast, on the golden model (windows 128, 128, 128, 256)."""
    field = core.receptive_field(trained)
    assert field == sum(trained.window_sizes) + 2 == 642 and core.receptive_field(object()) is None
    for label, at_most in [("squad", 0.25), ("arc_easy", 0.3), ("winograd", 0.9)]:
        examples = task_examples(bundle_dir, tokenizer, label, 24)
        plans = [core._plan(ex, k, field) for k, ex in enumerate(examples)]
        groups = core._partition(plans, core.DEFAULT_TOKEN_BUDGET, 0, max(trained.window_sizes))
        assert sorted(p.k for g in groups for p in g.plans) == list(range(len(examples)))
        forwarded = sum(
            len(g.plans) * (g.split - g.crop)
            + sum(len(p.lengths) for p in g.plans) * (max(max(p.lengths) for p in g.plans) - g.split)
            for g in groups
        )
        reference = sum(len(ex.rows) * max(len(r) for r in ex.rows) for ex in examples)
        assert forwarded < at_most * reference, label


@pytest.mark.parametrize("window", [64, 128, 300])
def test_banded_attention_equals_windowed_attention(window):
    g = torch.Generator().manual_seed(window)
    q, k, v = (torch.randn(3, 700, h, 32, generator=g) for h in (4, 2, 2))  # GQA: 4 query heads, 2 kv heads
    expected = default_attention(q, k, v, window)
    assert (banded_attention(q, k, v, window) - expected).abs().max() < 1e-5


def test_prompt_once_then_continuations_gives_the_full_forwards_logits():
    """PrefixCache: prefill 3 prompts from position 40 (tokens before are out of reach), then 2 rows each."""
    model = random_model(TINY["short_windows_gqa"], seed=5)  # windows 128, 64: reach 194 tokens back
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, 4096, (3, 300), generator=g)
    conts = torch.randint(0, 4096, (6, 9), generator=g)
    owner = torch.tensor([0, 0, 1, 1, 2, 2])
    crop = 300 - (core.receptive_field(model) - 1)  # the first position of the continuation reaches back here
    cache = PrefixCache(default_attention, pos=crop, keep=max(model.window_sizes))
    with torch.no_grad():
        full = model(torch.cat([prompts[owner], conts], dim=1))[:, 300:]  # (6, 9, V)
        model(prompts[:, crop:], kv_cache=cache)
        got = model(conts, kv_cache=cache.select(owner))
    assert (got - full).abs().max() < 1e-4


def test_near_ties_and_empty_spans_are_decided_by_the_reference(tokenizer):
    model = random_model(TINY["short_windows_gqa"], seed=3)
    spec = bundle.TaskSpec("toy", "toy.jsonl", "multiple_choice", 0, " ", 25.0)
    rows = [
        {"query": "Q: red or red?", "choices": ["red", "red"], "gold": 1},  # an exact tie: the first wins
        {"query": "Q: pick", "choices": ["blue", "blue sky"], "gold": 0},  # empty span: NaN mean loss
        {"query": "Q: colour of grass", "choices": ["green", "purple"], "gold": 0},
    ]
    examples = build_examples(spec, list(enumerate(rows)), tokenizer)
    reference = core_reference.score_examples(model, examples, tokenizer.bos_id)
    batched = core.score_examples(model, examples, tokenizer.bos_id)
    assert [s.correct for s in batched] == [s.correct for s in reference]
    assert reference[0].correct is False  # tie -> index 0, gold is 1
    assert [s.rechecked for s in batched] == [True, True, False]


# ------------------------------------------------------------------ distributed


def _rank_worker(rank: int, world: int, port: int, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = random_model(TINY["short_windows_gqa"], seed=7)
        tok = Tokenizer.load(os.environ["SPEEDRUN_TEST_TOKENIZER"])
        spec = specs(BUNDLE)["arc_easy"]
        result = evaluate_task(model, tok, BUNDLE, spec, 12)
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(result, f)
        dist.barrier()  # gloo aborts if a rank tears down while the other still talks
    finally:
        dist.destroy_process_group()


def test_two_ranks_score_every_example_once_and_agree(tmp_path, bundle_dir, tokenizer, golden, monkeypatch):
    monkeypatch.setenv("SPEEDRUN_TEST_TOKENIZER", str(golden / "tokenizer"))
    port = 29500 + os.getpid() % 1000
    mp.spawn(_rank_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    single = evaluate_task(
        random_model(TINY["short_windows_gqa"], seed=7), tokenizer, bundle_dir, specs(bundle_dir)["arc_easy"], 12
    )
    for r in ranks:
        assert r["correct"] == single["correct"] and r["accuracy"] == single["accuracy"]


# ------------------------------------------------------------------ official, CLI


def write_bundle(root, labels, task_type="multiple_choice", rows=3):
    """A minimal bundle: every task a few 0-shot rows of the given type."""
    (root / "eval_data").mkdir(parents=True)
    entries, csv_rows = [], ["Eval Task,Random baseline"]
    for label in labels:
        entries.append(
            {"label": label, "dataset_uri": f"{label}.jsonl", "num_fewshot": [0], "icl_task_type": task_type}
        )
        csv_rows.append(f"{label},25")
        lines = [json.dumps({"query": f"Q{i}: 2+{i}=", "choices": [str(2 + i), "x"], "gold": 0}) for i in range(rows)]
        (root / "eval_data" / f"{label}.jsonl").write_text("\n".join(lines) + "\n")
    import yaml

    (root / "core.yaml").write_text(yaml.safe_dump({"icl_tasks": entries}))
    (root / "eval_meta_data.csv").write_text("\n".join(csv_rows) + "\n")
    return root


def test_official_only_with_all_22_tasks_scored_in_full(tmp_path, tokenizer):
    root = write_bundle(tmp_path / "b", bundle.CORE_TASKS)
    model = random_model(TINY["short_windows_gqa"], seed=1)
    full = evaluate(model=model, tokenizer=tokenizer, eval_bundle=root)
    assert full["official"] is True and full["tasks_not_scored"] == []
    assert full["core"] == pytest.approx(sum(t["centered"] for t in full["tasks"].values()) / 22, rel=1e-12)
    assert evaluate(model=model, tokenizer=tokenizer, eval_bundle=root, max_per_task=2)["official"] is False
    assert evaluate(model=model, tokenizer=tokenizer, eval_bundle=root, tasks=["copa"])["official"] is False
    assert evaluate(model=model, tokenizer=tokenizer, eval_bundle=root, max_per_task=-1)["official"] is True
    assert evaluate(model=model, tokenizer=tokenizer, eval_bundle=root, max_per_task=3)["official"] is True  # cuts none


def test_cli_prints_the_table_and_writes_json(tmp_path, bundle_dir, golden, trained, capsys):
    import argparse

    ckpt = save_checkpoint(tmp_path / "ckpt", 6, trained, None, {})
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "eval.json"
    argv = ["--checkpoint", str(ckpt), "--tokenizer", str(golden / "tokenizer"), "--eval-bundle", str(bundle_dir)]
    argv += ["--tasks", "copa", "winograd"]
    args = parser.parse_args([*argv, "--max-per-task", "24", "--json", str(out), "--device", "cpu"])
    result = main(args)
    printed = capsys.readouterr().out
    assert "copa" in printed and "winograd" in printed and "NOT official" in printed
    saved = json.loads(out.read_text())
    assert saved["tasks_scored"] == ["copa", "winograd"] and saved["core"] == result["core"]
    assert set(saved["tasks"]["copa"]) >= {"type", "shots", "n", "accuracy", "centered", "correct", "seconds"}
    assert saved["model"]["step"] == 6 and len(saved["bundle"]["content_sha256"]) == 64


# ------------------------------------------------------------------ bad input: one clear line each


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_missing_task_file_names_the_file(tmp_path, tokenizer):
    root = write_bundle(tmp_path / "b", ["copa", "piqa"])
    (root / "eval_data" / "piqa.jsonl").unlink()
    with pytest.raises(FileNotFoundError) as e:
        evaluate(model=random_model(TINY["short_windows_gqa"], 1), tokenizer=tokenizer, eval_bundle=root)
    assert "piqa.jsonl is missing" in one_line(e)


def test_malformed_row_names_file_and_line(tmp_path, tokenizer):
    root = write_bundle(tmp_path / "b", ["copa"])
    path = root / "eval_data" / "copa.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], '{"query": "Q", "choices": ["a",', *lines[1:]]) + "\n")
    spec = bundle.read_tasks(root)[0]
    with pytest.raises(ValueError) as e:
        load_task(root, spec)
    assert f"{path}:2: not valid JSON" in one_line(e)
    path.write_text("\n".join([*lines, '{"query": "Q", "choices": ["a"], "gold": 3}']) + "\n")
    with pytest.raises(ValueError) as e:
        load_task(root, spec)
    assert f"{path}:4: gold 3" in one_line(e)
    path.write_text('{"query": "Q", "gold": 0}\n')
    with pytest.raises(ValueError) as e:
        load_task(root, spec)
    assert f"{path}:1: a multiple_choice row needs choices" in one_line(e)


def test_unknown_task_type_names_task_and_type(tmp_path):
    root = write_bundle(tmp_path / "b", ["copa"], task_type="generation")
    with pytest.raises(ValueError) as e:
        bundle.read_tasks(root)
    assert "(copa) has unknown icl_task_type 'generation'" in one_line(e)


def test_tokenizer_and_model_vocab_mismatch_is_refused(tmp_path, tokenizer):
    model = build_model(GPTConfig(**{**GOLDEN_CONFIG, "vocab_size": 8192}), "cpu")
    with pytest.raises(ValueError) as e:
        evaluate(model=model, tokenizer=tokenizer, eval_bundle=tmp_path)
    assert "tokenizer has 4096 tokens but the model was trained with 8192" in one_line(e)


def test_other_bad_input_fails_with_one_line(tmp_path, tokenizer):
    root = write_bundle(tmp_path / "b", ["copa"])
    model = random_model(TINY["short_windows_gqa"], 1)
    with pytest.raises(ValueError) as e:
        evaluate(model=model, tokenizer=tokenizer, eval_bundle=root, tasks=["nope"])
    assert "unknown task(s) nope" in one_line(e)
    with pytest.raises(FileNotFoundError) as e:
        evaluate(model=model, tokenizer=tokenizer, eval_bundle=tmp_path / "nowhere")
    assert "has no core.yaml" in one_line(e)
    (root / "eval_meta_data.csv").write_text("Eval Task,Random baseline\npiqa,50\n")
    with pytest.raises(ValueError) as e:
        bundle.read_tasks(root)
    assert "has no row for task 'copa'" in one_line(e)
    spec = bundle.TaskSpec("toy", "toy.jsonl", "multiple_choice", 5, " ", 0.0)
    with pytest.raises(ValueError) as e:
        build_examples(spec, [(0, {"query": "q", "choices": ["a"], "gold": 0})] * 3, tokenizer)
    assert "needs 5 few-shot examples but only 2" in one_line(e)
