"""Migrations: the models equal what the migrations build, and upgrading a database with data keeps it."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlmodel import SQLModel

import leaderboard.models  # noqa: F401 -- the tables
from leaderboard.db import current_revision, get_engine, migrate
from tests.test_leaderboard_api import db_url  # noqa: F401 -- shared fixture

ROWS = [
    "INSERT INTO submitter (id, name, is_admin, created_at) VALUES (1, 'alice', false, '2026-01-01 00:00:00+00')",
    "INSERT INTO track (id, name, version, description, provisional, metric, threshold, higher_is_better,"
    " hardware_kind, gpu_count, price_per_hour, data_hash)"
    " VALUES (1, 'old', 1, '', true, 'val_bpb', 1.0, false, 'cpu', 0, 0.1, '')",
    "INSERT INTO submission (id, submitter_id, name, code_hash, description, link, created_at)"
    " VALUES (1, 1, 'sub', '', 'kept', '', '2026-01-01 00:00:00+00')",
    "INSERT INTO run (id, run_id, bundle_sha256, track_id, submission_id, submitter_id, seed, status, official,"
    " train_time_s, metric, uploaded_at, record) VALUES (1, 'old-run', 'abc', 1, 1, 1, 7, 'completed', true, 12.5,"
    " 'val_bpb', '2026-01-01 00:00:00+00', '{\"run_id\": \"old-run\"}')",
    "INSERT INTO verification (id, run_pk, status, attempts, reasons) VALUES (1, 1, 'verified', 1, '[]')",
]


def test_the_models_are_what_the_migrations_build(db_url):  # noqa: F811
    migrate(db_url)
    with get_engine(db_url).connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), SQLModel.metadata)
    assert diff == []


def test_upgrading_a_database_with_data_keeps_the_data(db_url):  # noqa: F811
    migrate(db_url, "0001")
    engine = get_engine(db_url)
    with engine.begin() as c:
        for row in ROWS:
            c.execute(text(row))
    migrate(db_url)  # 0001 -> head: on SQLite, `run` is copied into a new table with the new column
    migrate(db_url)  # start-up on a database already at head is a no-op
    assert current_revision(db_url) == "0005"
    with engine.connect() as c:
        run = c.execute(text("SELECT run_id, seed, train_time_s, hardware, record FROM run")).one()
        assert run[:4] == ("old-run", 7, 12.5, None)
        assert "old-run" in str(run[4])
        assert c.execute(text("SELECT description, division FROM submission")).one() == ("kept", "closed")  # 0005
        assert c.execute(text("SELECT status FROM verification WHERE run_pk = 1")).scalar_one() == "verified"
        assert c.execute(text("SELECT name, is_runner FROM submitter")).one() == ("alice", False)  # 0004: no runner
        assert c.execute(text("SELECT count(*) FROM reproduction")).scalar_one() == 0  # nothing re-run by itself
    assert {"standing", "reproduction", "runner"} <= set(inspect(engine).get_table_names())
