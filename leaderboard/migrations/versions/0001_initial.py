"""Initial schema: tracks, submitters and their token hashes, submissions, runs, verifications and checks, records.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Time = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "submitter",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", Time, nullable=False),
    )
    op.create_index("ix_submitter_name", "submitter", ["name"], unique=True)

    op.create_table(
        "track",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("description", sa.String(), nullable=False),
        sa.Column("provisional", sa.Boolean(), nullable=False),
        sa.Column("metric", sa.String(20), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("higher_is_better", sa.Boolean(), nullable=False),
        sa.Column("hardware_kind", sa.String(10), nullable=False),
        sa.Column("gpu_model", sa.String(), nullable=True),
        sa.Column("gpu_count", sa.Integer(), nullable=False),
        sa.Column("cpu_threads", sa.Integer(), nullable=True),
        sa.Column("price_per_hour", sa.Float(), nullable=False),
        sa.Column("data_hash", sa.String(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=True),
    )
    op.create_index("ix_track_name", "track", ["name"], unique=True)

    op.create_table(
        "apitoken",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("submitter_id", sa.Integer(), sa.ForeignKey("submitter.id"), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_apitoken_submitter_id", "apitoken", ["submitter_id"])
    op.create_index("ix_apitoken_token_sha256", "apitoken", ["token_sha256"], unique=True)

    op.create_table(
        "submission",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("submitter_id", sa.Integer(), sa.ForeignKey("submitter.id"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("description", sa.String(), nullable=False),
        sa.Column("link", sa.String(), nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.UniqueConstraint("submitter_id", "name", "code_hash"),
    )
    op.create_index("ix_submission_submitter_id", "submission", ["submitter_id"])

    op.create_table(
        "run",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.String(200), nullable=False),
        sa.Column("bundle_sha256", sa.String(64), nullable=False),
        sa.Column("track_id", sa.Integer(), sa.ForeignKey("track.id"), nullable=False),
        sa.Column("submission_id", sa.Integer(), sa.ForeignKey("submission.id"), nullable=False),
        sa.Column("submitter_id", sa.Integer(), sa.ForeignKey("submitter.id"), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("official", sa.Boolean(), nullable=False),
        sa.Column("created", sa.String(), nullable=True),
        sa.Column("finished", sa.String(), nullable=True),
        sa.Column("train_time_s", sa.Float(), nullable=True),
        sa.Column("steps", sa.Integer(), nullable=True),
        sa.Column("metric", sa.String(), nullable=False),
        sa.Column("metric_value", sa.Float(), nullable=True),
        sa.Column("val_bpb", sa.Float(), nullable=True),
        sa.Column("core", sa.Float(), nullable=True),
        sa.Column("target_met", sa.Boolean(), nullable=True),
        sa.Column("tokens_per_s", sa.Float(), nullable=True),
        sa.Column("mfu", sa.Float(), nullable=True),
        sa.Column("energy_kwh", sa.Float(), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("uploaded_at", Time, nullable=False),
        sa.Column("files", sa.JSON(), nullable=True),
        sa.Column("record", sa.JSON(), nullable=True),
    )
    op.create_index("ix_run_run_id", "run", ["run_id"], unique=True)
    op.create_index("ix_run_bundle_sha256", "run", ["bundle_sha256"])
    op.create_index("ix_run_track_id", "run", ["track_id"])
    op.create_index("ix_run_submission_id", "run", ["submission_id"])
    op.create_index("ix_run_submitter_id", "run", ["submitter_id"])

    op.create_table(
        "verification",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_pk", sa.Integer(), sa.ForeignKey("run.id"), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.String(), nullable=True),
        sa.Column("claimed_at", Time, nullable=True),
        sa.Column("not_before", Time, nullable=True),
        sa.Column("finished_at", Time, nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("reasons", sa.JSON(), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("recomputed_val_bpb", sa.Float(), nullable=True),
        sa.Column("recomputed_core", sa.Float(), nullable=True),
        sa.Column("recomputed_train_time_s", sa.Float(), nullable=True),
    )
    op.create_index("ix_verification_run_pk", "verification", ["run_pk"], unique=True)
    op.create_index("ix_verification_status", "verification", ["status"])

    op.create_table(
        "verification_check",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("verification_id", sa.Integer(), sa.ForeignKey("verification.id"), nullable=False),
        sa.Column("name", sa.String(50), nullable=False),
        sa.Column("outcome", sa.String(10), nullable=False),
        sa.Column("detail", sa.String(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=True),
    )
    op.create_index("ix_verification_check_verification_id", "verification_check", ["verification_id"])

    op.create_table(
        "record_entry",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("track_id", sa.Integer(), sa.ForeignKey("track.id"), nullable=False),
        sa.Column("submission_id", sa.Integer(), sa.ForeignKey("submission.id"), nullable=False),
        sa.Column("time_mean_s", sa.Float(), nullable=False),
        sa.Column("time_std_s", sa.Float(), nullable=True),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("metric_mean", sa.Float(), nullable=True),
        sa.Column("p_value", sa.Float(), nullable=True),
        sa.Column("previous_time_s", sa.Float(), nullable=True),
        sa.Column("set_at", Time, nullable=False),
    )
    op.create_index("ix_record_entry_track_id", "record_entry", ["track_id"])


def downgrade() -> None:
    for table in ("record_entry", "verification_check", "verification", "run", "submission", "apitoken", "track"):
        op.drop_table(table)
    op.drop_table("submitter")
