"""The database: one engine per URL (SQLite file by default, PostgreSQL with psycopg) and Alembic upgrades.

    from leaderboard.db import prepare_database
    engine = prepare_database(settings)    # alembic upgrade head + sync the tracks: what every entry point does
    with Session(engine) as session: ...

The schema is owned by the migrations in leaderboard/migrations/versions (never `create_all`), so an
upgrade of a live database is the same code path the tests run, and never drops data.
"""

from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine

from leaderboard import crud, ranking
from leaderboard.settings import Settings, database_url

MIGRATIONS = Path(__file__).parent / "migrations"
THREADS = 40  # anyio's default worker threads for sync endpoints: at most this many sessions at once


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    if is_sqlite(url):
        # check_same_thread: FastAPI runs sync endpoints on a thread pool; SQLite serialises writers itself.
        # One connection per worker thread (anyio's pool has 40): a smaller pool makes requests queue for a
        # connection under load and time out as 500s.
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=THREADS, max_overflow=10
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record):
            cur = dbapi_connection.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")  # readers never wait for the worker's writes
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=20, max_overflow=THREADS)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str, revision: str = "head") -> None:
    """Upgrade the database at `url` to `revision` (creating it from nothing if new)."""
    cfg = alembic_config(url)
    with get_engine(url).begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


def current_revision(url: str) -> str | None:
    with get_engine(url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def prepare_database(settings: Settings) -> Engine:
    """Upgrade the schema to head (an upgrade never drops data) and sync the tracks; returns the engine.

    A track whose version changed has its standings recomputed: its older runs are superseded."""
    url = database_url(settings)
    migrate(url)
    engine = get_engine(url)
    with Session(engine) as session:
        for track in crud.sync_tracks(session, specs=crud.track_specs(settings.track_files)):
            ranking.refresh_track(session, track=track)
    return engine
