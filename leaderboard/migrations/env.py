"""Alembic environment: runs online against the connection `leaderboard.db.migrate` hands over."""

from alembic import context
from sqlalchemy import create_engine
from sqlmodel import SQLModel

import leaderboard.models  # noqa: F401 -- registers the tables on SQLModel.metadata

config = context.config
target_metadata = SQLModel.metadata


def run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters a table by copying it
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:  # the alembic command line: `alembic -x ...` with sqlalchemy.url set
    with create_engine(config.get_main_option("sqlalchemy.url")).connect() as conn:
        run(conn)
        conn.commit()
