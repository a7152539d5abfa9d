"""A reproduction: what the leaderboard asks a reproducer to re-run, the work dir it is run in, what comes back.

    order = WorkOrder(job=job, data_dir=..., tokenizer_dir=...)      # job: a ReproduceJob from the server
    prepare_work_dir(work, order, source)                             # order.json + source.tar
    sandbox.run(rerun_command(work), work_dir=work, read_only=read_only_paths(order), env=rerun_env(order, work),
                tick=..., ...)                                        # the re-run, behind the sandbox's walls
    result = collect_result(work, order, outcome)                     # a ReproduceResult, posted to the server

Two kinds of reproducer use this: the leaderboard's own verify worker (leaderboard/reproduction.py) and
runner machines (`speedrun runner`, harness/runner_machine.py). Inside the sandbox the harness's own
entry runs: `python -m speedrun reproduce WORK_DIR` (harness/reproduce.py) unpacks the source and runs
`speedrun run` on it with the job's track and seed, as the submitter did.

Everything the re-run leaves in the work dir is untrusted: the submission's code ran there. So
collect_result reads only the re-run's record.json, events.jsonl and final weights, each opened without
following a link (at any depth) and bounded in size, through the protocol's strict parsers; it
recomputes the timed seconds and the clock check from the step events itself, and hashes the weights.
What it still takes from inside on trust is the final metric of the re-run's own eval process (a
process that never imports the submission), and the step events themselves: the server compares both
with the claim (leaderboard/comparison.py), and checks the events' seconds against the sandbox's
outer clock (`wall_s`, measured here, outside).
"""

import hashlib
import json
import os
import stat
import sys
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import psutil
from pydantic import BaseModel, ConfigDict, Field

from protocol.events import CheckpointEvent, Event, StepEvent, parse_event
from protocol.hashing import REPO
from protocol.record import HEX64, RUN_ID, STATUSES, Environment, SubmissionRef, parse_model, parse_record
from protocol.source import SOURCE_FILE
from protocol.timing import clock_check, last_per_step, timed_seconds
from protocol.tracks import track_from_dict

