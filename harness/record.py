"""The run record: `runs/<run_id>/record.json`, the one file that says what a run was and what it got.

Schema (version 1), every key always present (null when unknown):
- identity: `schema_version`, `run_id`, `status`, `official`, `unofficial_reasons`, `created`,
  `finished`, `command`, `seed`, `nproc`, `resumed` (how many times);
- `submission` {name, hash}, `track` {name, version, metric, threshold, higher_is_better};
- `config` (the resolved TrainConfig) and `plan` (everything derived from it);
- `timing` {train_time_s (the timed seconds), warmup_time_s, setup_time_s, eval_time_s,
  checkpoint_time_s, wall_time_s, steps, num_iterations};
- `result` {metric, value, val_bpb, core, target_met}; `throughput` {tokens_per_s, mfu};
- `telemetry` (the sampler's summary over the timed region), `provenance` (hashes, versions);
- `files` (relative paths of events, telemetry, log, checkpoint); `error` (why it failed).
Status is one of STATUSES; a record is written when the run starts and rewritten when it ends,
so a crash or a kill still leaves one behind.
"""

import json
import os
from datetime import UTC, datetime
from pathlib import Path

SCHEMA_VERSION = 1
STATUSES = ("running", "completed", "stopped", "failed", "diverged", "killed")
RECORD_FILE = "record.json"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_record(run_id: str, *, track, submission: dict, seed: int, nproc: int, command: list[str]) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "status": "running",
        "official": True,
        "unofficial_reasons": [],
        "created": now_iso(),
        "finished": None,
        "command": command,
        "seed": seed,
        "nproc": nproc,
        "resumed": 0,
        "submission": submission,
        "track": {
            "name": track.name,
            "version": track.version,
            "metric": track.target.metric,
            "threshold": track.target.threshold,
            "higher_is_better": track.target.higher_is_better,
        },
        "config": None,
        "plan": None,
        "timing": None,
        "result": None,
        "throughput": None,
        "telemetry": None,
        "provenance": None,
        "files": {"events": "events.jsonl", "telemetry": "telemetry.jsonl", "log": "train.log", "checkpoint": None},
        "error": None,
    }


def write_record(run_dir: str | Path, record: dict) -> Path:
    """Atomic: a reader never sees half a record."""
    if record["status"] not in STATUSES:
        raise ValueError(f"unknown run status {record['status']!r}; expected one of {STATUSES}")
    path = Path(run_dir) / RECORD_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, path)
    return path


def read_record(run_dir: str | Path) -> dict:
    path = Path(run_dir) / RECORD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {RECORD_FILE}: pass a run directory made by `speedrun run`")
    record = json.loads(path.read_text())
    if record.get("schema_version") != SCHEMA_VERSION:
        version = record.get("schema_version")
        raise ValueError(f"{path} has schema version {version}; this speedrun reads version {SCHEMA_VERSION}")
    return record


def find_run(run: str | Path, runs_dir: str | Path = "runs") -> Path:
    """A run directory from a path or a run id under runs_dir."""
    for candidate in (Path(run), Path(runs_dir) / str(run)):
        if (candidate / RECORD_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"no run {run!r} (looked for {RECORD_FILE} in {run} and {Path(runs_dir) / str(run)})")
