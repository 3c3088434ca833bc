"""Schema changes for issue 13 (verdict and warnings); no-op until that work needs columns

Revision ID: 0005_verdict
Revises: 0004_reliability
Create Date: 2026-11-29 18:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0005_verdict"
down_revision: str | None = "0004_reliability"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
