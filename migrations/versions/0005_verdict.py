"""Jobs keep the verdict of their result (text, warnings, deltas) for the API, dashboard and /metrics

Revision ID: 0005_verdict
Revises: 0004_reliability
Create Date: 2026-11-29 18:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_verdict"
down_revision: str | None = "0004_reliability"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # {text, ok, warnings: [{code, message}], hm, hm_vs_fine_tuned, ...} (mergetune.core.evaluation.result.Verdict); NULL until
    # a job succeeds.
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("verdict", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("verdict")
