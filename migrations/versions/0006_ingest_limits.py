"""Schema changes for issue 18 (bounded checkpoint parsing); no-op until that work needs columns

Revision ID: 0006_ingest_limits
Revises: 0005_verdict
Create Date: 2026-11-29 18:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0006_ingest_limits"
down_revision: str | None = "0005_verdict"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
