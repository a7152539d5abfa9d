"""The training loop: distributed = accumulated, resume = uninterrupted, honest timer, clear failures."""

import json
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from baseline.config import TrainConfig
from baseline.device import init_runtime
from baseline.hooks import Hooks
from baseline.train import train
from tests import dist_train_worker
from tests.conftest import GOLDEN, PRETRAIN, REPO

TOKENIZER = GOLDEN / "tokenizer"
# A tiny model on real data: 1 layer, 2 heads of 64, rows of 128 tokens.
TINY = TrainConfig(
    depth=1,
    aspect_ratio=128,
    head_dim=64,
    max_seq_len=128,
    vocab_size=4096,
    device_batch_size=2,
    total_batch_size=512,
    num_iterations=14,
    eval_every=-1,
    window_pattern="L",
)


def events(out_dir: Path, kind: str = "step") -> list[dict]:
    lines = (Path(out_dir) / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


def run(config, out_dir, **kwargs):
    return train(
        config,
        init_runtime("cpu"),
        data_dir=PRETRAIN,
        tokenizer_dir=TOKENIZER,
        out_dir=out_dir,
        log=lambda _msg: None,
        **kwargs,
    )


@pytest.fixture(autouse=True)
def _needs_shared(golden, pretrain_dir):
    pass


def test_two_ranks_equal_one_rank_with_gradient_accumulation(tmp_path):
    single = dist_train_worker.main(str(tmp_path / "single"))
    assert single.status == "completed" and single.step == 6
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    subprocess.run([*cmd, str(REPO / "tests" / "dist_train_worker.py"), str(tmp_path / "dist")], check=True, env=env)

    single_losses = [e["loss"] for e in events(tmp_path / "single")]
    dist_losses = [e["loss"] for e in events(tmp_path / "dist")]
    assert len(dist_losses) == 6
    # Same batches, same math; only the order of the gradient sum differs (golden tolerances).
    for s, (a, b) in enumerate(zip(single_losses, dist_losses, strict=True)):
        assert b == pytest.approx(a, rel=2e-4 if s < 5 else 2e-3), s
    start = load_file(tmp_path / "single" / "checkpoints" / "step_000006" / "model.safetensors")
    other = load_file(tmp_path / "dist" / "checkpoints" / "step_000006" / "model.safetensors")
    assert start.keys() == other.keys()
    for key in start:
        a, b = start[key], other[key]
        assert (a - b).norm() <= 1e-3 * a.norm() + 1e-6, key


def test_two_nodes_equal_one_process_with_the_same_global_batch(tmp_path):
    """Two torchrun agents (--nnodes 2, one rank each, gloo) meeting on 127.0.0.1, as the runner launches nodes."""
    single = dist_train_worker.main(str(tmp_path / "single"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    agents = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node=1",
                "--nnodes=2",
                f"--node_rank={rank}",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
                str(REPO / "tests" / "dist_train_worker.py"),
                str(tmp_path / "nodes"),
            ],
            env=env,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    assert [a.wait(timeout=600) for a in agents] == [0, 0]
    single_losses = [e["loss"] for e in events(tmp_path / "single")]
    node_losses = [e["loss"] for e in events(tmp_path / "nodes")]
    assert single.step == len(node_losses) == 6
    for s, (a, b) in enumerate(zip(single_losses, node_losses, strict=True)):
        assert b == pytest.approx(a, rel=2e-4 if s < 5 else 2e-3), s


def test_resume_gives_the_losses_of_the_uninterrupted_run(tmp_path):
    config = replace(TINY, num_iterations=8, save_every=-1)
    full = run(config, tmp_path / "full")
    stopped = run(config, tmp_path / "resumed", stop_after_step=4)
    assert stopped.status == "stopped" and stopped.step == 4
    assert (tmp_path / "resumed" / "checkpoints" / "step_000004" / "model.safetensors").is_file()
    resumed = run(config, tmp_path / "resumed", resume=True)
    assert resumed.status == "completed" and resumed.step == 8

    full_losses = {e["step"]: e["loss"] for e in events(tmp_path / "full")}
    resumed_losses = {e["step"]: e["loss"] for e in events(tmp_path / "resumed")}
    assert sorted(resumed_losses) == list(range(8))
    for step in range(8):
        assert resumed_losses[step] == pytest.approx(full_losses[step], rel=1e-6, abs=1e-6), step
    assert resumed.final_loss == pytest.approx(full.final_loss, rel=1e-6)


def test_timer_continues_across_resume(tmp_path):
    config = replace(TINY, num_iterations=16)
    stopped = run(config, tmp_path, stop_after_step=13)
    assert stopped.train_time_s > stopped.nanochat_time_s > 0  # every step is timed; steps 11, 12 also nanochat's
    resumed = run(config, tmp_path, resume=True)
    step_events = events(tmp_path)
    assert [e["step"] for e in step_events] == list(range(16))  # steps after the checkpoint were dropped, rerun
    assert resumed.train_time_s == pytest.approx(sum(e["dt_s"] for e in step_events), rel=1e-9)
    assert resumed.nanochat_time_s == pytest.approx(sum(e["dt_s"] for e in step_events if e["step"] > 10), rel=1e-9)
    assert resumed.train_time_s > stopped.train_time_s


def test_every_step_is_timed_and_evals_and_checkpoints_are_not(tmp_path):
    sleep_s = 0.5

    def slow_eval(model, step):
        time.sleep(sleep_s)
        return 1.0

    config = replace(TINY, num_iterations=14, eval_every=2, save_every=3)
    result = run(config, tmp_path, val_bpb_fn=slow_eval)
    step_events = events(tmp_path)
    assert [e["step"] for e in step_events] == list(range(14))
    assert result.train_time_s == pytest.approx(sum(e["dt_s"] for e in step_events), rel=1e-9)
    assert result.nanochat_time_s == pytest.approx(sum(e["dt_s"] for e in step_events if e["step"] > 10), rel=1e-9)
    # 8 evals (steps 0, 2, ..., 14) slept 4 s in all; none of it may leak into a step's dt.
    assert result.eval_time_s >= 8 * sleep_s
    assert max(e["dt_s"] for e in step_events) < sleep_s
    assert len(events(tmp_path, "val")) == 8
    assert result.checkpoint_time_s > 0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [f"step_{s:06d}" for s in (3, 6, 9, 12, 14)]


def test_nan_loss_stops_the_run_as_diverged(tmp_path):
    class ExplodingSchedule:
        """The baseline schedule, except that step 2 gets an infinite learning rate."""

        def __init__(self, plan):
            self.inner = plan.schedule()

        def lr_multiplier(self, step, progress):
            return math.inf if step == 2 else self.inner.lr_multiplier(step, progress)

        def muon_momentum(self, step, progress):
            return self.inner.muon_momentum(step, progress)

        def muon_weight_decay(self, step, progress):
            return self.inner.muon_weight_decay(step, progress)

    result = run(TINY, tmp_path, hooks=Hooks(build_schedule=ExplodingSchedule))
    assert result.status == "diverged"
    assert result.step < TINY.num_iterations
    last = events(tmp_path)[-1]
    assert last.get("loss") is None  # non-finite, written as null (strict JSON)
    assert events(tmp_path, "diverged")


def test_checkpoint_holds_nanochat_keys_and_meta(tmp_path):
    run(replace(TINY, num_iterations=2), tmp_path)
    ckpt = tmp_path / "checkpoints" / "step_000002"
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["step"] == 2
    assert set(meta["model_config"]) == {
        "sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "window_pattern",
    }  # fmt: skip
    weights = load_file(ckpt / "model.safetensors")
    assert "transformer.wte.weight" in weights and "lm_head.weight" in weights
    assert all(t.dtype == torch.float32 for t in weights.values())


def speedrun(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "speedrun", *map(str, args)], capture_output=True, text=True, cwd=cwd or REPO
    )


TRAIN_ARGS = ["--depth", 1, "--aspect-ratio", 128, "--head-dim", 64, "--max-seq-len", 128, "--num-iterations", 2]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--device-batch-size", 3, "--total-batch-size", 1000], "--total-batch-size"),
        (["--head-dim", 63], "head"),
    ],
)
def test_bad_shapes_fail_with_one_line(tmp_path, extra, message):
    proc = speedrun("train", *TRAIN_ARGS, *extra, "--data-dir", PRETRAIN, "--tokenizer", TOKENIZER, "--out", tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_missing_empty_and_corrupt_data_fail_with_one_line(tmp_path):
    common = [*TRAIN_ARGS, "--device-batch-size", 2, "--total-batch-size", 256, "--tokenizer", TOKENIZER]
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name in ("shard_00000.parquet", "shard_00001.parquet"):
        (corrupt / name).write_bytes(b"PAR1 this is not a parquet file")
    for data_dir, message in [(tmp_path / "missing", "missing"), (empty, "no parquet"), (corrupt, "shard_00000")]:
        proc = speedrun("train", *common, "--data-dir", data_dir, "--out", tmp_path / "out")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert message in lines[0] and str(data_dir.name) in lines[0], lines[0]


def test_a_budget_run_stops_at_the_first_step_past_its_budget(tmp_path, monkeypatch):
    """A fixed-budget track: the step count follows the speed; the lr warmdown ends at the budget.

    The clock is a fake that moves 0.25 s per reading, so each step "takes" 0.25 s whatever the load.
    """
    ticks = iter(range(10**9))
    monkeypatch.setattr(time, "perf_counter", lambda: 0.25 * next(ticks))
    config = replace(TINY, num_iterations=10_000, time_budget_s=2.0, warmup_steps=1, warmdown_ratio=0.5)
    result = run(config, tmp_path, val_bpb_fn=lambda model, step: 1.0)
    step_events = events(tmp_path)
    dts = [e["dt_s"] for e in step_events]
    assert result.status == "completed" and result.step == len(step_events) == 8  # 8 × 0.25 s reach 2 s
    assert sum(dts) >= 2.0 > sum(dts[:-1])  # past the budget at the last boundary, not before
    assert result.train_time_s == pytest.approx(sum(dts), rel=1e-9)
    assert step_events[0]["lr_multiplier"] == 1.0 and step_events[-1]["lr_multiplier"] < 0.5  # decayed by time
    assert events(tmp_path, "val")[-1]["step"] == result.step  # the metric after the stop, untimed
    assert (tmp_path / "checkpoints" / f"step_{result.step:06d}" / "model.safetensors").is_file()
