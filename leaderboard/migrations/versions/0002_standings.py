"""Standings (per track and submission: the verified runs' statistics, so a board read is one query),
the hardware a run reports, and indexes for the newest-runs listings.

Existing runs keep every row: `hardware` is added nullable and back-filled by the next verification.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "standing",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("track_id", sa.Integer(), sa.ForeignKey("track.id"), nullable=False),
        sa.Column("submission_id", sa.Integer(), sa.ForeignKey("submission.id"), nullable=False),
        sa.Column("n_verified", sa.Integer(), nullable=False),
        sa.Column("n_pending", sa.Integer(), nullable=False),
        sa.Column("n_rejected", sa.Integer(), nullable=False),
        sa.Column("time_mean_s", sa.Float(), nullable=True),
        sa.Column("time_std_s", sa.Float(), nullable=True),
        sa.Column("metric_mean", sa.Float(), nullable=True),
        sa.Column("metric_std", sa.Float(), nullable=True),
        sa.Column("val_bpb_mean", sa.Float(), nullable=True),
        sa.Column("core_mean", sa.Float(), nullable=True),
        sa.Column("p_value", sa.Float(), nullable=True),
        sa.Column("p_value_reason", sa.String(), nullable=True),
        sa.Column("qualifies", sa.Boolean(), nullable=False),
        sa.Column("energy_kwh_mean", sa.Float(), nullable=True),
        sa.Column("cost_mean", sa.Float(), nullable=True),
        sa.Column("mfu_mean", sa.Float(), nullable=True),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("track_id", "submission_id"),
    )
    op.create_index("ix_standing_track_id", "standing", ["track_id"])
    op.create_index("ix_standing_submission_id", "standing", ["submission_id"])
    with op.batch_alter_table("run") as batch:  # SQLite: copy-and-rename, rows included
        batch.add_column(sa.Column("hardware", sa.String(), nullable=True))
        batch.create_index("ix_run_uploaded_at", ["uploaded_at"])
        batch.create_index("ix_run_track_uploaded", ["track_id", "uploaded_at"])


def downgrade() -> None:
    with op.batch_alter_table("run") as batch:
        batch.drop_index("ix_run_track_uploaded")
        batch.drop_index("ix_run_uploaded_at")
        batch.drop_column("hardware")
    op.drop_table("standing")
