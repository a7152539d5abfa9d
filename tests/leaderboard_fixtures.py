"""Small hand-made run bundles from the golden model, for the leaderboard's tests and its benchmark.

    from tests.leaderboard_fixtures import golden_track_file, make_bundle, server_settings
    track_toml = golden_track_file(tmp)                 # track "golden": d4 on 2 CPU threads, val bpb < 7
    files = make_bundle(tmp / "b1", run_id="r1", seed=1)   # record.json, events.jsonl, ... as a run writes them
    settings = server_settings(tmp, database_url=None)  # SQLite under tmp, the golden track and its resources

The golden model (shared/golden/model/perturbed.safetensors: sequence_len 256, vocab 4096, 4 layers)
scores val bpb 6.2985459 on 4 batches of 4x256 tokens of shared/data/pretrain's val shard with the
golden tokenizer: the "claimed" value every honest bundle carries. Each bundle's weights are the golden
model's with one input-embedding row of a special token (never in the val text) changed by its run id:
distinct tensors (one model, one run), the same val bpb. `tamper=` makes the bundles the verifier must
reject: "metric", "step_times", "step_times_consistent", "baseline_hash"; "pickle" the upload refuses.
"""

import contextlib
import hashlib
import json
import os
import pickle
import socket
import threading
import time
from pathlib import Path

from safetensors.torch import load_file, save_file

from leaderboard.settings import REPO, Settings, TrackResources
from protocol.hashing import ALL_FILES, NOT_CONTENT, code_hashes, file_sha256, tree_hash

