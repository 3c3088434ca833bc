"""Fair share between projects: project weights and running limits, job and sweep priorities

Existing projects get weight 1 and no running limit; existing jobs and sweeps priority "normal".

Revision ID: 0010_fair_share
Revises: 0009_bounded_checkpoint_info
Create Date: 2026-12-07 15:45:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_fair_share"
down_revision: str | None = "0009_bounded_checkpoint_info"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("weight", sa.Float(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("max_running_jobs", sa.Integer(), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("priority", sa.String(length=8), nullable=False, server_default="normal")
        )
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("priority", sa.String(length=8), nullable=False, server_default="normal")
        )


def downgrade() -> None:
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.drop_column("priority")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("priority")
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("max_running_jobs")
        batch_op.drop_column("weight")
