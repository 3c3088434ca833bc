"""Usage: the device time each job's training used (jobs.device_seconds) and a ledger by UTC day

Existing jobs start at 0 device seconds and no ledger rows (their time was not measured).

Revision ID: 0011_usage
Revises: 0010_fair_share
Create Date: 2026-12-07 16:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_usage"
down_revision: str | None = "0010_fair_share"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("device_seconds", sa.Float(), nullable=False, server_default="0"))
    op.create_table(
        "device_usage",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_device_usage_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_usage")),
    )
    op.create_index("ix_device_usage_project_id_day", "device_usage", ["project_id", "day"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_device_usage_project_id_day", table_name="device_usage")
    op.drop_table("device_usage")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("device_seconds")