SHARED = Path(os.environ.get("SPEEDRUN_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden"
PRETRAIN = SHARED / "data" / "pretrain"
GOLDEN_WEIGHTS = GOLDEN / "model" / "perturbed.safetensors"
GOLDEN_TOKENIZER = GOLDEN / "tokenizer"
GOLDEN_BPB = 6.2985459127604395  # golden/bpb/results.json "perturbed": B=4, T=256, 4 steps
GOLDEN_CONFIG = {
    "sequence_len": 256,
    "vocab_size": 4096,
    "n_layer": 4,
    "n_head": 2,
    "n_kv_head": 2,
    "n_embd": 128,
    "window_pattern": "SSSL",
}
PRETRAIN_HASH = "6446119e219fadcb2658af68eb068b8959af2838946c14705a3613f1e655581b"  # the five shards' fingerprint
TRACK = "golden"
THRESHOLD = 7.0

TRACK_TOML = f'''name = "{TRACK}"
version = 1
description = "The golden d4 model on 2 CPU threads: the leaderboard's test track."
provisional = true
price_per_hour = 0.10

[hardware]
kind = "cpu"
cpu_threads = 2
gpu_count = 0

[dataset]
source = "local"
description = "shared/data/pretrain"
content_hash = "{PRETRAIN_HASH}"

[tokenizer]
vocab_size = 4096
max_chars = 1000000

[target]
metric = "val_bpb"
higher_is_better = false
threshold = {THRESHOLD}
eval_tokens = 4096

[recipe]
depth = 4
'''


def available() -> str | None:
    """Why the golden fixtures cannot be made here (None when they can)."""
    for path in (GOLDEN_WEIGHTS, GOLDEN_TOKENIZER, PRETRAIN):
        if not path.exists():
            return f"{path} not found (set SPEEDRUN_SHARED to the shared/ folder)"
    return None


def golden_track_file(directory: Path) -> Path:
    path = Path(directory) / f"{TRACK}.toml"
    path.write_text(TRACK_TOML)
    return path


def server_settings(directory: Path, *, database_url: str | None = None, **overrides) -> Settings:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return Settings(
        database_url=database_url or f"sqlite:///{directory / 'lb.db'}",
        storage_dir=directory / "storage",
        track_files=[golden_track_file(directory)],
        track_resources={TRACK: TrackResources(data_dir=PRETRAIN, tokenizer_dir=GOLDEN_TOKENIZER)},
        **{"cache_ttl_s": 0.0, **overrides},  # tests see every write at once
    )


def distinct_weights(src: Path, dst: Path, salt: str) -> None:
    """The golden weights with the last special token's input embedding set from `salt`: that token never occurs
    in the val text, so the model scores the same, but its tensors (and their content hash) are its own."""
    tensors = load_file(src)
    digest = hashlib.sha256(salt.encode()).digest()
    row = tensors["transformer.wte.weight"][-1]
    for i, byte in enumerate(digest[: row.numel()]):
        row[i] = (byte - 128) / 256
    save_file(tensors, dst)


def timed(events: list[dict], *, nanochat: bool = False) -> float:
    """Σ dt_s over every step (protocol/timing.py), or over steps > 10 (nanochat's figure)."""
    return sum(e["dt_s"] for e in events if e["event"] == "step" and (not nanochat or e["step"] > 10))


def close(events: list[dict], n_steps: int, weights_sha256: str) -> list[dict]:
    """The lines after the last step, as the trainer and runner write them: the final eval, the save of the
    final checkpoint (with the weights' sha256) and the trainer's summary (baseline.train.TrainResult)."""
    wall, runner_t = events[-1]["wall"], events[-1]["runner_t"]
    return [
        {"event": "val", "step": n_steps, "val_bpb": GOLDEN_BPB, "wall": wall + 1.0, "runner_t": runner_t + 1.0},
        {"event": "checkpoint_start", "step": n_steps, "wall": wall + 1.01, "runner_t": runner_t + 1.01},
        {
            "event": "checkpoint",
            "step": n_steps,
            "seconds": 0.1,
            "sha256": weights_sha256,
            "wall": wall + 1.11,
            "runner_t": runner_t + 1.11,
        },
        {
            "event": "end",
            "status": "completed",
            "step": n_steps,
            "num_iterations": n_steps,
            "train_time_s": timed(events),
            "val_bpb": GOLDEN_BPB,
            "checkpoint": f"checkpoints/step_{n_steps:06d}",
            "wall": wall + 1.2,
            "runner_t": runner_t + 1.2,
        },
    ]


def _events(n_steps: int, dt_s: float, t0: float, seed: int) -> list[dict]:
    """start + the step events, stamped by the trainer (wall) and by the runner as they arrive (runner_t)."""
    runner_t = 3.0  # the runner launched the training process 3 s before its first step
    events = [{"event": "start", "step": 0, "wall": t0, "runner_t": runner_t}]
    wall, total = t0, 0.0
    for step in range(n_steps):
        dt = dt_s * (1 + 0.01 * ((step * 7 + seed) % 5))  # a little jitter, deterministic
        wall += dt + 0.002  # the trainer logs right after the step; the next one starts right after
        runner_t += dt + 0.002
        total += dt  # every step is timed (protocol/timing.py)
        loss = 8.3 - 1.5 * step / n_steps
        events.append(
            {
                "event": "step",
                "step": step,
                "loss": loss,
                "smooth_loss": loss + 0.05,
                "lr_multiplier": 1.0,
                "dt_s": dt,
                "tokens_per_s": 16384 / dt,
                "mfu": 1.5,
                "train_time_s": total,
                "wall": wall,
                "runner_t": runner_t + 0.0005,
            }
        )
    return events


def _telemetry(t0: float, t1: float) -> list[dict]:
    rows = [
        {
            "kind": "info",
            "t": 0.0,
            "wall": t0,
            "pid": 1,
            "interval_s": 1.0,
            "backend": "cpu",
            "nvml": None,
            "nvml_error": "NVML disabled",
            "rapl_error": None,
            "cpu_count": 2,
        }
    ]
    n = int(t1 - t0) + 2
    for i in range(n):
        rows.append(
            {
                "kind": "sample",
                "t": float(i),
                "wall": t0 + i,
                "cpu": {
                    "cpu_percent": 90.0 + i % 7,
                    "process_cpu_percent": 190.0,
                    "rss_bytes": (900 + 3 * i) * 2**20,
                    "n_processes": 1,
                    "rapl_energy_j": 30.0 * i,
                },
            }
        )
    return rows


def make_bundle(
    directory: Path,
    *,
    run_id: str,
    seed: int = 0,
    submission: str = "golden-sub",
    n_steps: int = 20,
    dt_s: float = 0.5,
    tamper: str | None = None,
    provenance_cache: dict | None = None,
) -> dict[str, Path]:
    """Write a bundle's members into `directory`; returns {member name: path}."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    t0 = 1_700_000_000.0 + 1000 * seed
    events = _events(n_steps, dt_s, t0, seed)
    train_time_s = timed(events)
    cache = provenance_cache if provenance_cache is not None else {}
    if "code" not in cache:
        cache["code"] = code_hashes(REPO)
        cache["tokenizer"] = tree_hash(GOLDEN_TOKENIZER, include=ALL_FILES, exclude=NOT_CONTENT)
    code = dict(cache["code"])
    claimed_bpb = GOLDEN_BPB
    if tamper == "metric":
        claimed_bpb = 5.9  # better than the weights give
    elif tamper == "baseline_hash":
        code["baseline"] = "0" * 64
    elif tamper in ("step_times", "step_times_consistent"):
        for e in events:
            if e["event"] == "step":
                e["dt_s"] *= 0.5  # wall stamps untouched: the gaps now show the missing time
        if tamper == "step_times_consistent":
            train_time_s = timed(events)
    elif tamper is not None and tamper != "pickle":
        raise ValueError(f"unknown tamper {tamper!r}")
    record = {
        "schema_version": 2,
        "run_id": run_id,
        "status": "completed",
        "official": True,
        "unofficial_reasons": [],
        "created": "2026-11-26T08:00:00+00:00",
        "finished": "2026-11-26T08:05:00+00:00",
        "command": ["speedrun", "run", submission],
        "seed": seed,
        "nproc": 1,
        "resumed": 0,
        "submission": {"name": submission, "hash": "a" * 64},
        "track": {"name": TRACK, "version": 1, "metric": "val_bpb", "threshold": THRESHOLD, "higher_is_better": False},
        "config": {
            "depth": 4,
            "max_seq_len": 256,
            "device_batch_size": 4,
            "eval_tokens": 4096,
            "save_every": -1,
            "seed": seed,
        },
        "plan": {"num_iterations": n_steps},
        "timing": {
            "train_time_s": train_time_s,
            "nanochat_time_s": timed(events, nanochat=True),
            "warmup_time_s": 5.0,
            "setup_time_s": 1.0,
            "eval_time_s": 1.0,
            "checkpoint_time_s": 0.1,
            "wall_time_s": train_time_s + 8,
            "steps": n_steps,
            "num_iterations": n_steps,
        },
        "result": {
            "metric": "val_bpb",
            "value": claimed_bpb,
            "val_bpb": claimed_bpb,
            "core": None,
            "target_met": claimed_bpb < THRESHOLD,
        },
        "throughput": {"tokens_per_s": 32768.0, "mfu": 1.5},
        "telemetry": {"energy_kwh": 0.00012 + 1e-6 * seed, "cost": 0.0003, "mean_power_w": 30.0},
        "provenance": {
            "code": code,
            "submission": {"name": submission, "hash": "a" * 64},
            "data": {"fingerprint": PRETRAIN_HASH, "num_files": 5, "bytes": 15104260},
            "tokenizer": cache["tokenizer"],
            "eval_bundle": None,
            "git": {"commit": None, "dirty": None, "branch": None, "reason": "test fixture"},
            "environment": {
                "python": "3.11.7",
                "torch": "2.13.0",
                "cpu_model": "test CPU",
                "cpu_count_logical": 2,
                "cpu_count_available": 2,
                "gpu_count": 0,
                "gpus": [],
            },
            "config": {},
            "seed": seed,
        },
        "files": {
            "events": "events.jsonl",
            "telemetry": "telemetry.jsonl",
            "log": "train.log",
            "checkpoint": f"checkpoints/step_{n_steps:06d}",
        },
        "error": None,
    }
    paths = {
        name: directory / name
        for name in ("record.json", "events.jsonl", "telemetry.jsonl", "model.safetensors", "meta.json", "train.log")
    }
    if tamper == "pickle":
        paths["model.safetensors"].write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=4))
    else:
        distinct_weights(GOLDEN_WEIGHTS, paths["model.safetensors"], salt=run_id)
    events += close(events, n_steps, file_sha256(paths["model.safetensors"]))
    paths["record.json"].write_text(json.dumps(record, indent=1))
    paths["events.jsonl"].write_text("".join(json.dumps(e) + "\n" for e in events))
    paths["telemetry.jsonl"].write_text("".join(json.dumps(r) + "\n" for r in _telemetry(t0, events[-1]["wall"])))
    paths["meta.json"].write_text(json.dumps({"step": n_steps, "model_config": GOLDEN_CONFIG}))
    paths["train.log"].write_text(f"training d4 for {n_steps} steps (test fixture {run_id})\n")
    return paths


@contextlib.contextmanager
def serve_in_thread(app):
    """Serve `app` with uvicorn on a free 127.0.0.1 port in a daemon thread; yields its base URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise RuntimeError("uvicorn did not start within 20 s")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
