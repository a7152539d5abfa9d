"""Divisions: each submission is in the closed or the open division, ranked and holding records on its own.

- submission: `division` ("closed" or "open"), fixed by its code; existing submissions take the division
  their runs' records name (closed where none says open).
Every existing row is kept.

Revision ID: 0005
Revises: 0004
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("submission") as batch:
        batch.add_column(sa.Column("division", sa.String(10), nullable=False, server_default="closed"))
    bind = op.get_bind()
    open_ids = set()
    for submission_id, record in bind.execute(sa.text("SELECT submission_id, record FROM run")):
        record = json.loads(record) if isinstance(record, str) else record or {}
        if (record.get("submission") or {}).get("division") == "open":
            open_ids.add(submission_id)
    for submission_id in open_ids:
        bind.execute(sa.text("UPDATE submission SET division = 'open' WHERE id = :id"), {"id": submission_id})


def downgrade() -> None:
    with op.batch_alter_table("submission") as batch:
        batch.drop_column("division")
