"""The leaderboard's tables and the shapes its API returns (the FastAPI template's Base / table / Public split).

Tables: TrackRow (a protocol track as the server knows it), Submitter + ApiToken (tokens only as sha256),
Submission (name, code hash, description, link), Run (the fields the board needs, the raw record and
the bounded summary its page draws), Verification + Check (status and each check's outcome and
evidence), Standing (per track and submission: the verified runs' statistics and the significance
test), RecordEntry (the record progression per track), Registration (run ids issued before the
runs, so every seed counts), Reproduction (a verified run re-run in a sandbox and compared with its
claim) and Runner (a machine that takes reproduction jobs over the API). Times are aware UTC datetimes
(`utcnow()`); SQLModel stores them as UTC.
"""

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict
from pydantic import Field as PydanticField
from sqlalchemy import JSON, BigInteger, Column, Index, Integer, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from protocol.reproduce import Machine

CHECK_OUTCOMES = ("pass", "fail", "skip", "error", "flag")  # error: the server could not run it (retried); flag: review
# pending -> verified | rejected; "error" after Settings.max_attempts tries the server could not finish (an
# admin looks; reverify queues it again); "missed" is a registered run reported failed/killed/diverged.
VERIFICATION_STATUSES = ("pending", "verified", "rejected", "error", "missed")
# pending (queued, or claimed: claimed_by and claimed_at say by whom) -> reproduced | disputed (the re-run differs
# from the claim: evidence side by side; the submission is held out of the ranking) | error (could not be re-run
# after Settings.max_attempts; an admin may queue it again)
REPRODUCTION_STATUSES = ("pending", "reproduced", "disputed", "error")


def utcnow() -> datetime:
    return datetime.now(UTC)


# 64-bit integers (seeds reach 2**63); SQLite's INTEGER already is, and keeps its declared type.
Int64 = BigInteger().with_variant(Integer(), "sqlite")


def _json(**kw) -> Any:
    return Field(default=None, sa_column=Column(JSON, nullable=True), **kw)


# ------------------------------------------------------------------ tracks


class TrackBase(SQLModel):
    name: str = Field(index=True, unique=True, max_length=100)
    version: int
    description: str = ""
    provisional: bool = True
    metric: str = Field(max_length=20)  # "val_bpb" or "core"
    threshold: float
    higher_is_better: bool
    hardware_kind: str = Field(max_length=10)  # "cpu" or "cuda"
    gpu_model: str | None = None
    gpu_count: int = 0
    cpu_threads: int | None = None
    price_per_hour: float = 0.0
    data_hash: str = ""  # the track's pinned dataset content hash ("" = not pinned)


class TrackRow(TrackBase, table=True):
    __tablename__ = "track"  # the row of a protocol.tracks.Track
    id: int | None = Field(default=None, primary_key=True)
    spec: dict | None = _json()  # protocol.tracks.Track.to_dict()


class TrackPublic(TrackBase):
    id: int
    hardware: str = ""


# ------------------------------------------------------------------ submitters and tokens


class Submitter(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=100)
    is_admin: bool = False
    is_runner: bool = False  # a runner machine's account: may take reproduction jobs (routers/runners.py)
    created_at: datetime = Field(default_factory=utcnow)


