"""Uploads: how the server takes in a run bundle (protocol/bundle.py says what one holds).

`stage(...)` copies the members into a staging directory with a size bound on each and on how far a
.tar.gz may expand (413), validates every member with leaderboard/members.py's strict schemas against
the run's track (422), checks that source.tar (the submission's files, protocol/source.py: text only,
no links, no path leaving its folder, bounded) hashes to the record's submission hash (422 naming both;
required on a track that re-runs its submissions), and returns a `StagedBundle`: named by
protocol.bundle.bundle_sha256, with the weights' content hash and the page summary. Nothing is stored
yet: the router inserts the run, then `store(...)` moves the directory to `storage_dir/bundles/<sha256>/`,
and a failure either side removes it. `sweep(...)` (at start-up) removes staging directories a killed
server left behind and stored bundles no run points to.

A record whose status is not "completed" is a report of a miss (a registered run that ended failed,
killed, diverged, invalid or stopped): it is staged from record.json alone.
"""

import hashlib
import json
import shutil
import tarfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from leaderboard import members
from leaderboard.summary import summarize
from protocol.bundle import MEMBERS, REQUIRED, bundle_sha256
from protocol.events import StepEvent
from protocol.record import MISS_STATUSES, RECORD_FILE, RunRecord, parse_record
from protocol.source import SOURCE_FILE, SourceError, check_source
from protocol.tracks import Track

CHUNK = 1 << 20
EXPANSION_SLACK = 1 << 20  # a tiny bundle may expand more than the ratio: headers, padding
MAX_EVAL_BATCH = 4096  # config.device_batch_size the verifier evaluates with


