"""The harness end to end on a tiny track over ../shared/data: records, faults, resume, pre-flight."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from harness import campaign, runner
from protocol.events import StepEvent, read_events
from protocol.record import read_record
from protocol.tracks import load_track
from submissions.contract import SubmissionError
from tests.conftest import PRETRAIN, REPO
from tests.leaderboard_fixtures import PRETRAIN_HASH

# cpu-books with a model small enough for seconds: the same data (and content hash), a tiny
# tokenizer, checkpoints every 4 steps so a killed run can resume.
TINY_TRACK = """
name = "tiny-books"
version = 1
description = "test track"
provisional = true
price_per_hour = 0.10

[hardware]
kind = "cpu"
cpu_threads = 2
gpu_count = 0

[dataset]
source = "local"
shards = [
    "shard_00000.parquet", "shard_00001.parquet", "shard_00002.parquet", "shard_00003.parquet", "shard_00004.parquet"
]
content_hash = "{content_hash}"
default_dir = "{data_dir}"

[tokenizer]
vocab_size = 512
max_chars = 2000000

[target]
metric = "val_bpb"
higher_is_better = false
threshold = 10.0
eval_tokens = 2048

[recipe]
depth = 1
aspect_ratio = 128
head_dim = 64
max_seq_len = 128
window_pattern = "L"
device_batch_size = 4
total_batch_size = 512
num_iterations = {steps}
eval_every = -1
save_every = 4
"""


def write_track(tmp_path: Path, steps: int = 14, content_hash: str | None = None) -> Path:
    path = tmp_path / "tiny-books.toml"
    path.write_text(
        TINY_TRACK.format(
            content_hash=PRETRAIN_HASH if content_hash is None else content_hash,
            data_dir=PRETRAIN,
            steps=steps,
        )
    )
    return path


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch, pretrain_dir):
    """Tokenizers trained by these tests go to a temporary cache shared by the module's tests."""
    cache = tmp_path_factory.getbasetemp() / "speedrun-cache"
    monkeypatch.setenv("SPEEDRUN_CACHE", str(cache))
    return cache


def speedrun_cli(*args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "speedrun", *map(str, args)], env=env, cwd=REPO, **kwargs)


def test_the_progress_line_counts_down_the_budget_on_a_budget_track(capsys):
    """A budget track's step count is only a cap (100,000 on cpu-5min): the line shows the budget's seconds."""
    event = StepEvent(wall=0.0, step=9, dt_s=3.0, smooth_loss=8.5, tokens_per_s=2800.0, mfu=0.0, train_time_s=30.0)
    shared = "loss 8.5000 | 2,800 tok/s | MFU 0.0% | timed 30.0s"
    for budget_s, shown in ((300.0, f"step 10 | {shared} of 300s | ETA 4.5 min"),
                            (None, f"step 10/100000 | {shared} | ETA 4999.5 min")):  # fmt: skip
        progress = runner._Progress(100_000, budget_s=budget_s)
        progress.update(event)
        progress.show(final=True)
        assert capsys.readouterr().out == shown + "\n"


def test_a_full_run_writes_a_complete_record(tmp_path):
    track = load_track(write_track(tmp_path))
    [run_dir] = runner.run(track, "baseline", seeds=[7], runs_dir=tmp_path / "runs")
    record = read_record(run_dir)
    assert record.status == "completed" and record.official, record.unofficial_reasons
    assert record.seed == 7 and record.config["seed"] == 7
    timing = record.timing
    events = read_events(run_dir / "events.jsonl")
    steps = [e for e in events if e.event == "step"]
    assert [e.step for e in steps] == list(range(14)) and all(e.runner_t is not None for e in events)
    assert timing.train_time_s == pytest.approx(sum(e.dt_s for e in steps), rel=1e-9) and timing.steps == 14
    assert timing.nanochat_time_s == pytest.approx(sum(e.dt_s for e in steps if e.step > 10), rel=1e-9)
    assert timing.clock.ok and timing.clock.runner_span_s >= timing.train_time_s - 0.1, timing.clock
    assert timing.warmup_time_s > 0 and timing.eval_time_s > 0  # the warm-up and eval processes, untimed
    assert timing.wall_time_s > timing.train_time_s + timing.eval_time_s + timing.warmup_time_s
    result = record.result
    assert result.metric == "val_bpb" and 0 < result.value < 10 and result.target_met is True
    # Samples cover the whole run; the summary covers the timed steps (too short here for a 1 Hz sample).
    samples = [json.loads(line) for line in (run_dir / "telemetry.jsonl").read_text().splitlines()]
    assert [s for s in samples if s["kind"] == "sample"] and record.telemetry.backend in ("cpu", "nvml")
    prov = record.provenance
    assert prov.data.fingerprint == track.dataset.content_hash and prov.seed == 7
    assert len(prov.code["baseline"]) == 64
    for name in ("events.jsonl", "telemetry.jsonl", "train.log", "run.json"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "warmup").exists() and not (run_dir / "events.fifo").exists()  # thrown away
    assert not (run_dir / "data" / "train" / "shard_00004.parquet").exists()  # the training view lacks val
    assert (run_dir / record.files.checkpoint / "model.safetensors").is_file()
    # No path of this machine in what a run leaves behind (run.json, the record, the checkpoint's meta).
    for name in ("run.json", "record.json", f"{record.files.checkpoint}/meta.json"):
        text = (run_dir / name).read_text()
        assert str(tmp_path) not in text and str(Path.home()) not in text, name


