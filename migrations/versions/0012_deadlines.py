"""Deadlines: jobs.max_runtime_seconds (and a project default), jobs.resume_from_job_id (a clone of a
timed-out job); the timed_out status needs no schema change (statuses are strings)

Existing jobs and projects get no deadline.

Revision ID: 0012_deadlines
Revises: 0011_usage
Create Date: 2026-12-07 16:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_deadlines"
down_revision: str | None = "0011_usage"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("default_max_runtime_seconds", sa.Integer(), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_runtime_seconds", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("resume_from_job_id", sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("resume_from_job_id")
        batch_op.drop_column("max_runtime_seconds")
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("default_max_runtime_seconds")
