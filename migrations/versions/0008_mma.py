"""Schema changes for MMA adapters (issue 15); no-op until that work needs columns

Revision ID: 0008_mma
Revises: 0007_sweeps
Create Date: 2026-11-29 18:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0008_mma"
down_revision: str | None = "0007_sweeps"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
