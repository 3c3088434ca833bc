"""Schema changes for issue 12 (progress stamps, token expiry/revocation, reconciler); no-op until that work needs columns

Revision ID: 0004_reliability
Revises: 0003_prompt_protocol
Create Date: 2026-11-29 18:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0004_reliability"
down_revision: str | None = "0003_prompt_protocol"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
