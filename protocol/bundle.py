"""A run bundle: the files of one finished run that `speedrun submit` uploads and the leaderboard stores.

Members (flat names; the .tar.gz holds the same names at its top level):
    record.json        the run record (protocol/record.py), status "completed"
    events.jsonl       the trainer's step events
    telemetry.jsonl    the telemetry sampler's lines
    model.safetensors  the final checkpoint's weights (the server reads them with safetensors only)
    meta.json          the final checkpoint's meta (model_config, ...)
    train.log          optional: the run's log, offered for download
    source.tar         an open-division run's model code (required for one): its submission folder, or
                       .py file, as the record's submission hash covers it, at the top of a plain tar
                       (`source_tar`); the server unpacks it, checks that hash and runs it only in its
                       sandbox (eval.open_model.score_in_sandbox)

A bundle is named by `bundle_sha256`: the sha256 over the sorted `name sha256(member)` lines, so the
same files always give the same bundle however they were packed.
"""

import hashlib
import io
import tarfile
from pathlib import Path

from protocol.hashing import tree_files
from protocol.record import RECORD_FILE, RunRecord

REQUIRED = (RECORD_FILE, "events.jsonl", "telemetry.jsonl", "model.safetensors", "meta.json")
SOURCE = "source.tar"  # required of an open-division run
OPTIONAL = ("train.log", SOURCE)
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
    }


def source_tar(source: Path) -> bytes:
    """A submission folder (or .py file) as a tar with fixed metadata: the same files give the same bytes.

    Only what its hash covers (protocol.hashing.folder_or_file_hash), under the folder's (or file's) name.
    """
    source = Path(source)
    names = [f"{source.name}/{rel}" for rel in tree_files(source)] if source.is_dir() else [source.name]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            data = (source.parent / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def bundle_sha256(member_sha256: dict[str, str]) -> str:
    lines = sorted(f"{name} {digest}\n" for name, digest in member_sha256.items())
    return hashlib.sha256("".join(lines).encode()).hexdigest()
