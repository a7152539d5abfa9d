"""Leaderboard settings: one `Settings(BaseSettings)`, read once from the environment (prefix `LEADERBOARD_`).

    LEADERBOARD_DATABASE_URL=postgresql+psycopg://user:pw@127.0.0.1/speedrun speedrun serve
    DATABASE_URL is read too (the usual name); the default is a SQLite file under the storage dir.

Per-track verification resources (the server's own copies of the val data, tokenizer and CORE bundle)
are a JSON object in LEADERBOARD_TRACK_RESOURCES:
    {"cpu-books": {"data_dir": "DIR", "tokenizer_dir": "DIR", "eval_bundle": null}}
A track without an entry falls back to where this machine keeps them (protocol/paths.py), see
leaderboard/resources.py.
"""

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from protocol.paths import leaderboard_dir
from protocol.source import MAX_ARCHIVE_BYTES, SOURCE_FILE

REPO = Path(__file__).resolve().parents[1]


class TrackResources(BaseModel):
    data_dir: Path | None = None  # pretraining shards; the last one is the val split
    heldout_dir: Path | None = None  # the track's held-out shards (Dataset.heldout_shards); default: data_dir
    heldout_gap_bpb: float | None = None  # this track's flag threshold (default: Settings.heldout_gap_bpb)
    tokenizer_dir: Path | None = None
    eval_bundle: Path | None = None  # CORE bundle, for tracks judged by CORE


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEADERBOARD_", extra="ignore")

    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("LEADERBOARD_DATABASE_URL", "DATABASE_URL")
    )
    storage_dir: Path = Field(default_factory=leaderboard_dir)  # bundles live under storage_dir/bundles/<sha256>/
    repo_root: Path = REPO  # whose frozen code hashes a run must match
    track_files: list[Path] = []  # extra track .toml files beside protocol/tracks/*.toml
    track_resources: dict[str, TrackResources] = {}
    frozen_packages: tuple[str, ...] = ("baseline", "eval")  # code a run must not have changed

    max_upload_bytes: int = 4 * 1024**3  # a whole request; a d24 model in fp32 is ~6 GB, in bf16 ~3 GB
    max_body_bytes: int = 64 * 1024  # any other request body (tokens, registrations, admin), before it is read
    max_chat_body_bytes: int = 256 * 1024  # a chat request (the prompt's characters are capped again after)
    max_result_bytes: int = 32 * 1024**2  # a runner's reproduction result: one loss per step (~1M steps)
    max_expansion_ratio: float = 20.0  # a .tar.gz may unpack to this many times its size (JSON lines: ~5-10x)
    max_file_bytes: dict[str, int] = {  # per bundle member; model.safetensors is bounded by the request
        "record.json": 8 * 1024**2,
        "meta.json": 64 * 1024**2,
        "events.jsonl": 256 * 1024**2,
        "telemetry.jsonl": 256 * 1024**2,
        "train.log": 256 * 1024**2,
        SOURCE_FILE: MAX_ARCHIVE_BYTES,  # the submission's text files (protocol/source.py bounds them again)
    }

    bpb_abs_tolerance: float = 2e-3  # |claimed - recomputed| val bpb (bf16 GPU vs the verifier's device)
    core_abs_tolerance: float = 2e-3
    time_rel_tolerance: float = 1e-6  # the claimed train_time_s is Σ dt_s of the same floats
    time_abs_tolerance_s: float = 1e-3
    verify_device: str = "cpu"
    claim_lease_s: float = 600.0  # a claimed job whose worker died is taken again after this (renewed while it runs)
    retry_after_s: float = 300.0  # a job the server could not check (missing data) is retried after this
    max_attempts: int = 3  # then the run ends "error" for an admin (`reverify` queues it again)
    # The verification child (leaderboard/isolation.py): limits a hostile bundle cannot get past.
    verify_memory_bytes: int = 16 * 1024**3  # RLIMIT_DATA: heap and anonymous mappings (torch's tensors)
    verify_cpu_s: int = 4 * 3600  # RLIMIT_CPU
    verify_wall_s: float = 3600.0  # killed after this, whatever it is doing
    verify_file_bytes: int = 64 * 1024**2  # RLIMIT_FSIZE: the child writes nothing but its answer
    verify_threads: int | None = 1  # torch threads of a CPU verification (None: every core); it runs niced
    # Held-out scoring (trust issue #11): a model whose held-out bpb exceeds its val bpb by more than this is
    # flagged for an admin's review before it ranks. A fixed gap, not 3x the seed σ: the seed σ measures how runs
    # differ (cpu-books: 0.059, so 3σ = 0.18 would let a model that learned much of the val shard through), while
    # an honest model's gap is a property of the two shards and the eval budget, the same for every honest run.
    # Measure it per track and set TrackResources.heldout_gap_bpb above it: the golden model at 4096 tokens scores
    # shard 2 0.031 and shard 0 0.019 above the val shard, but shard 3 0.34 (another book), so pin a close shard.
    heldout_gap_bpb: float = 0.05
    # Reproduction (leaderboard/reproduction.py): re-runs of verified runs in the sandbox, on tracks that opt in.
    reproduce_locally: bool = True  # the verify workers re-run `by = "server"` tracks (needs bubblewrap)
    reproduce_work_dir: Path | None = None  # where re-runs work (None: the system's temporary directory)
    reproduce_memory_bytes: int = 16 * 1024**3  # the sandbox's memory limit (its wall time is the track's)
    reproduce_disk_bytes: int = 10 * 1024**3  # the sandbox's disk limit under its work dir
    runner_lease_s: float = 600.0  # a runner machine that has not renewed its job's lease by then loses it
    # Registrations (every seed counted): a registered run not uploaded within this many hours is a miss.
    registration_hours: float = 72.0
    # Accounts.
    token_ttl_days: float = 90.0  # a new token expires after this
    rate_limit_per_ip: str = "600/minute"  # every request (limits' notation), per client address
    rate_limit_per_token: str = "120/minute"  # authenticated requests, per token
    rate_limit_auth_failures: str = "20/minute"  # 401s per client address: token guessing stops here
    trusted_proxies: tuple[str, ...] = ()  # only these may set X-Forwarded-For
    sweep_after_s: float = 6 * 3600.0  # staging dirs and unreferenced bundles older than this go at start-up
    cache_ttl_s: float = 2.0  # board pages are rebuilt at most this often (a write in this process clears them)


@lru_cache
def get_settings() -> Settings:
    return Settings()


def database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    settings.storage_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{settings.storage_dir / 'leaderboard.db'}"
