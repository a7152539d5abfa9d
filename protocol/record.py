"""The run's files between processes, typed: `run.json` (RunSpec) and `record.json` (RunRecord).

    from protocol.record import read_record, write_record, find_run
    record = read_record(find_run("20261201-...-s42"))      # a RunRecord: record.result.val_bpb, record.timing...

`run.json` is what the runner tells the training process to do; `record.json` is the one file that says
what a run was and what it got. Both are pydantic models with a schema version, written atomically and
read only through this module; a record is written when the run starts and rewritten when it ends, so a
crash or a kill still leaves one behind. The models forbid unknown keys and bound every number and
string: the leaderboard validates uploads with the same classes, so what a runner writes and what the
server accepts cannot drift apart.

Schema history: version 1 (untyped dicts, 2026-11) still loads: `read_record` upgrades it in memory
(`upgrade_v1`: the absolute submission path is dropped and its timing restated under the every-step
rule; the rest keeps its meaning).
"""

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

RECORD_FILE, SPEC_FILE = "record.json", "run.json"
RECORD_SCHEMA, SPEC_SCHEMA = 2, 1

# Statuses and the training process's exit codes: one table.
#   registered  made by `speedrun run --seeds N` before any of them starts (every seed counts)
#   running     started; completed / stopped (--max-steps) / diverged (a non-finite loss) when it ends
#   invalid     the run broke a rule of the contract (harness/guard.py) or its clocks disagree
#   failed / killed  a crash, or a signal (SIGINT, SIGTERM) that stopped it
#   preempted   a SIGTERM/SIGUSR1 notice (a cloud or SLURM taking the machine): saved at a step boundary,
#               `speedrun resume` continues it with the timer continuing
STATUSES = ("registered", "running", "completed", "stopped", "failed", "diverged", "killed", "invalid", "preempted")
# How a registered run ends without a result: reported to a board by its record.json alone, and a miss there.
MISS_STATUSES = ("failed", "killed", "diverged", "invalid", "stopped")
EXIT_OK, EXIT_DIVERGED, EXIT_INVALID = 0, 3, 4  # any other non-zero exit is "failed"

RUN_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
HEX64 = r"^[0-9a-f]{64}$"
Text = Annotated[str, Field(max_length=10_000)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Seconds = Annotated[float, Field(ge=0, le=1e9)]
Count = Annotated[int, Field(ge=0, le=10**12)]
Scalar = bool | int | float | str | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=False)


# ---------------------------------------------------------------------------------------- run.json


class RunSpec(_Strict):
    """What the training process runs (written by the runner, read by harness/trainer_process.py).

    Paths are relative to the run directory, so a run directory can move with what it points to.
    """

    schema_version: Literal[1] = SPEC_SCHEMA
    submission: str  # the submission's folder or .py file, relative to the run directory
    config: dict[str, Scalar]  # baseline.config.TrainConfig fields
    data_dir: str  # the training view: links to the train shards only (baseline.dataset.write_view)
    val_dir: str  # the eval's view: the val shards
    tokenizer_dir: str
    deny_reading: list[str] = []  # what the training process may not open: val and held-out shards, eval bundle
    device: Literal["cpu", "cuda"]
    max_steps: int | None = None
    target_metric: Literal["val_bpb", "core"] = "val_bpb"
    core_max_per_task: int = -1
    eval_bundle: str | None = None
    cpu_threads: int | None = None  # the track's; the harness sets the training process's threads to it
    price_per_hour: float = 0.0  # the track's, for the telemetry's cost
    gpu_count: int = 1
    checkpoint_every_s: float | None = None  # also save every so often (spot instances); None: at the end only
    resume: bool = False

    def path(self, run_dir: Path, field: str) -> Path:
        """An absolute path from one of the relative path fields."""
        return (Path(run_dir) / getattr(self, field)).resolve()

    def denied(self, run_dir: Path) -> list[Path]:
        return [(Path(run_dir) / p).resolve() for p in self.deny_reading]


def write_spec(run_dir: str | Path, spec: RunSpec) -> Path:
    return _write(Path(run_dir) / SPEC_FILE, spec)


def read_spec(run_dir: str | Path) -> RunSpec:
    path = Path(run_dir) / SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {SPEC_FILE}: pass a run directory made by `speedrun run`")
    return parse_model(RunSpec, json.loads(path.read_text()), path)


# ---------------------------------------------------------------------------------------- record.json


