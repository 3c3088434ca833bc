"""Schema changes for sweeps (issue 16); no-op until that work needs columns

Revision ID: 0007_sweeps
Revises: 0006_ingest_limits
Create Date: 2026-11-29 18:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0007_sweeps"
down_revision: str | None = "0006_ingest_limits"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
