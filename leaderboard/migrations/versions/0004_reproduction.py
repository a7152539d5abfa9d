"""Reproduction: re-runs of verified runs in a sandbox, runner machines, and what the board counts of them.

- reproduction: one job per chosen run (queue, lease, progress) and, once done, the comparison with the claim.
- runner: a runner machine (`speedrun runner`) and the hardware it registered.
- submitter: `is_runner` (a runner machine's account; existing submitters are not runners).
- standing: reproduced and disputed runs, and how many must be reproduced to rank.
Every existing row is kept.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Time = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "reproduction",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_pk", sa.Integer(), sa.ForeignKey("run.id"), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.String(), nullable=True),
        sa.Column("claimed_at", Time, nullable=True),
        sa.Column("not_before", Time, nullable=True),
        sa.Column("queued_at", Time, nullable=False),
        sa.Column("finished_at", Time, nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("progress", sa.String(), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("reasons", sa.JSON(), nullable=True),
        sa.Column("evidence", sa.JSON(), nullable=True),
        sa.Column("time_ratio", sa.Float(), nullable=True),
        sa.Column("reproduced_by", sa.String(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
    )
    op.create_index("ix_reproduction_run_pk", "reproduction", ["run_pk"], unique=True)
    op.create_index("ix_reproduction_status", "reproduction", ["status"])
    op.create_table(
        "runner",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("submitter_id", sa.Integer(), sa.ForeignKey("submitter.id"), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("machine", sa.JSON(), nullable=True),
        sa.Column("registered_at", Time, nullable=False),
        sa.Column("last_seen_at", Time, nullable=False),
    )
    op.create_index("ix_runner_submitter_id", "runner", ["submitter_id"])
    with op.batch_alter_table("submitter") as batch:
        batch.add_column(sa.Column("is_runner", sa.Boolean(), nullable=False, server_default="0"))
    with op.batch_alter_table("standing") as batch:
        batch.add_column(sa.Column("n_reproduced", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("n_disputed", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("n_reproduce_needed", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("standing") as batch:
        batch.drop_column("n_reproduce_needed")
        batch.drop_column("n_disputed")
        batch.drop_column("n_reproduced")
    with op.batch_alter_table("submitter") as batch:
        batch.drop_column("is_runner")
    op.drop_table("runner")
    op.drop_table("reproduction")