class SubmissionRef(_Strict):
    name: Name
    hash: str | None = Field(default=None, pattern=HEX64)  # protocol.hashing.folder_or_file_hash
    # closed: the baseline's model (frozen code loads the weights); open: the submission's own build_model
    # (its source, copied into the run and hashed above, is needed to load them): submissions/contract.py
    division: Literal["closed", "open"] = "closed"


class TrackRef(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    version: Annotated[int, Field(ge=1, le=10**6)]
    metric: Literal["val_bpb", "core"]
    threshold: float
    higher_is_better: bool
    kind: Literal["time_to_target", "budget"] = "time_to_target"
    budget_s: Annotated[float, Field(gt=0, le=1e7)] | None = None


class Clock(_Strict):
    """protocol.timing.clock_check: the trainer's step seconds against the runner's own stamps."""

    ok: bool
    runner_span_s: Seconds | None = None
    saves_s: Seconds = 0.0
    detail: Text


class Timing(_Strict):
    train_time_s: Seconds  # the timed seconds: Σ dt over every step (protocol/timing.py)
    nanochat_time_s: Seconds = 0.0  # Σ dt over steps > 10: nanochat's figure, for comparison
    warmup_time_s: Seconds = 0.0  # the throwaway warm-up process (compile caches), untimed
    setup_time_s: Seconds = 0.0
    eval_time_s: Seconds = 0.0
    checkpoint_time_s: Seconds = 0.0
    wall_time_s: Seconds = 0.0
    steps: Count  # optimizer steps taken
    num_iterations: Count  # the planned horizon
    clock: Clock | None = None


class Result(_Strict):
    metric: Literal["val_bpb", "core"]
    value: float | None = None
    val_bpb: float | None = None
    core: float | None = None
    target_met: bool | None = None


class Throughput(_Strict):
    tokens_per_s: Annotated[float, Field(ge=0, le=1e15)]
    mfu: Annotated[float, Field(ge=0, le=1e6)]


class TelemetrySummary(_Strict):
    """harness/telemetry.summarize over the timed steps (or `error` when it could not be made)."""

    backend: Literal["nvml", "cpu"] | None = None
    file: Annotated[str, Field(max_length=200)] | None = None
    error: Text | None = None
    t_start: float | None = None
    t_end: float | None = None
    duration_s: float | None = None
    n_samples: Count | None = None
    cpu_energy_j: float | None = None
    energy_j: float | None = None
    energy_source: Annotated[str, Field(max_length=100)] | None = None
    energy_kwh: float | None = None
    mean_power_w: float | None = None
    peak_power_w: float | None = None
    peak_memory_bytes: float | None = None
    mean_utilization_pct: float | None = None
    throttled_s: float | None = None
    peak_rss_bytes: float | None = None
    mean_cpu_percent: float | None = None
    mean_process_cpu_percent: float | None = None
    gpu_count: Count | None = None
    price_per_gpu_hour: float | None = None
    cost: float | None = None
    nvml_error: Text | None = None
    rapl_error: Text | None = None
    sampler_error: Text | None = None


class Gpu(_Strict):
    name: Annotated[str, Field(max_length=200)]
    memory_total_bytes: Count | None = None
    capability: Annotated[str, Field(max_length=20)] | None = None


class Environment(_Strict):
    python: Annotated[str, Field(max_length=50)] | None = None
    python_implementation: Annotated[str, Field(max_length=50)] | None = None
    torch: Annotated[str, Field(max_length=100)] | None = None
    cuda: Annotated[str, Field(max_length=50)] | None = None
    cudnn: int | None = None
    nccl: Annotated[str, Field(max_length=50)] | None = None
    driver: Annotated[str, Field(max_length=100)] | None = None
    driver_reason: Text | None = None
    packages: dict[Annotated[str, Field(max_length=100)], Annotated[str, Field(max_length=100)]] = {}
    platform: Annotated[str, Field(max_length=500)] | None = None
    hostname: Annotated[str, Field(max_length=255)] | None = None
    cpu_model: Annotated[str, Field(max_length=500)] | None = None
    cpu_count_logical: Count | None = None
    cpu_count_physical: Count | None = None
    cpu_count_available: Count | None = None
    memory_total_bytes: Count | None = None
    torch_num_threads: Count | None = None
    gpu_count: Annotated[int, Field(ge=0, le=100_000)] = 0
    gpus: Annotated[list[Gpu], Field(max_length=100_000)] = []
    attention: Literal["fa4", "fa3", "sdpa"] | None = None  # baseline.attention.backend for the run's device


class Git(_Strict):
    commit: Annotated[str, Field(max_length=64)] | None = None
    dirty: bool | None = None
    branch: Annotated[str, Field(max_length=500)] | None = None
    reason: Text | None = None


class DataRef(_Strict):
    fingerprint: str = Field(pattern=HEX64)
    num_files: Count
    bytes: Count


class Provenance(_Strict):
    code: dict[Annotated[str, Field(max_length=50)], Annotated[str, Field(pattern=HEX64)] | None]
    submission: SubmissionRef | None = None
    data: DataRef | None = None
    tokenizer: Annotated[str, Field(pattern=HEX64)] | None = None
    eval_bundle: Annotated[str, Field(pattern=HEX64)] | None = None
    git: Git = Git()
    environment: Environment = Environment()
    argv: Annotated[list[Annotated[str, Field(max_length=4096)]], Field(max_length=1000)] = []
    config: dict[str, Scalar] = {}
    seed: Annotated[int, Field(ge=0, lt=2**63)]


class Files(_Strict):
    """Paths relative to the run directory."""

    events: str = "events.jsonl"
    telemetry: str | None = "telemetry.jsonl"
    log: str | None = "train.log"
    checkpoint: Annotated[str, Field(max_length=500)] | None = None


class ChatTune(_Strict):
    """What a chat-tuned child run (harness/chat_tune.py) did to its parent's final weights (untimed)."""

    steps: Count
    batch_size: Count
    seq_len: Count
    lr_frac: float
    seed: Annotated[int, Field(ge=0, lt=2**63)]
    eval_conversations: Count
    data_sha256: str = Field(pattern=HEX64)  # of the train.jsonl it was tuned on
    parent_checkpoint: Annotated[str, Field(max_length=500)]  # relative to the parent's run directory
    val_loss_before: float | None = None  # mean assistant-token loss (nats) on the val conversations
    val_loss_after: float | None = None
    wall_time_s: Seconds | None = None


class Interruption(_Strict):
    """A launch that ended before the run did (preempted or killed), and what resuming it cost."""

    at: Annotated[str, Field(max_length=40)]
    status: Literal["preempted", "killed", "failed"]
    step: Count  # steps done when it stopped
    checkpoint_step: Count | None = None  # where a resume starts from (None: no checkpoint yet)
    timed_s: Seconds = 0.0  # the run's timed seconds when it stopped
    redone_steps: Count | None = None  # filled in by the resume: steps after the checkpoint, run again
    lost_s: Seconds | None = None  # their timed seconds, which the resumed run does not count twice


class RunRecord(_Strict):
    schema_version: Literal[2] = RECORD_SCHEMA
    run_id: str = Field(pattern=RUN_ID)
    status: Literal[STATUSES]
    official: bool = True
    unofficial_reasons: Annotated[list[Text], Field(max_length=100)] = []
    created: Annotated[str, Field(max_length=40)]
    finished: Annotated[str, Field(max_length=40)] | None = None
    command: Annotated[list[Annotated[str, Field(max_length=4096)]], Field(max_length=1000)] = []
    seed: Annotated[int, Field(ge=0, lt=2**63)]
    nproc: Annotated[int, Field(ge=1, le=100_000)] = 1
    resumed: Annotated[int, Field(ge=0, le=10_000)] = 0  # how many times
    interruptions: Annotated[list[Interruption], Field(max_length=10_000)] = []
    submission: SubmissionRef
    track: TrackRef
    config: dict[str, Scalar] | None = None  # the resolved TrainConfig
    plan: dict[str, Any] | None = None  # everything derived from it (baseline.config.TrainPlan.to_dict)
    timing: Timing | None = None
    result: Result | None = None
    throughput: Throughput | None = None
    telemetry: TelemetrySummary | None = None
    provenance: Provenance | None = None
    files: Files = Files()
    error: Text | None = None
    parent_run_id: str | None = Field(default=None, pattern=RUN_ID)  # a chat-tuned child's base run
    chat_tune: ChatTune | None = None

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


CAMPAIGNS_DIR = "campaigns"  # under a runs directory: one file per `speedrun run --seeds N`


class Campaign(_Strict):
    """The runs one `speedrun run` registered before any of them started: every one of them counts.

    Statistics and uploads of the campaign take all of them; a run that failed, diverged, was killed
    or never ran is a miss, never silently dropped (protocol/stats.py).
    """

    schema_version: Literal[1] = 1
    campaign_id: str = Field(pattern=RUN_ID)
    created: Annotated[str, Field(max_length=40)]
    track: TrackRef
    submission: SubmissionRef
    seeds: Annotated[list[Annotated[int, Field(ge=0, lt=2**63)]], Field(min_length=1, max_length=10_000)]
    run_ids: Annotated[list[Annotated[str, Field(pattern=RUN_ID)]], Field(min_length=1, max_length=10_000)]
    server: Annotated[str, Field(max_length=2000)] | None = None  # the leaderboard that issued the run ids
    launcher: Literal["local", "slurm", "sky"] = "local"
    jobs: dict[Annotated[str, Field(max_length=200)], Annotated[str, Field(max_length=200)]] = {}  # run id -> job


def write_campaign(runs_dir: str | Path, campaign: Campaign) -> Path:
    path = Path(runs_dir) / CAMPAIGNS_DIR / f"{campaign.campaign_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return _write(path, campaign)


def read_campaign(path: str | Path) -> Campaign:
    return parse_model(Campaign, json.loads(Path(path).read_text()), str(path))


def find_campaign(name: str | Path, runs_dir: str | Path = "runs") -> Path | None:
    """A campaign file from its path or id under runs_dir/campaigns (None if it is neither)."""
    for candidate in (Path(name), Path(runs_dir) / CAMPAIGNS_DIR / f"{name}.json"):
        if candidate.is_file() and candidate.suffix == ".json":
            return candidate
    return None


def find_campaigns_of(run_ids: list[str], runs_dir: str | Path = "runs") -> list[Path]:
    """The campaign files under runs_dir that registered any of `run_ids`."""
    wanted, found = set(run_ids), []
    for path in sorted((Path(runs_dir) / CAMPAIGNS_DIR).glob("*.json")):
        if wanted & set(read_campaign(path).run_ids):
            found.append(path)
    return found


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_record(run_dir: str | Path, record: RunRecord) -> Path:
    """Validated, then written atomically: a reader never sees half a record."""
    return _write(Path(run_dir) / RECORD_FILE, RunRecord.model_validate(record.model_dump()))


def read_record(run_dir: str | Path) -> RunRecord:
    path = Path(run_dir) / RECORD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {RECORD_FILE}: pass a run directory made by `speedrun run`")
    try:
        raw = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not JSON ({e}): the run's record is damaged") from e
    return parse_record(raw, where=str(path))


def parse_record(raw, *, where: str = "the record") -> RunRecord:
    """A RunRecord from its JSON object, upgrading schema 1; one-line ValueError if it does not fit."""
    if isinstance(raw, dict) and raw.get("schema_version") == 1:
        raw = upgrade_v1(raw)
    if not isinstance(raw, dict) or raw.get("schema_version") != RECORD_SCHEMA:
        version = raw.get("schema_version") if isinstance(raw, dict) else None
        raise ValueError(
            f"{where} has schema version {version}; this speedrun reads versions 1 and {RECORD_SCHEMA}: "
            "upgrade speedrun to read it"
        )
    return parse_model(RunRecord, raw, where)


def upgrade_v1(raw: dict) -> dict:
    """Schema 1 -> 2: the machine paths dropped, and the timing restated under the every-step rule.

    Version 1 timed steps > 10 (train_time_s) and kept steps 0..10 apart (warmup_time_s); version 2
    times every step and keeps the steps > 10 sum as nanochat_time_s.
    """
    out = dict(raw, schema_version=2)
    if isinstance(raw.get("timing"), dict):
        t = raw["timing"]
        out["timing"] = {k: v for k, v in t.items() if k != "warmup_time_s"} | {
            "train_time_s": (t.get("train_time_s") or 0.0) + (t.get("warmup_time_s") or 0.0),
            "nanochat_time_s": t.get("train_time_s") or 0.0,
        }
    out["submission"] = {k: raw["submission"].get(k) for k in ("name", "hash")}
    if isinstance(raw.get("provenance"), dict):
        prov = dict(raw["provenance"])
        if isinstance(prov.get("submission"), dict):
            prov["submission"] = {k: prov["submission"].get(k) for k in ("name", "hash")}
        out["provenance"] = prov
    return out


def find_run(run: str | Path, runs_dir: str | Path = "runs") -> Path:
    """A run directory from a path or a run id under runs_dir."""
    for candidate in (Path(run), Path(runs_dir) / str(run)):
        if (candidate / RECORD_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"no run {run!r} (looked for {RECORD_FILE} in {run} and {Path(runs_dir) / str(run)})")


def _write(path: Path, model: BaseModel) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(model.model_dump_json(indent=2))
    os.replace(tmp, path)
    return path


def parse_model(cls, raw, where: str):
    """`cls` (a pydantic model) from `raw`; a ValueError of one line naming `where`, the field and the problem."""
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        at = ".".join(map(str, first["loc"])) or "the top level"
        raise ValueError(f"{where} does not fit the {cls.__name__} schema at {at}: {first['msg']}") from e
