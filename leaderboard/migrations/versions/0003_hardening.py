"""One model one run, registrations, held-out scores, token expiry, page summaries, superseded versions.

- run: `weights_sha256` (unique: the same tensors never rank twice), `track_version` (back-filled from
  the track the run was filed under), `summary` (the bounded series a run page draws), `detail` (the
  run's API answer, rebuilt on every change: NULL is built on read); `seed` and `steps` widen to
  BIGINT (a record allows seeds up to 2**63).
- verification: the held-out bpb, a review flag and who cleared it.
- standing: registered and missed runs.
- apitoken: `expires_at` (existing tokens keep none: revoke them to retire them).
- registration: the run ids the server issued before the runs.
Every existing row is kept.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Time = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("run") as batch:  # only ADD COLUMN and CREATE INDEX: no table copy on SQLite
        batch.add_column(sa.Column("weights_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("track_version", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("summary", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("detail", sa.Text(), nullable=True))
        batch.create_index("ix_run_weights_sha256", ["weights_sha256"], unique=True)
    if op.get_bind().dialect.name != "sqlite":  # SQLite's INTEGER is already 64-bit (and a copy would trip the FKs)
        op.alter_column("run", "seed", type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=True)
        op.alter_column("run", "steps", type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=True)
    op.execute("UPDATE run SET track_version = (SELECT version FROM track WHERE track.id = run.track_id)")
    with op.batch_alter_table("verification") as batch:
        batch.add_column(sa.Column("recomputed_heldout_bpb", sa.Float(), nullable=True))
        batch.add_column(sa.Column("flag", sa.String(), nullable=True))
        batch.add_column(sa.Column("flag_cleared_by", sa.String(), nullable=True))
    with op.batch_alter_table("standing") as batch:
        batch.add_column(sa.Column("n_registered", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("n_missed", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("apitoken") as batch:
        batch.add_column(sa.Column("expires_at", Time, nullable=True))
    op.create_table(
        "registration",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.String(200), nullable=False),
        sa.Column("submitter_id", sa.Integer(), sa.ForeignKey("submitter.id"), nullable=False),
        sa.Column("track_id", sa.Integer(), sa.ForeignKey("track.id"), nullable=False),
        sa.Column("track_version", sa.Integer(), nullable=False),
        sa.Column("submission_name", sa.String(200), nullable=False),
        sa.Column("seed", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("deadline", Time, nullable=False),
        sa.UniqueConstraint("submitter_id", "track_id", "submission_name", "seed"),
    )
    op.create_index("ix_registration_run_id", "registration", ["run_id"], unique=True)
    op.create_index("ix_registration_submitter_id", "registration", ["submitter_id"])
    op.create_index("ix_registration_track_id", "registration", ["track_id"])


def downgrade() -> None:
    op.drop_table("registration")
    with op.batch_alter_table("apitoken") as batch:
        batch.drop_column("expires_at")
    with op.batch_alter_table("standing") as batch:
        batch.drop_column("n_missed")
        batch.drop_column("n_registered")
    with op.batch_alter_table("verification") as batch:
        for column in ("flag_cleared_by", "flag", "recomputed_heldout_bpb"):
            batch.drop_column(column)
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("run", "steps", type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=True)
        op.alter_column("run", "seed", type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=True)
    with op.batch_alter_table("run") as batch:
        batch.drop_index("ix_run_weights_sha256")
        for column in ("detail", "summary", "track_version", "weights_sha256"):
            batch.drop_column(column)
