"""Schema changes for issue 11 (class-token position, protocol, weights); no-op until that work needs columns

Revision ID: 0003_prompt_protocol
Revises: 0002_job_eval_datasets
Create Date: 2026-11-29 18:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

revision: str = "0003_prompt_protocol"
down_revision: str | None = "0002_job_eval_datasets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