@pytest.mark.slow  # ~55 s; the default suite keeps test_train's resume tests and the SLURM preemption test
def test_sigterm_preempts_and_resume_finishes_like_an_uninterrupted_run(tmp_path):
    """SIGTERM (a cloud's or SLURM's notice): saved at the next step boundary, resumed there, same losses."""
    track_file = write_track(tmp_path, steps=16)
    runs = tmp_path / "runs"
    proc = speedrun_cli("run", "baseline", "--track", track_file, "--runs-dir", runs, "--seed-list", 3,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 240
    run_dir = None
    while time.monotonic() < deadline:  # wait for the first checkpoint (step 4) and a step beyond it
        run_dirs = [d for d in runs.glob("*") if (d / "run.json").is_file()] if runs.is_dir() else []
        if run_dirs and (run_dirs[0] / "checkpoints" / "step_000004").is_dir():
            events = (run_dirs[0] / "events.jsonl").read_text().splitlines()
            if len(events) >= 6:
                run_dir = run_dirs[0]
                break
        time.sleep(0.2)
    assert run_dir is not None, proc.communicate()[0]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    preempted = read_record(run_dir)
    assert preempted.status == "preempted" and not preempted.official, preempted.error
    [stop] = preempted.interruptions
    assert stop.status == "preempted" and stop.checkpoint_step == stop.step >= 5  # saved at the boundary it reached
    assert preempted.timing.train_time_s == pytest.approx(stop.timed_s) and stop.timed_s > 0  # seconds so far, no nan
    assert (run_dir / "train.log").is_file() and (run_dir / "telemetry.jsonl").stat().st_size > 0

    resume = speedrun_cli("resume", run_dir.name, "--runs-dir", runs, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = resume.communicate(timeout=300)[0].decode()
    resumed = read_record(run_dir)
    assert resumed.status == "completed", output
    assert resumed.resumed == 1 and resumed.official
    assert resumed.interruptions[0].redone_steps == 0 and resumed.interruptions[0].lost_s == 0  # nothing redone

    [full_dir] = runner.run(load_track(track_file), "baseline", seeds=[3], runs_dir=tmp_path / "full")
    losses = {}
    for d in (run_dir, full_dir):
        events = [json.loads(line) for line in (d / "events.jsonl").read_text().splitlines()]
        steps = [e for e in events if e["event"] == "step"]
        assert [e["step"] for e in steps] == list(range(16))  # every step once, resumed or not
        losses[d] = [e["loss"] for e in steps]
    assert losses[run_dir] == pytest.approx(losses[full_dir], rel=1e-6)
    full = read_record(full_dir)
    assert resumed.result.value == pytest.approx(full.result.value, rel=1e-6)
    # The timer continued: the resumed run's timed seconds are its 16 steps', from both launches.
    events = read_events(run_dir / "events.jsonl")
    assert resumed.timing.train_time_s == pytest.approx(sum(e.dt_s for e in events if e.event == "step"), rel=1e-9)
    assert resumed.timing.clock.ok and sum(e.event == "start" for e in events) == 2  # two launches, both clocks agree


def test_sigint_kills_and_the_record_keeps_the_seconds_so_far(tmp_path):
    runs = tmp_path / "runs"
    proc = speedrun_cli("run", "baseline", "--track", write_track(tmp_path, steps=40), "--runs-dir", runs,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    run_dir = wait_for_steps(runs, 4, proc)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0].decode()
    record = read_record(run_dir)
    assert record.status == "killed" and record.interruptions[0].status == "killed", out
    assert (
        record.timing.train_time_s > 0 and "timed nan" not in out and f"timed {record.timing.train_time_s:.1f}s" in out
    )


def wait_for_steps(runs: Path, n: int, proc) -> Path:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        run_dirs = [d for d in runs.glob("*") if (d / "run.json").is_file()] if runs.is_dir() else []
        events = run_dirs[0] / "events.jsonl" if run_dirs else None
        if events and events.is_file() and len(events.read_text().splitlines()) >= n:
            return run_dirs[0]
        time.sleep(0.2)
    raise AssertionError(proc.communicate()[0])


def test_a_worker_that_dies_leaves_a_failed_record(tmp_path):
    """The trainer is killed from outside (as the OOM killer would): the record says failed, logs stay."""
    runs = tmp_path / "runs"
    proc = speedrun_cli("run", "baseline", "--track", write_track(tmp_path), "--runs-dir", runs,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    run_dir = wait_for_steps(runs, 2, proc)
    [worker] = psutil.Process(proc.pid).children()
    worker.kill()
    proc.wait(timeout=60)
    record = read_record(run_dir)
    assert record.status == "failed" and "exited with code -9" in record.error
    assert (run_dir / "train.log").is_file() and (run_dir / "events.jsonl").read_text()


def test_a_broken_submission_is_refused_before_anything_runs(tmp_path):
    bad = tmp_path / "bad_plugin"
    bad.mkdir()
    (bad / "submission.py").write_text("import no_such_module_here\n")
    proc = speedrun_cli("run", bad, "--track", write_track(tmp_path), "--runs-dir", tmp_path / "runs",
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    _, err = proc.communicate(timeout=120)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "no_such_module_here" in lines[0], err
    assert not (tmp_path / "runs").exists()


def test_a_passed_check_is_reused_only_for_the_same_code(tmp_path, monkeypatch):
    """The second check of unchanged code starts no child; an edit, even one that breaks it, is checked again."""
    sub = tmp_path / "mine"
    sub.mkdir()
    metadata = 'METADATA = {"authors": ["a"], "description": "d"}\n'
    (sub / "submission.py").write_text(metadata + 'CONFIG = {"matrix_lr": 0.03}\n')
    first = campaign.checked_submission(str(sub))
    assert first.path == sub.resolve() and first.config == {"matrix_lr": 0.03}
    children = []
    real_run = subprocess.run
    monkeypatch.setattr(campaign.subprocess, "run", lambda *a, **k: children.append(a) or real_run(*a, **k))
    assert campaign.checked_submission(str(sub)) == first and children == []
    (sub / "submission.py").write_text(metadata + 'CONFIG = {"matrix_lrr": 0.03}\n')
    with pytest.raises(SubmissionError, match="matrix_lrr"):
        campaign.checked_submission(str(sub))
    assert len(children) == 1
    # A forged pass naming another folder, written where this submission's pass would be, is not taken.
    (sub / "submission.py").write_text(metadata + "import no_such_module\n")
    entry, _ = campaign._passed_check_file(str(sub))
    entry.write_text(json.dumps({"name": "mine", "path": str(tmp_path), "config": {}, "division": "closed"}))
    with pytest.raises(SubmissionError, match="no_such_module"):
        campaign.checked_submission(str(sub))


def test_preflight_refuses_the_wrong_hardware_and_the_wrong_data(tmp_path):
    gpu_track = load_track("gpt2")
    with pytest.raises(campaign.Preflight, match="--unofficial"):
        runner.run(gpu_track, "baseline", seeds=[1], runs_dir=tmp_path)
    wrong_data = load_track(write_track(tmp_path, content_hash="0" * 64))
    with pytest.raises(campaign.Preflight, match="content hash"):
        runner.run(wrong_data, "baseline", seeds=[1], runs_dir=tmp_path)


def test_smoke_runs_are_unofficial(tmp_path):
    track = load_track(write_track(tmp_path))
    [run_dir] = runner.run(track, "baseline", seeds=[1], runs_dir=tmp_path / "runs", max_steps=3)
    record = read_record(run_dir)
    assert record.status == "stopped" and not record.official
    assert any("max-steps" in r for r in record.unofficial_reasons)