ORDER_FILE = "order.json"
RERUN_CAMPAIGN = "reproduction"  # the re-run's directory is runs/reproduction-s<seed> in the work dir
MAX_STEPS = 10_000_000  # as leaderboard/members.py: 1000x a gpt2 run
MAX_EVENTS_BYTES = 256 * 1024**2  # as an uploaded events.jsonl
MAX_RECORD_BYTES = 8 * 1024**2
LOG_LINES, LOG_LINE_CHARS = 20, 500
SANDBOX_STATUSES = ("ok", "failed", "timeout", "memory", "processes", "disk", "cancelled")
Text = Annotated[str, Field(max_length=10_000)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ReproduceJob(_Strict):
    """What to re-run (the server -> a reproducer): a verified run's track, seed and submission."""

    schema_version: Literal[1] = 1
    job_id: Annotated[int, Field(ge=1)]
    run_id: str = Field(pattern=RUN_ID)
    track: dict[str, Any]  # protocol.tracks.Track.to_dict() of the track as the server has it
    seed: Annotated[int, Field(ge=0, lt=2**63)]
    submission: SubmissionRef
    nproc: Annotated[int, Field(ge=1, le=1024)] = 1  # the track's GPU count (1 on CPU tracks)
    lease_s: Annotated[float, Field(gt=0, le=86_400)] = 600.0  # report within this, or the job goes back


class WorkOrder(_Strict):
    """The work dir's order.json: the job and where this machine keeps the track's data and tokenizer."""

    schema_version: Literal[1] = 1
    job: ReproduceJob
    data_dir: Annotated[str, Field(max_length=4096)]
    tokenizer_dir: Annotated[str, Field(max_length=4096)]


class Machine(_Strict):
    """The reproducing machine, measured outside the sandbox (psutil; NVML when present)."""

    cpu_model: Annotated[str, Field(max_length=500)] | None = None
    cpu_count: Annotated[int, Field(ge=1, le=100_000)]
    memory_bytes: Annotated[int, Field(ge=0, le=2**60)]
    gpus: Annotated[list[Annotated[str, Field(max_length=200)]], Field(max_length=1024)] = []


class ReproduceResult(_Strict):
    """What a reproducer reports (a reproducer -> the server), before the server compares it with the claim."""

    schema_version: Literal[1] = 1
    job_id: Annotated[int, Field(ge=1)]
    status: Literal[SANDBOX_STATUSES]  # how the sandbox ended (sandbox.SandboxResult.status)
    reason: Text | None = None
    wall_s: Annotated[float, Field(ge=0, le=1e7)]  # the sandbox's outer clock
    machine: Machine
    run_status: Literal[STATUSES] | None = None  # the re-run's record (None: it left none)
    run_error: Text | None = None
    submission_hash: str | None = Field(default=None, pattern=HEX64)  # what the re-run's record says it ran
    steps: Annotated[int, Field(ge=0, le=MAX_STEPS)] = 0
    losses: Annotated[list[float | None], Field(max_length=MAX_STEPS)] = []  # per step, in step order
    train_time_s: Annotated[float, Field(ge=0, le=1e9)] | None = None  # recomputed here from the step events
    clock_ok: bool | None = None
    clock_detail: Text | None = None
    metric_value: float | None = None  # the re-run's own eval (a fresh process that never imports the submission)
    val_bpb: float | None = None
    core: float | None = None
    weights_sha256: str | None = Field(default=None, pattern=HEX64)  # sha256 of the re-run's final model file
    environment: Environment | None = None  # versions and hardware the re-run recorded
    log_tail: Annotated[list[Annotated[str, Field(max_length=LOG_LINE_CHARS)]], Field(max_length=LOG_LINES)] = []


def parse_result(raw, *, where: str = "the reproduction result") -> ReproduceResult:
    """A ReproduceResult from its JSON object; a one-line ValueError if it does not fit."""
    return parse_model(ReproduceResult, raw, where)


def this_machine() -> Machine:
    """The hardware of the machine this runs on (NVML's GPU names when a driver answers)."""
    return Machine(
        cpu_model=cpu_model(),
        cpu_count=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        memory_bytes=psutil.virtual_memory().total,
        gpus=_nvml_gpus(),
    )


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (None where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _nvml_gpus() -> list[str]:
    try:
        import pynvml  # optional at run time: a CPU machine has no driver to answer

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 -- no library, no driver: no GPUs
        return []
    try:
        names = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
            names.append(name.decode() if isinstance(name, bytes) else name)
        return names
    finally:
        pynvml.nvmlShutdown()


# ------------------------------------------------------------------ the work dir


def prepare_work_dir(work_dir: Path, order: WorkOrder, source: bytes) -> None:
    """Write order.json and source.tar into an empty work dir (the re-run makes the rest)."""
    work_dir = Path(work_dir)
    (work_dir / ORDER_FILE).write_text(order.model_dump_json(indent=2))
    (work_dir / SOURCE_FILE).write_bytes(source)


def read_order(work_dir: Path) -> WorkOrder:
    return parse_model(WorkOrder, json.loads((Path(work_dir) / ORDER_FILE).read_text()), ORDER_FILE)


def rerun_command(work_dir: Path) -> list[str]:
    """The harness's own entry, run inside the sandbox (cwd: the project)."""
    return [sys.executable, "-m", "speedrun", "reproduce", str(work_dir)]


def rerun_env(order: WorkOrder, work_dir: Path) -> dict[str, str]:
    """The re-run's whole environment (the sandbox adds PATH, HOME and LANG, nothing of the caller's)."""
    threads = track_from_dict(order.job.track).hardware.cpu_threads or 1
    return {
        "SPEEDRUN_CACHE": str(Path(work_dir) / "cache"),  # its own caches; the tokenizer is linked in
        "PYTHONPATH": str(REPO),
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": str(threads),
    }


def read_only_paths(order: WorkOrder) -> list[Path]:
    """What the re-run may read: the project, the track's public shards (never a held-out shard that may lie
    beside them) and its tokenizer."""
    track = track_from_dict(order.job.track)
    data = Path(order.data_dir)
    shards = [data / name for name in track.dataset.shards] if track.dataset.shards else [data]
    return [REPO, *shards, Path(order.tokenizer_dir)]


def sandbox_args(order: WorkOrder, work_dir: Path) -> dict:
    """sandbox.run's arguments for the re-run, but for limits, output and tick (the reproducer's own)."""
    return {
        "work_dir": Path(work_dir),
        "read_only": read_only_paths(order),
        "env": rerun_env(order, work_dir),
        "cwd": REPO,
    }


def rerun_dir(order: WorkOrder) -> str:
    """The re-run's run directory, relative to the work dir."""
    return f"runs/{RERUN_CAMPAIGN}-s{order.job.seed}"


# ------------------------------------------------------------------ reading what the re-run left


def _open_under(root: Path, rel: str):
    """A regular file under `root`, opened read-only without following a link at any depth; ValueError otherwise."""
    path = PurePosixPath(rel)
    if path.is_absolute() or not path.parts or any(p in ("", ".", "..") for p in path.parts):
        raise ValueError(f"{rel[:200]!r} is not a plain relative path")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for part in path.parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
        # O_NONBLOCK: a FIFO left in its place must not block the reader (it is refused below)
        file_fd = os.open(path.parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    except OSError as e:
        raise ValueError(f"{rel[:200]} cannot be opened ({e.strerror}): missing, or a link") from None
    finally:
        os.close(fd)
    f = os.fdopen(file_fd, "rb")
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise ValueError(f"{rel[:200]} is not a regular file")
    return f


def read_bounded(root: Path, rel: str, max_bytes: int) -> bytes:
    with _open_under(root, rel) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{rel[:200]} is over {max_bytes:,} bytes")
    return data


def _events(root: Path, rel: str) -> list[Event]:
    text = read_bounded(root, rel, MAX_EVENTS_BYTES).decode("utf-8", errors="strict")
    return [parse_event(line, where=f"{rel} line {i}") for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def _sha256(root: Path, rel: str) -> str:
    digest = hashlib.sha256()
    with _open_under(root, rel) as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def progress(work_dir: Path, order: WorkOrder) -> str | None:
    """How far the re-run is ("step 12 trained"), from the tail of its events; None before its first step."""
    try:
        with _open_under(Path(work_dir), f"{rerun_dir(order)}/events.jsonl") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 8192))
            tail = f.read(8192).decode("utf-8", errors="replace").splitlines()
    except ValueError:
        return None
    for line in reversed(tail):
        try:
            event = parse_event(line)
        except ValueError:
            continue
        if isinstance(event, StepEvent):
            return f"step {event.step + 1} trained"
    return None


def log_tail(log: Path) -> list[str]:
    """The last lines of the re-run's output (the caller's own file, outside the work dir)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 16384))
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return []
    return [line[:LOG_LINE_CHARS] for line in lines if line.strip()][-LOG_LINES:]


def collect_result(
    work_dir: Path, order: WorkOrder, *, status: str, reason: str | None, wall_s: float, machine: Machine, log: Path
) -> ReproduceResult:
    """The ReproduceResult of a finished sandbox: how it ended, and what the re-run's files show (read safely)."""
    result = {
        "job_id": order.job.job_id,
        "status": status,
        "reason": reason,
        "wall_s": wall_s,
        "machine": machine,
        "log_tail": log_tail(log),
    }
    root, run = Path(work_dir), rerun_dir(order)
    try:
        record = parse_record(
            json.loads(read_bounded(root, f"{run}/record.json", MAX_RECORD_BYTES)), where="record.json"
        )
    except ValueError as e:
        return ReproduceResult(**result, run_error=f"the re-run left no readable record: {e}")
    prov = record.provenance
    result |= {
        "run_status": record.status,
        "run_error": record.error,
        "submission_hash": record.submission.hash,
        "environment": prov.environment if prov else None,
    }
    if record.result is not None:
        result |= {"metric_value": record.result.value, "val_bpb": record.result.val_bpb, "core": record.result.core}
    try:
        events = _events(root, f"{run}/events.jsonl")
    except (ValueError, UnicodeDecodeError) as e:
        return ReproduceResult(**result, run_error=f"the re-run's events cannot be read: {str(e)[:500]}")
    steps = last_per_step(events)
    clock = clock_check(events) if steps else None
    saves = [e for e in events if isinstance(e, CheckpointEvent)]
    result |= {
        "steps": len(steps),
        "losses": [e.loss for e in steps],
        "train_time_s": timed_seconds(events),
        "clock_ok": clock.ok if clock else None,
        "clock_detail": clock.detail if clock else None,
    }
    if record.files.checkpoint and saves:
        try:
            result["weights_sha256"] = _sha256(root, f"{run}/{record.files.checkpoint}/model.safetensors")
        except ValueError as e:
            result["run_error"] = f"the re-run's final weights cannot be read: {e}"
    return ReproduceResult(**result)
