"""Experiment trackers: `--log-to wandb|trackio` logs the record's step events, offline, without an account.

wandb's offline run file is read back with the reader below; trackio's local database with its own
storage API. A tracker that is not installed skips its tests with a reason (`pip install -e '.[wandb]'`).
"""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from harness import runner
from harness.trackers import STEP_FIELDS, Tracker, require
from protocol.events import CheckpointEvent, StepEvent, read_events
from protocol.record import read_record
from protocol.tracks import load_track
from tests.conftest import GOLDEN, PRETRAIN, REPO, minimal_record
from tests.test_harness import cache, write_track  # noqa: F401 -- the tokenizer cache fixture

TINY_TRAIN = ["--depth", 1, "--aspect-ratio", 128, "--head-dim", 64, "--max-seq-len", 128, "--num-iterations", 6,
              "--device-batch-size", 2, "--total-batch-size", 256, "--eval-every", 3,
              "--eval-tokens", 1024]  # fmt: skip


def wandb_history(run_dir: Path) -> tuple[dict[int, dict], dict, dict]:
    """(step -> logged metrics, summary, config) of the one offline wandb run under run_dir.

    A `.wandb` file is a LevelDB-style log (wandb's own format since 0.9): a 7-byte header, then 32 KiB
    blocks of records (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) holding wandb's Record protobufs.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    [path] = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    data, pos, pending = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B", data[:7]
    history, summary, config = {}, {}, {}
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending, pos = pending + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind not in (1, 4):
            continue
        record = pb.Record()
        record.ParseFromString(pending)
        pending = b""
        which = record.WhichOneof("record_type")
        if which == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            history.setdefault(items["_step"], {}).update(items)
        elif which == "summary":
            summary |= {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.summary.update}
        elif which == "run":
            config = {u.key: json.loads(u.value_json) for u in record.run.config.update}
            config["_group"], config["_name"] = record.run.run_group, record.run.display_name
    return history, summary, config


@pytest.mark.slow  # ~35 s, a whole run; the default suite keeps the bare trainer's wandb test
def test_a_run_logs_every_step_event_of_its_record_to_wandb_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="pip install -e '.[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    track = load_track(write_track(tmp_path))
    [run_dir] = runner.run(track, "baseline", seeds=[5], runs_dir=tmp_path / "runs", log_to="wandb")
    wandb.teardown()  # wandb's service buffers the run file until it stops (as it does when `speedrun run` exits)
    record = read_record(run_dir)
    assert record.status == "completed" and record.official, record.unofficial_reasons  # logging costs no record
    steps = [e for e in read_events(run_dir / "events.jsonl") if isinstance(e, StepEvent)]
    history, summary, config = wandb_history(run_dir)
    assert sorted(s for s, h in history.items() if "loss" in h) == [e.step for e in steps] == list(range(14))
    saves = [e for e in read_events(run_dir / "events.jsonl") if isinstance(e, CheckpointEvent)]
    assert [history[e.step]["checkpoint_s"] for e in saves] == [e.seconds for e in saves]  # every save's seconds
    for e in steps:
        assert {k: history[e.step][k] for k in STEP_FIELDS} == {k: getattr(e, k) for k in STEP_FIELDS}
    assert summary["val_bpb"] == record.result.val_bpb and summary["status"] == "completed"
    assert summary["train_time_s"] == pytest.approx(record.timing.train_time_s)
    assert config["_name"] == record.run_id and config["_group"] == "tiny-books-baseline" and config["seed"] == 5


def _train_with(tracker: str, tmp_path: Path, env: dict) -> subprocess.CompletedProcess:
    args = [*TINY_TRAIN, "--data-dir", PRETRAIN, "--tokenizer", GOLDEN / "tokenizer", "--out", tmp_path / "out"]
    return subprocess.run([sys.executable, "-m", "speedrun", "train", *map(str, args), "--log-to", tracker],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.parametrize("tracker", ["wandb", "trackio"])
def test_the_bare_trainer_logs_its_events_without_an_account(tracker, tmp_path, golden, pretrain_dir):
    pytest.importorskip(tracker, reason=f"pip install -e '.[{tracker}]'")
    # No account anywhere: no key in the environment, a HOME without ~/.netrc, trackio's database in tmp.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HF_"))}
    env |= {"HOME": str(tmp_path), "TRACKIO_DIR": str(tmp_path / "trackio"), "PYTHONPATH": str(REPO)}
    proc = _train_with(tracker, tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(line) for line in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["event"] == "step"]
    vals = [e for e in events if e["event"] == "val"]
    assert [e["step"] for e in steps] == list(range(6)) and vals  # the file is what the trainer always writes
    if tracker == "wandb":
        history, summary, _ = wandb_history(tmp_path / "out")
        rows = [{"step": step, **h} for step, h in history.items()]
        assert "logging offline" in proc.stdout
    else:
        check = "import json, trackio; print(json.dumps(trackio.SQLiteStorage.get_logs('speedrun', 'out')))"
        # A fresh process: trackio reads TRACKIO_DIR when it is imported.
        out = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, check=True)
        rows = json.loads(out.stdout.strip().splitlines()[-1])
        summary = rows[-1]  # trackio has no run summary: the outcome is the last row
    assert {r["step"]: r["loss"] for r in rows if "loss" in r} == {e["step"]: e["loss"] for e in steps}
    assert {r["step"]: r["val_bpb"] for r in rows if "val_bpb" in r} == {v["step"]: v["val_bpb"] for v in vals}
    assert summary["train_time_s"] == pytest.approx(sum(e["dt_s"] for e in steps))


class Failing:
    def log(self, *_args, **_kwargs):
        raise ConnectionError("the tracker's server is gone")

    def finish(self):
        raise AssertionError("finish is not reached once the tracker failed")


def test_a_failing_tracker_warns_once_and_never_raises(capsys):
    tracker = Tracker("trackio", Failing())
    for step in range(3):
        tracker.log_event(StepEvent(wall=0.0, step=step, dt_s=0.1, loss=1.0))
    tracker.finish({"status": "completed"})
    warnings = capsys.readouterr().err.strip().splitlines()
    assert warnings == ["speedrun: warning: trackio stopped logging (ConnectionError: the tracker's server is gone)"]


def test_an_unknown_or_missing_tracker_is_one_line(monkeypatch):
    with pytest.raises(ValueError, match="unknown tracker 'tensorboard': use one of wandb, trackio"):
        require("tensorboard")
    monkeypatch.setitem(sys.modules, "trackio", None)  # as if not installed
    with pytest.raises(ValueError, match=r"--log-to trackio needs the trackio package: pip install -e '\.\[trackio\]'"):
        require("trackio")


def test_a_tracker_that_cannot_start_leaves_the_run_untracked(tmp_path, monkeypatch, capsys):
    def refuse(*_args, **_kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(runner, "open_tracker", refuse)
    record = minimal_record("r1", config={"depth": 1})
    assert runner._open_tracker("wandb", tmp_path, record) is None
    assert "wandb could not start (ConnectionError: no network); the run goes on without it" in capsys.readouterr().out
