"""A run bundle: the files of one finished run that `speedrun submit` uploads and the leaderboard stores.

Members (flat names; the .tar.gz holds the same names at its top level):
    record.json        the run record (protocol/record.py), status "completed"
    events.jsonl       the trainer's step events
    telemetry.jsonl    the telemetry sampler's lines
    model.safetensors  the final checkpoint's weights (the server reads them with safetensors only)
    meta.json          the final checkpoint's meta (model_config, ...)
    train.log          optional: the run's log, offered for download
    source.tar         the submission's files (protocol/source.py), packed when the run was registered: the
                       server checks they hash to the record's submission hash, and re-runs them (required
                       on a track that reproduces its runs)

A bundle is named by `bundle_sha256`: the sha256 over the sorted `name sha256(member)` lines, so the
same files always give the same bundle however they were packed.
"""

import hashlib
from pathlib import Path

from protocol.record import RECORD_FILE, RunRecord
from protocol.source import SOURCE_FILE

REQUIRED = (RECORD_FILE, "events.jsonl", "telemetry.jsonl", "model.safetensors", "meta.json")
OPTIONAL = ("train.log", SOURCE_FILE)
MEMBERS = REQUIRED + OPTIONAL


def member_paths(run_dir: Path, record: RunRecord) -> dict[str, Path]:
    """Where each member lies in a run directory (the checkpoint's files under record.files.checkpoint)."""
    checkpoint = run_dir / (record.files.checkpoint or "no-checkpoint")
    return {
        RECORD_FILE: run_dir / RECORD_FILE,
        "events.jsonl": run_dir / record.files.events,
        "telemetry.jsonl": run_dir / (record.files.telemetry or "telemetry.jsonl"),
        "model.safetensors": checkpoint / "model.safetensors",
        "meta.json": checkpoint / "meta.json",
        "train.log": run_dir / (record.files.log or "train.log"),
        SOURCE_FILE: run_dir / SOURCE_FILE,
    }


def bundle_sha256(member_sha256: dict[str, str]) -> str:
    lines = sorted(f"{name} {digest}\n" for name, digest in member_sha256.items())
    return hashlib.sha256("".join(lines).encode()).hexdigest()
