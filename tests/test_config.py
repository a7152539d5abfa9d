"""The plan derives from --depth exactly as nanochat's base_train does (golden depth table, fact sheet §2)."""

import argparse
import json
import re
from dataclasses import fields, replace

import pytest

from baseline.config import TrainConfig, add_arguments, describe, from_args, plan_training
from baseline.gpt import GPT
from baseline.optim import build_param_groups
from tests.conftest import GOLDEN, load_json

REL = 1e-12  # golden floats are plain Python doubles (README §4)


def _golden_cases() -> list:
    path = GOLDEN / "depth_table.json"
    if not path.is_file():
        return [pytest.param(None, None, None, marks=pytest.mark.skip(reason=f"{path} not found"))]
    cases = []
    for table in load_json(path)["tables"]:
        for row in table["rows"]:
            for entry in row["per_ratio"]:
                case_id = f"{table['config']['name']}-d{row['depth']}-r{entry['target_param_data_ratio']}"
                cases.append(pytest.param(table, row, entry, id=case_id))
    return cases


def golden_config(table: dict, row: dict, entry: dict) -> TrainConfig:
    """base_train's defaults plus the flags the golden table was made with."""
    shape = {k: v for k, v in table["config"].items() if k != "name"}
    return TrainConfig(
        depth=row["depth"],
        target_param_data_ratio=entry["target_param_data_ratio"],
        **shape,
        **table["base_train_defaults"],
    )


@pytest.mark.parametrize("table,row,entry", _golden_cases())
def test_plan_equals_golden_depth_table(table, row, entry):
    config = golden_config(table, row, entry)
    if entry["grad_accum_steps_device_batch_32"] is None:
        with pytest.raises(ValueError, match="not a multiple of device_batch_size"):
            plan_training(config)
        config = replace(config, device_batch_size=1)  # the rest of the plan must still match
    p = plan_training(config)

    model = {k: getattr(p, k) for k in ("model_dim", "n_head", "n_kv_head", "head_dim", "padded_vocab_size")}
    model |= dict(
        ve_layers=list(p.ve_layers),
        window_sizes=[[w, 0] for w in p.window_sizes],
        params=p.params,
        scaling_params=p.scaling_params,
        num_matmul_params=p.num_matmul_params,
        estimate_flops=p.flops_per_token,
    )
    assert model == {k: row[k] for k in model}

    ints = dict(
        target_tokens=p.target_tokens,
        B_REF=p.b_ref,
        total_batch_size=p.total_batch_size,
        num_iterations=p.num_iterations,
        total_tokens=p.total_tokens,
    )
    assert ints == {k: entry[k] for k in ints}
    if entry["grad_accum_steps_device_batch_32"] is not None:
        assert p.grad_accum_steps == entry["grad_accum_steps_device_batch_32"]
    floats = dict(
        D_REF=p.d_ref,
        batch_lr_scale=p.lr_scale,
        weight_decay_scaled=p.weight_decay_scaled,
        dmodel_lr_scale=p.dmodel_lr_scale,
    )
    assert floats == pytest.approx({k: entry[k] for k in floats}, rel=REL)

    assert len(p.param_groups) == len(entry["param_groups"])
    for ours, theirs in zip(p.param_groups, entry["param_groups"], strict=True):
        ours = json.loads(json.dumps(ours))  # tuples -> lists, as in the golden JSON
        hyper = ("lr", "weight_decay")
        assert {k: v for k, v in ours.items() if k not in hyper + ("first_param",)} == {
            k: v for k, v in theirs.items() if k not in hyper
        }
        assert [ours[k] for k in hyper] == pytest.approx([theirs[k] for k in hyper], rel=REL)


# Fact sheet §2 "Derived values": depth -> d_model, heads, auto B, s, Muon wd, steps @12, steps @8, tokens @8.
FACT_SHEET = [
    (4, 256, 2, 262_144, 0.7071, 1.8899, 528, 352, 92.3e6),
    (6, 384, 3, 262_144, 0.7071, 0.93961, 1_062, 708, 185.6e6),
    (12, 768, 6, 524_288, 1.0, 0.28, 2_520, 1_680, 880.8e6),
    (20, 1280, 10, 1_048_576, 1.4142, 0.10019, 4_980, 3_320, 3.48e9),
    (24, 1536, 12, 1_048_576, 1.4142, 0.05974, 8_352, 5_568, 5.84e9),
    (26, 1664, 13, 1_048_576, 1.4142, 0.04747, 10_510, 7_007, 7.35e9),
]