class ApiToken(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    submitter_id: int = Field(foreign_key="submitter.id", index=True)
    token_sha256: str = Field(unique=True, index=True, max_length=64)  # never the token itself
    created_at: datetime = Field(default_factory=utcnow)
    revoked: bool = False
    expires_at: datetime | None = None  # None: tokens made before expiry existed (revoke them to retire them)


class SubmitterPublic(SQLModel):
    id: int
    name: str
    is_admin: bool


class TokenCreate(BaseModel):
    name: str = PydanticField(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.@-]+$")
    admin: bool = False
    runner: bool = False


class TokenCreated(SQLModel):
    name: str
    admin: bool
    token: str  # shown once; the server keeps only its sha256
    expires_at: datetime | None = None


class TokensRevoked(SQLModel):
    name: str
    revoked: int  # how many live tokens were revoked


# ------------------------------------------------------------------ submissions


class SubmissionBase(SQLModel):
    name: str = Field(max_length=200)
    code_hash: str = Field(default="", max_length=64)  # "" for the frozen baseline (no code of its own)
    division: str = Field(default="closed", max_length=10)  # protocol.record.DIVISIONS: fixed by the code (its hash)
    description: str = ""
    link: str = ""


class Submission(SubmissionBase, table=True):
    __table_args__ = (UniqueConstraint("submitter_id", "name", "code_hash"),)
    id: int | None = Field(default=None, primary_key=True)
    submitter_id: int = Field(foreign_key="submitter.id", index=True)
    created_at: datetime = Field(default_factory=utcnow)


class SubmissionPublic(SubmissionBase):
    id: int
    submitter: str
    created_at: datetime
    n_runs: int = 0


# ------------------------------------------------------------------ runs


class RunBase(SQLModel):
    run_id: str = Field(index=True, unique=True, max_length=200)
    seed: int | None = Field(default=None, sa_type=Int64)  # < 2**63 (protocol.record)
    status: str = Field(max_length=20)  # the record's status (protocol.record.STATUSES)
    official: bool = True
    created: str | None = None  # as the record says (ISO 8601)
    finished: str | None = None
    train_time_s: float | None = None  # claimed
    steps: int | None = Field(default=None, sa_type=Int64)
    metric: str = ""
    metric_value: float | None = None  # claimed
    val_bpb: float | None = None  # claimed
    core: float | None = None  # claimed
    target_met: bool | None = None  # claimed
    tokens_per_s: float | None = None
    mfu: float | None = None
    energy_kwh: float | None = None
    cost_usd: float | None = None
    hardware: str | None = None  # the track's hardware when the run's provenance shows it, else what it shows
    track_version: int | None = None  # the track version the run was made for (older ones are superseded)


class Run(RunBase, table=True):
    __table_args__ = (Index("ix_run_track_uploaded", "track_id", "uploaded_at"),)  # a track's newest runs
    id: int | None = Field(default=None, primary_key=True)
    bundle_sha256: str = Field(index=True, max_length=64)
    # protocol.bundle.weights_sha256: one model, one run (None: a registered miss reported without weights)
    weights_sha256: str | None = Field(default=None, unique=True, index=True, max_length=64)
    track_id: int = Field(foreign_key="track.id", index=True)
    submission_id: int = Field(foreign_key="submission.id", index=True)
    submitter_id: int = Field(foreign_key="submitter.id", index=True)
    uploaded_at: datetime = Field(default_factory=utcnow, index=True)
    files: dict | None = _json()  # bundle member -> {"size", "sha256"}
    record: dict | None = _json()  # the raw record.json
    summary: dict | None = _json()  # leaderboard.summary: the bounded series a run page draws, made at upload
    detail: str | None = Field(default=None, sa_type=Text)  # RunDetail's JSON, rebuilt on every change to the run


class CheckPublic(SQLModel):
    name: str
    outcome: str
    detail: str
    evidence: dict | None = None


class VerificationPublic(SQLModel):
    status: str
    reasons: list[str] = []
    attempts: int = 0
    error: str | None = None
    recomputed_val_bpb: float | None = None
    recomputed_core: float | None = None
    recomputed_train_time_s: float | None = None
    recomputed_heldout_bpb: float | None = None
    flag: str | None = None
    flag_cleared_by: str | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None


class RunPublic(RunBase):
    track: str
    submission: str
    submission_id: int
    submitter: str
    uploaded_at: datetime
    verification: str  # VERIFICATION_STATUSES
    superseded: bool = False  # made for an older version of the track: shown, never ranked
    reproduction: str | None = None  # REPRODUCTION_STATUSES; None: not chosen for a re-run


class ReproductionPublic(SQLModel):
    status: str
    attempts: int = 0
    claimed_by: str | None = None
    claimed_at: datetime | None = None
    progress: str | None = None
    queued_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None
    error: str | None = None
    reasons: list[str] = []
    time_ratio: float | None = None
    reproduced_by: str | None = None
    evidence: dict | None = None  # leaderboard/comparison.py: the claim and the re-run side by side
    queue_position: int | None = None  # live reads only (GET /api/runs/{run_id}/reproduction, the run page)


class RunDetail(RunPublic):
    bundle_sha256: str
    files: dict
    record: dict
    verification_detail: VerificationPublic
    checks: list[CheckPublic]
    reproduction_detail: ReproductionPublic | None = None


# ------------------------------------------------------------------ verification


class Verification(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    run_pk: int = Field(foreign_key="run.id", unique=True, index=True)
    status: str = Field(default="pending", index=True, max_length=20)
    attempts: int = 0
    claimed_by: str | None = None
    claimed_at: datetime | None = None
    not_before: datetime | None = None  # a retry waits until then
    finished_at: datetime | None = None
    duration_s: float | None = None
    reasons: list | None = _json()  # every failed check's one-line reason
    error: str | None = None  # why the server could not finish checking (the job stays pending)
    recomputed_val_bpb: float | None = None
    recomputed_core: float | None = None
    recomputed_train_time_s: float | None = None
    recomputed_heldout_bpb: float | None = None  # the same model on the server's held-out shards
    flag: str | None = None  # why an admin must review the run before it ranks (held-out gap)
    flag_cleared_by: str | None = None  # the admin who cleared the flag


class Check(SQLModel, table=True):
    __tablename__ = "verification_check"  # CHECK is an SQL keyword
    id: int | None = Field(default=None, primary_key=True)
    verification_id: int = Field(foreign_key="verification.id", index=True)
    name: str = Field(max_length=50)
    outcome: str = Field(max_length=10)  # CHECK_OUTCOMES
    detail: str = ""
    evidence: dict | None = _json()


# ------------------------------------------------------------------ reproduction


class Reproduction(SQLModel, table=True):
    """A verified run chosen to be re-run (leaderboard/reproduction.py): a job of the verify workers' queue, or of a
    runner machine's, and once done the comparison with the claim."""

    id: int | None = Field(default=None, primary_key=True)
    run_pk: int = Field(foreign_key="run.id", unique=True, index=True)
    status: str = Field(default="pending", index=True, max_length=20)  # REPRODUCTION_STATUSES
    attempts: int = 0
    claimed_by: str | None = None  # a worker id, or "runner:<id>"
    claimed_at: datetime | None = None  # the lease: renewed while the re-run runs
    not_before: datetime | None = None
    queued_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    duration_s: float | None = None
    progress: str | None = None
    error: str | None = None  # why the last attempt could not re-run it
    reasons: list | None = _json()  # why it is disputed, one line each
    evidence: dict | None = _json()
    time_ratio: float | None = None  # reproduced timed seconds / claimed
    reproduced_by: str | None = None  # the machine, as the board shows it
    result: dict | None = _json()  # the protocol.reproduce.ReproduceResult the comparison read


class Runner(SQLModel, table=True):
    """A runner machine (`speedrun runner`): its account and the hardware it registered."""

    id: int | None = Field(default=None, primary_key=True)
    submitter_id: int = Field(foreign_key="submitter.id", index=True)
    name: str = Field(max_length=100)
    machine: dict | None = _json()  # protocol.reproduce.Machine
    registered_at: datetime = Field(default_factory=utcnow)
    last_seen_at: datetime = Field(default_factory=utcnow)


class RunnerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = PydanticField(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.@:-]+$")
    machine: Machine


class RunnerRegistered(SQLModel):
    runner_id: int
    name: str


class Heartbeat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    progress: str | None = PydanticField(default=None, max_length=200)


# ------------------------------------------------------------------ standings and records


class StandingBase(SQLModel):
    n_verified: int = 0  # verified runs counted by the significance test
    n_pending: int = 0
    n_rejected: int = 0
    n_registered: int = 0  # runs registered before they were run (POST /api/registrations)
    n_missed: int = 0  # registered runs that never arrived or did not complete: any miss unranks
    n_reproduced: int = 0  # counted runs whose re-run matched the claim
    n_disputed: int = 0  # runs whose re-run did not: any dispute unranks
    n_reproduce_needed: int = 0  # reproduced runs it takes to rank (tracks the server re-runs)
    time_mean_s: float | None = None
    time_std_s: float | None = None
    metric_mean: float | None = None
    metric_std: float | None = None
    val_bpb_mean: float | None = None
    core_mean: float | None = None
    p_value: float | None = None
    p_value_reason: str | None = None
    qualifies: bool = False  # verified runs meet the target with p < RECORD_P_VALUE
    energy_kwh_mean: float | None = None
    cost_mean: float | None = None
    mfu_mean: float | None = None
    last_run_at: datetime | None = None


class Standing(StandingBase, table=True):
    __table_args__ = (UniqueConstraint("track_id", "submission_id"),)
    id: int | None = Field(default=None, primary_key=True)
    track_id: int = Field(foreign_key="track.id", index=True)
    submission_id: int = Field(foreign_key="submission.id", index=True)
    updated_at: datetime = Field(default_factory=utcnow)


class StandingPublic(StandingBase):
    rank: int | None  # None: not ranked (not verified, target not met or p too high); within its division
    submission_id: int
    submission: str
    division: str
    submitter: str
    why_unranked: str | None = None


class RecordEntry(SQLModel, table=True):
    __tablename__ = "record_entry"
    id: int | None = Field(default=None, primary_key=True)
    track_id: int = Field(foreign_key="track.id", index=True)
    submission_id: int = Field(foreign_key="submission.id")
    time_mean_s: float
    time_std_s: float | None = None
    n: int
    metric_mean: float | None = None
    p_value: float | None = None
    previous_time_s: float | None = None
    set_at: datetime = Field(default_factory=utcnow)


class RecordPublic(SQLModel):
    submission_id: int
    submission: str
    division: str
    submitter: str
    time_mean_s: float
    time_std_s: float | None
    n: int
    metric_mean: float | None
    p_value: float | None
    previous_time_s: float | None
    set_at: datetime


# ------------------------------------------------------------------ registrations (every seed counted)


class Registration(SQLModel, table=True):
    """A run id the server issued before the run: the upload must match it, and a miss is counted."""

    __table_args__ = (UniqueConstraint("submitter_id", "track_id", "submission_name", "seed"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(unique=True, index=True, max_length=200)
    submitter_id: int = Field(foreign_key="submitter.id", index=True)
    track_id: int = Field(foreign_key="track.id", index=True)
    track_version: int
    submission_name: str = Field(max_length=200)
    seed: int = Field(sa_type=Int64)
    created_at: datetime = Field(default_factory=utcnow)
    deadline: datetime  # not uploaded by then: a miss


class RegistrationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    track: str = PydanticField(min_length=1, max_length=100)
    submission: str = PydanticField(min_length=1, max_length=200)
    seeds: list[Annotated[int, PydanticField(ge=0, lt=2**63)]] = PydanticField(min_length=1, max_length=100)


class RegisteredRun(SQLModel):
    run_id: str
    seed: int
    deadline: datetime


class RegistrationCreated(SQLModel):
    track: str
    track_version: int
    submission: str
    campaign_id: str  # every run id is CAMPAIGN-sSEED: the runner names its campaign so
    runs: list[RegisteredRun]
