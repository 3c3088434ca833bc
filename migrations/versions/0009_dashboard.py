"""Schema changes for dashboard tags, notes and status history (issue 14); no-op until that work needs columns

Revision ID: 0009_dashboard
Revises: 0008_mma
Create Date: 2026-11-29 18:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0009_dashboard"
down_revision: str | None = "0008_mma"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
