"""Uploads: how the server takes in a run bundle (protocol/bundle.py says what one holds).

`stage(...)` copies the members into a staging directory with a size bound on each (413), validates
them (422: the record against protocol.record's strict schema, the checkpoint meta, the JSON lines),
and returns a `StagedBundle` named by protocol.bundle.bundle_sha256. `store(...)` then moves it to
`storage_dir/bundles/<sha256>/` (kept if already there).
"""

import hashlib
import json
import math
import os
import shutil
import tarfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protocol.bundle import MEMBERS, REQUIRED, bundle_sha256
from protocol.record import RECORD_FILE, RunRecord, parse_record

CHUNK = 1 << 20


class BundleError(ValueError):
    """A bundle the server will not take; `status` is the HTTP status that says why (413 or 422)."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


# ------------------------------------------------------------------ the checkpoint meta the server reads


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    sequence_len: int = Field(ge=1)
    vocab_size: int = Field(ge=1)
    n_layer: int = Field(ge=1)
    n_head: int = Field(ge=1)
    n_kv_head: int = Field(ge=1)
    n_embd: int = Field(ge=1)


class CheckpointMeta(BaseModel):
    model_config = ConfigDict(extra="allow")
    model_config_: ModelConfig = Field(alias="model_config")


# ------------------------------------------------------------------ staging


@dataclass
class StagedBundle:
    dir: Path
    files: dict[str, dict] = field(default_factory=dict)  # name -> {"size", "sha256"}
    record: RunRecord | None = None
    sha256: str = ""

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _copy_bounded(src: BinaryIO, dst: Path, limit: int, name: str) -> dict:
    h, size = hashlib.sha256(), 0
    with open(dst, "wb") as out:
        while chunk := src.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise BundleError(413, f"{name} is over the server's limit of {limit:,} bytes")
            h.update(chunk)
            out.write(chunk)
    return {"size": size, "sha256": h.hexdigest()}


def _limit(name: str, limits: dict[str, int], total: int) -> int:
    return min(limits.get(name, total), total)


def stage(
    *,
    storage_dir: Path,
    files: dict[str, BinaryIO] | None = None,
    tarball: BinaryIO | None = None,
    max_total_bytes: int,
    max_file_bytes: dict[str, int],
) -> StagedBundle:
    """Copy the members (given as named files, or as one .tar.gz) into a staging dir, then validate them."""
    if (files is None) == (tarball is None):
        raise BundleError(422, "send either the bundle as one .tar.gz (field `bundle`) or its files, not both")
    staged = StagedBundle(dir=Path(storage_dir) / "staging" / uuid.uuid4().hex)
    staged.dir.mkdir(parents=True)
    try:
        if tarball is not None:
            _stage_tar(staged, tarball, max_total_bytes, max_file_bytes)
        else:
            for name, f in files.items():
                staged.files[name] = _copy_bounded(
                    f, staged.dir / name, _limit(name, max_file_bytes, max_total_bytes), name
                )
        _validate(staged)
    except BaseException:
        staged.discard()
        raise
    staged.sha256 = bundle_sha256({name: info["sha256"] for name, info in staged.files.items()})
    return staged


def _stage_tar(staged: StagedBundle, tarball: BinaryIO, max_total: int, limits: dict[str, int]) -> None:
    total = 0
    try:
        with tarfile.open(fileobj=tarball, mode="r:*") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if member.isdir() and name in ("", "."):
                    continue
                if name not in MEMBERS or not member.isfile():
                    raise BundleError(
                        422, f"unexpected member {member.name!r} in the bundle: it may hold {', '.join(MEMBERS)}"
                    )
                if name in staged.files:
                    raise BundleError(422, f"{name} appears twice in the bundle")
                total += member.size
                if total > max_total:  # a decompression bomb stops here, before it is written
                    raise BundleError(413, f"the bundle unpacks to over the server's limit of {max_total:,} bytes")
                src = tar.extractfile(member)
                staged.files[name] = _copy_bounded(src, staged.dir / name, _limit(name, limits, max_total), name)
    except (tarfile.TarError, EOFError, OSError) as e:
        if isinstance(e, BundleError):
            raise
        raise BundleError(422, f"the bundle is not a readable .tar.gz ({e})") from e


def _load_json(path: Path, name: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError) as e:
        raise BundleError(422, f"{name} is not valid JSON ({e})") from e


def _no_constants(token: str):
    raise ValueError(f"{token} is not a number JSON allows")


def _jsonl(path: Path, name: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8", errors="strict") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise BundleError(422, f"{name} line {i} is not JSON ({e})") from e
            if not isinstance(row, dict):
                raise BundleError(422, f"{name} line {i} is not a JSON object")
            rows.append(row)
    return rows


def _validate(staged: StagedBundle) -> None:
    missing = [n for n in REQUIRED if n not in staged.files]
    if missing:
        raise BundleError(422, f"the bundle lacks {', '.join(missing)}: `speedrun submit RUN_DIR` sends them all")
    try:
        record = parse_record(_load_json(staged.dir / RECORD_FILE, RECORD_FILE), where=RECORD_FILE)
    except ValueError as e:
        raise BundleError(422, str(e)) from e
    if record.status != "completed":
        raise BundleError(422, f"{RECORD_FILE} has status {record.status}: only a completed run can be verified")
    try:
        CheckpointMeta.model_validate(_load_json(staged.dir / "meta.json", "meta.json"))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise BundleError(422, f"meta.json does not fit the schema at {where}: {first['msg']}") from e
    try:
        events = _jsonl(staged.dir / "events.jsonl", "events.jsonl")
        _jsonl(staged.dir / "telemetry.jsonl", "telemetry.jsonl")
    except UnicodeDecodeError as e:
        raise BundleError(422, f"events.jsonl or telemetry.jsonl is not UTF-8 text ({e})") from e
    steps = [e for e in events if e.get("event") == "step"]
    if not steps:
        raise BundleError(422, "events.jsonl has no step events: send the events.jsonl the trainer wrote")
    for e in steps:
        if (
            not isinstance(e.get("step"), int)
            or not isinstance(e.get("dt_s"), int | float)
            or not math.isfinite(e["dt_s"])
        ):
            raise BundleError(422, f"a step event lacks an integer `step` or a finite `dt_s`: {json.dumps(e)[:200]}")
    staged.record = record


def store(staged: StagedBundle, *, storage_dir: Path) -> Path:
    """Move a staged bundle to bundles/<sha256>/ (the same bundle uploaded twice is stored once)."""
    final = Path(storage_dir) / "bundles" / staged.sha256
    if final.is_dir():
        staged.discard()
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(staged.dir, final)
    except OSError:  # a concurrent upload of the same bundle won the rename
        staged.discard()
    return final


def read_jsonl(path: Path) -> list[dict]:
    return _jsonl(path, path.name) if path.is_file() else []
