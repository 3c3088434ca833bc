"""Quotas per project: stored bytes and device seconds per UTC day (NULL: off, what existing projects get)

Revision ID: 0015_quotas
Revises: 0014_retention
Create Date: 2026-12-07 16:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015_quotas"
down_revision: str | None = "0014_retention"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("quota_stored_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("quota_device_seconds_per_day", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("quota_device_seconds_per_day")
        batch_op.drop_column("quota_stored_bytes")
