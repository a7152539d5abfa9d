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

REPO = Path(__file__).resolve().parents[1]


class TrackResources(BaseModel):
    data_dir: Path | None = None  # pretraining shards; the last one is the val split
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
    max_file_bytes: dict[str, int] = {  # per bundle member; model.safetensors is bounded by the request
        "record.json": 8 * 1024**2,
        "meta.json": 64 * 1024**2,
        "events.jsonl": 256 * 1024**2,
        "telemetry.jsonl": 256 * 1024**2,
        "train.log": 256 * 1024**2,
    }

    bpb_abs_tolerance: float = 2e-3  # |claimed - recomputed| val bpb (bf16 GPU vs the verifier's device)
    core_abs_tolerance: float = 2e-3
    time_rel_tolerance: float = 1e-6  # the claimed train_time_s is Σ dt_s of the same floats
    time_abs_tolerance_s: float = 1e-3
    verify_device: str = "cpu"
    claim_lease_s: float = 3600.0  # a claimed job whose worker died is taken again after this
    retry_after_s: float = 300.0  # a job the server could not check (missing data) is retried after this
    cache_ttl_s: float = 2.0  # board/leaderboard reads are cached this long (a verification clears it)


@lru_cache
def get_settings() -> Settings:
    return Settings()


def database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    settings.storage_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{settings.storage_dir / 'leaderboard.db'}"
