"""A run bundle: what `speedrun submit` uploads for one run, and how the server takes it in.

Members (flat names; a .tar.gz holds the same names at its top level):
    record.json        the run record (harness/record.py, schema v1), status "completed"
    events.jsonl       the trainer's step events ({event: "step", step, dt_s, loss, ...})
    telemetry.jsonl    the telemetry sampler's lines (info, samples, marks)
    model.safetensors  the final checkpoint's weights (checked by the worker: never unpickled)
    meta.json          the final checkpoint's meta (model_config, ...)
    train.log          optional: the run's log, offered for download

`stage(...)` copies the members into a staging directory with a size bound on each (413), validates
them (422), and returns a `StagedBundle` whose `sha256` names the bundle: sha256 over the sorted
`name sha256(member)` lines, so the same files always give the same bundle, however they were packed.
`store(...)` then moves it to `storage_dir/bundles/<sha256>/` (kept if already there).
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
from typing import BinaryIO, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

REQUIRED = ("record.json", "events.jsonl", "telemetry.jsonl", "model.safetensors", "meta.json")
OPTIONAL = ("train.log",)
MEMBERS = REQUIRED + OPTIONAL
CHUNK = 1 << 20
HEX64 = r"^[0-9a-f]{64}$"


class BundleError(ValueError):
    """A bundle the server will not take; `status` is the HTTP status that says why (413 or 422)."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


# ------------------------------------------------------------------ the record schema the server reads


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class TrackRef(_Strict):
    name: str = Field(min_length=1, max_length=100)
    version: int
    metric: Literal["val_bpb", "core"]
    threshold: float
    higher_is_better: bool


class SubmissionRef(_Strict):
    name: str = Field(min_length=1, max_length=200)
    hash: str | None = Field(default=None, pattern=HEX64)


class Timing(_Strict):
    train_time_s: float = Field(ge=0)
    steps: int = Field(ge=0)
    wall_time_s: float | None = None


class Result(_Strict):
    metric: Literal["val_bpb", "core"]
    value: float | None
    val_bpb: float | None = None
    core: float | None = None
    target_met: bool | None = None


class RecordV1(_Strict):
    """The part of harness/record.py's schema v1 the server relies on; other keys are kept as they are."""

    schema_version: Literal[1]
    run_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
    status: Literal["completed"]  # only a finished run has a final checkpoint to verify
    official: bool
    unofficial_reasons: list[str] = []
    created: str | None = None
    finished: str | None = None
    seed: int
    nproc: int = Field(ge=1)
    submission: SubmissionRef
    track: TrackRef
    config: dict
    timing: Timing
    result: Result
    throughput: dict | None = None
    telemetry: dict | None = None
    provenance: dict
    files: dict = {}


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
    record: dict | None = None
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
    lines = sorted(f"{name} {info['sha256']}\n" for name, info in staged.files.items())
    staged.sha256 = hashlib.sha256("".join(lines).encode()).hexdigest()
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
    raw = _load_json(staged.dir / "record.json", "record.json")
    if not isinstance(raw, dict):
        raise BundleError(422, "record.json is not a JSON object")
    try:
        RecordV1.model_validate(raw)
        CheckpointMeta.model_validate(_load_json(staged.dir / "meta.json", "meta.json"))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise BundleError(422, f"record or meta does not fit the schema at {where}: {first['msg']}") from e
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
    staged.record = raw


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


def read_steps(events_path: Path) -> list[dict]:
    """The step events of an events.jsonl (the format harness/runner.py and baseline/train.py write)."""
    return [e for e in _jsonl(events_path, events_path.name) if e.get("event") == "step"]


def read_jsonl(path: Path) -> list[dict]:
    return _jsonl(path, path.name) if path.is_file() else []