@pytest.mark.parametrize("depth,d_model,heads,batch,s,wd,steps12,steps8,tokens8", FACT_SHEET)
def test_fact_sheet_rows_hold(depth, d_model, heads, batch, s, wd, steps12, steps8, tokens8):
    p12 = plan_training(TrainConfig(depth=depth))
    p8 = plan_training(TrainConfig(depth=depth, target_param_data_ratio=8))
    assert (p12.model_dim, p12.n_head, p12.total_batch_size) == (d_model, heads, batch)
    assert p12.lr_scale == pytest.approx(s, abs=1e-4)
    assert p12.weight_decay_scaled == pytest.approx(wd, rel=1e-4)
    assert (p12.num_iterations, p8.num_iterations) == (steps12, steps8)
    assert p8.total_tokens == pytest.approx(tokens8, rel=1e-3)
    # the ratio only sets the number of steps: B, s and wd depend on depth alone
    assert (p8.total_batch_size, p8.lr_scale) == (p12.total_batch_size, p12.lr_scale)
    assert p8.weight_decay_scaled == pytest.approx(p12.weight_decay_scaled, rel=1e-12)


def test_speedrun_d24_on_8_gpus_accumulates_4_micro_steps():
    p = plan_training(TrainConfig(depth=24, target_param_data_ratio=8, device_batch_size=16), world_size=8)
    assert (p.total_batch_size, p.num_iterations, p.grad_accum_steps) == (1_048_576, 5_568, 4)
    assert p.tokens_per_micro_step * p.world_size == 262_144
    assert p.eval_steps == 80 * 524288 // 262_144


def test_horizon_precedence_is_num_iterations_then_target_flops_then_ratio():
    base = TrainConfig(depth=12)
    by_ratio = plan_training(base)
    flops = 3.0 * by_ratio.flops_per_token * by_ratio.total_batch_size * 100
    by_flops = plan_training(replace(base, target_flops=flops))
    by_steps = plan_training(replace(base, target_flops=flops, num_iterations=77))
    assert (by_ratio.horizon, by_ratio.num_iterations) == ("target_param_data_ratio", 2_520)
    assert (by_flops.horizon, by_flops.num_iterations) == ("target_flops", 300)
    assert (by_steps.horizon, by_steps.num_iterations) == ("num_iterations", 77)
    assert by_steps.total_tokens == 77 * by_steps.total_batch_size
    # the batch and weight-decay rules keep using the ratio's target tokens whatever sets the horizon
    for p in (by_flops, by_steps):
        assert (p.target_tokens, p.total_batch_size) == (by_ratio.target_tokens, by_ratio.total_batch_size)
        assert p.weight_decay_scaled == by_ratio.weight_decay_scaled


def test_explicit_total_batch_size_sets_the_lr_scale():
    p = plan_training(TrainConfig(depth=24, total_batch_size=524_288))
    assert (p.total_batch_size, p.total_batch_size_auto, p.lr_scale) == (524_288, False, 1.0)
    assert p.matrix_lr_scaled == 0.02 and p.grad_accum_steps == 8


def test_model_dim_rounds_up_to_whole_heads():
    p = plan_training(TrainConfig(depth=5, num_iterations=1))  # 5·64 = 320 -> 384 = 3 heads of 128
    assert (p.model_dim, p.n_head, p.head_dim) == (384, 3, 128)
    p = plan_training(TrainConfig(depth=5, head_dim=64, num_iterations=1))
    assert (p.model_dim, p.n_head, p.head_dim) == (320, 5, 64)


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(depth=0), r"--depth 0 is invalid.*use --depth 1 or more"),
        (dict(head_dim=63), r"--head-dim 63 must be even"),
        (dict(window_pattern="SSXL"), r"--window-pattern 'SSXL' may only contain S \(short\) and L \(long\)"),
        (dict(window_pattern=""), r"--window-pattern '' may only contain"),
        (dict(target_param_data_ratio=0), r"--target-param-data-ratio 0 must be positive"),
        (dict(total_batch_size=0), r"--total-batch-size 0 must be positive, or -1"),
        (dict(device_batch_size=0), r"--device-batch-size 0 must be positive"),
        (dict(target_param_data_ratio=1e-3, total_batch_size=2**20), r"horizon .* is 0 steps"),
    ],
)
def test_bad_flags_raise_one_clear_line(change, message):
    with pytest.raises(ValueError, match=message) as error:
        plan_training(TrainConfig(**change))
    assert "\n" not in str(error.value)


