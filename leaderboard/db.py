"""The database: one engine per URL (SQLite file by default, PostgreSQL with psycopg) and Alembic upgrades.

    from leaderboard.db import get_engine, migrate
    migrate(url)                      # alembic upgrade head: what `speedrun serve` does at start-up
    with Session(get_engine(url)) as session: ...

The schema is owned by the migrations in leaderboard/migrations/versions (never `create_all`), so an
upgrade of a live database is the same code path the tests run, and never drops data.
"""

from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import create_engine

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
    from alembic.runtime.migration import MigrationContext

    with get_engine(url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