class BundleError(ValueError):
    """A bundle the server will not take; `status` is the HTTP status that says why (413 or 422)."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class StagedBundle:
    dir: Path
    files: dict[str, dict] = field(default_factory=dict)  # name -> {"size", "sha256"}
    record: RunRecord | None = None
    sha256: str = ""
    weights_sha256: str | None = None  # members.weights_sha256; None for a miss report
    summary: dict | None = None  # leaderboard.summary.summarize

    @property
    def is_miss(self) -> bool:
        return self.record is not None and self.record.status != "completed"

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class _Counted:
    """A file object that counts the bytes read through it (the compressed side of a .tar.gz)."""

    def __init__(self, f: BinaryIO):
        self.f, self.n = f, 0

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.n += len(data)
        return data


def _copy_bounded(src: BinaryIO, dst: Path, limit: int, name: str, expansion=None) -> dict:
    h, size = hashlib.sha256(), 0
    with open(dst, "wb") as out:
        while chunk := src.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise BundleError(413, f"{name} is over the server's limit of {limit:,} bytes")
            if expansion is not None:
                expansion(len(chunk))
            h.update(chunk)
            out.write(chunk)
    return {"size": size, "sha256": h.hexdigest()}


def _limit(name: str, limits: dict[str, int], total: int) -> int:
    return min(limits.get(name, total), total)


def stage(
    *,
    storage_dir: Path,
    track_for: Callable[[RunRecord], Track],
    files: dict[str, BinaryIO] | None = None,
    tarball: BinaryIO | None = None,
    max_total_bytes: int,
    max_file_bytes: dict[str, int],
    max_expansion: float = 20.0,
) -> StagedBundle:
    """Copy the members (named files, or one .tar.gz) into a staging dir, then validate them against the
    track `track_for(record)` returns (it raises BundleError for a track the server does not take)."""
    if (files is None) == (tarball is None):
        raise BundleError(422, "send either the bundle as one .tar.gz (field `bundle`) or its files, not both")
    staged = StagedBundle(dir=Path(storage_dir) / "staging" / uuid.uuid4().hex)
    staged.dir.mkdir(parents=True)
    try:
        if tarball is not None:
            _stage_tar(staged, tarball, max_total_bytes, max_file_bytes, max_expansion)
        else:
            for name, f in files.items():
                staged.files[name] = _copy_bounded(
                    f, staged.dir / name, _limit(name, max_file_bytes, max_total_bytes), name
                )
        _validate(staged, track_for)
    except BaseException:
        staged.discard()
        raise
    staged.sha256 = bundle_sha256({name: info["sha256"] for name, info in staged.files.items()})
    return staged


def _stage_tar(staged: StagedBundle, tarball: BinaryIO, max_total: int, limits: dict[str, int], ratio: float) -> None:
    counted, total = _Counted(tarball), 0

    def expansion(n: int) -> None:  # a gzip bomb stops here, a megabyte past the ratio, before it is written
        nonlocal total
        total += n
        if total > ratio * counted.n + EXPANSION_SLACK:
            raise BundleError(413, f"the bundle expands more than {ratio:g}x: the server does not unpack it")

    try:
        with tarfile.open(fileobj=counted, mode="r|*") as tar:  # a stream: members in order, never seeked
            for member in tar:
                name = member.name.removeprefix("./")
                if member.isdir() and name in ("", "."):
                    continue
                if name not in MEMBERS or not member.isfile():
                    raise BundleError(
                        422, f"unexpected member {member.name[:100]!r} in the bundle: it may hold {', '.join(MEMBERS)}"
                    )
                if name in staged.files:
                    raise BundleError(422, f"{name} appears twice in the bundle")
                if total + member.size > max_total:  # the header says so: stop before it is written
                    raise BundleError(413, f"the bundle unpacks to over the server's limit of {max_total:,} bytes")
                src = tar.extractfile(member)
                staged.files[name] = _copy_bounded(
                    src, staged.dir / name, _limit(name, limits, max_total), name, expansion
                )
    except (tarfile.TarError, EOFError, OSError) as e:
        if isinstance(e, BundleError):
            raise
        raise BundleError(422, f"the bundle is not a readable .tar.gz ({type(e).__name__})") from None


def _load_json(path: Path, name: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"), parse_constant=members._no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BundleError(422, f"{name} is not valid JSON ({str(e)[:100]})") from None


def _validate(staged: StagedBundle, track_for: Callable[[RunRecord], Track]) -> None:
    if RECORD_FILE not in staged.files:
        raise BundleError(422, f"the bundle lacks {RECORD_FILE}: `speedrun submit RUN_DIR` sends it")
    try:
        record = parse_record(_load_json(staged.dir / RECORD_FILE, RECORD_FILE), where=RECORD_FILE)
        members.check_train_config(record.config)
    except ValueError as e:
        raise BundleError(422, str(e)) from None
    staged.record = record
    track = track_for(record)
    if record.submission.division not in track.divisions:
        raise BundleError(
            422,
            f"track {track.name} ranks the {' and '.join(track.divisions)} division only, and "
            f"{record.submission.name} is in the {record.submission.division} one: run it on a track whose divisions "
            "include it (speedrun tracks)",
        )
    if staged.is_miss:
        if record.status not in MISS_STATUSES:
            raise BundleError(
                422,
                f"{RECORD_FILE} has status {record.status}: upload a run once it is completed, or to report a "
                f"miss once it ended {', '.join(MISS_STATUSES)}",
            )
        extra = sorted(set(staged.files) - {RECORD_FILE})
        if extra:
            raise BundleError(422, f"a {record.status} run is reported by its {RECORD_FILE} alone: leave out {extra}")
        return
    missing = [n for n in REQUIRED if n not in staged.files]
    if missing:
        raise BundleError(422, f"the bundle lacks {', '.join(missing)}: `speedrun submit RUN_DIR` sends them all")
    if SOURCE_FILE in staged.files:
        _check_source(staged, record)
    elif track.reproduce is not None or record.submission.division == "open":
        why = (
            "an open run's weights need its model code"
            if track.reproduce is None
            else f"track {track.name} re-runs submissions"
        )
        raise BundleError(
            422,
            f"the bundle lacks {SOURCE_FILE}: {why}, so a run carries its source "
            f"(`speedrun submit` sends the {SOURCE_FILE} `speedrun run` packed; a run made without one must run again)",
        )
    if record.timing is None or record.result is None:
        raise BundleError(422, f"{RECORD_FILE} of a completed run has no timing or result: send the runner's record")
    if record.timing.steps > members.MAX_STEPS:
        raise BundleError(
            422, f"timing.steps = {record.timing.steps:,} is over {members.MAX_STEPS:,}: no run takes that"
        )
    batch = (record.config or {}).get("device_batch_size", 1)
    if not 1 <= batch <= MAX_EVAL_BATCH:
        raise BundleError(422, f"config.device_batch_size = {batch} is outside 1..{MAX_EVAL_BATCH}")
    weights = staged.dir / "model.safetensors"
    with open(weights, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5):
        raise BundleError(
            422,
            "model.safetensors is a pickle or a torch.save zip: the server loads weights with safetensors only and "
            "never unpickles; save them with safetensors.torch.save_file (baseline.checkpoint does)",
        )
    try:
        start, entries = members.read_safetensors_header(weights)
        meta = _load_json(staged.dir / "meta.json", "meta.json")
        members.check_model_against_track(meta, entries, track, record.submission.division)
        events = members.parse_events(staged.dir / "events.jsonl")
        info, samples = members.parse_telemetry(staged.dir / "telemetry.jsonl")
        staged.weights_sha256 = members.weights_sha256(weights, start, entries)
    except ValueError as e:
        raise BundleError(422, str(e)) from None
    if not any(isinstance(e, StepEvent) for e in events):
        raise BundleError(422, "events.jsonl has no step events: send the events.jsonl the trainer wrote")
    staged.summary = summarize(events, info, samples)


def _check_source(staged: StagedBundle, record: RunRecord) -> None:
    """source.tar holds exactly the submission the record names: every member safe, the files' hash the record's."""
    ref = record.submission
    claimed = record.provenance.submission if record.provenance else None
    if claimed is not None and claimed.hash != ref.hash:
        raise BundleError(
            422,
            f"{RECORD_FILE} names submission hash {ref.hash} but provenance {claimed.hash}: send the runner's record",
        )
    scratch = staged.dir / "source-check"  # removed before the bundle is stored: it holds the members only
    try:
        check_source((staged.dir / SOURCE_FILE).read_bytes(), scratch, name=ref.name, expected=ref.hash)
    except SourceError as e:
        raise BundleError(422, str(e)) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def store(staged: StagedBundle, *, storage_dir: Path) -> Path:
    """Move a staged bundle to bundles/<sha256>/ (the same bundle uploaded twice is stored once)."""
    final = Path(storage_dir) / "bundles" / staged.sha256
    if final.is_dir():
        staged.discard()
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        staged.dir.rename(final)
    except OSError:  # a concurrent upload of the same bundle won the rename
        staged.discard()
    return final


def sweep(storage_dir: Path, *, keep: Callable[[str], bool], older_than_s: float) -> list[str]:
    """Remove staging dirs and unreferenced bundles (`keep(sha256)` False) older than `older_than_s`; their names."""
    removed, cutoff = [], time.time() - older_than_s
    for parent, referenced in (("staging", lambda _name: False), ("bundles", keep)):
        root = Path(storage_dir) / parent
        for d in root.iterdir() if root.is_dir() else ():
            try:
                old = d.stat().st_mtime < cutoff
            except FileNotFoundError:  # another worker's sweep or upload took it
                continue
            if old and not referenced(d.name):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(f"{parent}/{d.name}")
    return removed