def test_indivisible_batch_names_fixes_that_work():
    config = TrainConfig(depth=4, device_batch_size=24)  # 262,144 tokens over 24 rows of 2048: no
    with pytest.raises(ValueError) as error:
        plan_training(config)
    message = str(error.value)
    assert "not a multiple of device_batch_size 24" in message and "\n" not in message
    device_batch, total = map(
        int, re.search(r"--device-batch-size (\d+) or --total-batch-size (\d+)", message).groups()
    )
    assert device_batch == 16 and total == 294_912
    assert plan_training(replace(config, device_batch_size=device_batch)).grad_accum_steps == 8
    assert plan_training(replace(config, total_batch_size=total)).grad_accum_steps == 6
    with pytest.raises(ValueError, match=r"world_size 8 = 524,288 tokens; use --device-batch-size 16"):
        plan_training(TrainConfig(depth=4), world_size=8)


def test_defaults_are_base_trains():
    assert TrainConfig() == TrainConfig(
        depth=20, aspect_ratio=64, head_dim=128, max_seq_len=2048, window_pattern="SSSL", vocab_size=32768,
        num_iterations=-1, target_flops=-1.0, target_param_data_ratio=12.0, device_batch_size=32,
        total_batch_size=-1, embedding_lr=0.3, unembedding_lr=0.008, weight_decay=0.28, matrix_lr=0.02,
        scalar_lr=0.5, warmup_steps=40, warmdown_ratio=0.65, final_lr_frac=0.05, eval_every=250,
        eval_tokens=80 * 524288,
        save_every=-1, fp8=False,
        compile=None, seed=42,
    )  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_arguments(p)
    p.add_argument("--json", action="store_true")  # the CLI's own flags may sit beside ours
    return p


def test_flags_map_one_to_one_onto_fields():
    actions = {a.dest: a for a in parser()._actions if a.dest not in ("help", "json")}
    assert list(actions) == [f.name for f in fields(TrainConfig)]
    for f in fields(TrainConfig):
        assert actions[f.name].option_strings[0] == "--" + f.name.replace("_", "-")
        assert f.metadata["help"] in actions[f.name].help
    assert from_args(parser().parse_args([])) == TrainConfig()


def test_from_args_parses_typed_values():
    args = parser().parse_args(
        "--depth 24 --target-param-data-ratio 8 --device-batch-size 16 --window-pattern L "
        "--fp8 --no-compile --target-flops 1e18 --json".split()
    )
    config = from_args(args)
    assert config == TrainConfig(
        depth=24, target_param_data_ratio=8.0, device_batch_size=16, window_pattern="L", fp8=True,
        compile=False, target_flops=1e18,
    )  # fmt: skip
    assert isinstance(config.target_param_data_ratio, float) and isinstance(config.depth, int)
    assert from_args(parser().parse_args(["--compile"])).compile is True


def test_to_dict_is_json_and_describe_shows_the_numbers():
    p = plan_training(TrainConfig(depth=24, target_param_data_ratio=8))
    data = json.loads(json.dumps(p.to_dict()))
    assert data["config"] == json.loads(json.dumps(TrainConfig(depth=24, target_param_data_ratio=8).__dict__))
    assert data["model_config"]["n_embd"] == 1536 and data["num_iterations"] == 5568
    assert data["param_groups"][0]["shape"] == [32768, 1536]
    text = describe(p)
    for needle in (
        "model  d24",
        "1,536",
        "5,568",
        "1,048,576 tokens (auto)",
        "0.0597384",
        "--target-param-data-ratio",
    ):
        assert needle in text
    labels = [line.split()[0] for line in text.splitlines() if line.startswith("  adamw") or line.startswith("  muon")]
    assert labels == [g["kind"] for g in p.param_groups]


def test_optimizer_kwargs_and_schedule_come_from_the_plan():
    import torch

    p = plan_training(TrainConfig(depth=6, target_param_data_ratio=8))
    with torch.device("meta"):
        model = GPT(p.model_config)
    groups = build_param_groups(model, **p.optimizer_kwargs())
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(g["lr"], g["weight_decay"]) for g in p.param_groups]
    schedule = p.schedule()
    assert (schedule.num_iterations, schedule.warmdown_iters) == (p.num_iterations, p.warmdown_steps)
    assert schedule.muon_weight_decay(0) == p.weight_decay_scaled
