"""Prompt checkpoints carry their class-token position; jobs carry their protocol and prompt assembly

Revision ID: 0003_prompt_protocol
Revises: 0002_job_eval_datasets
Create Date: 2026-11-29 18:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_prompt_protocol"
down_revision: str | None = "0002_job_eval_datasets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("class_token_position", sa.String(length=8), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("protocol", sa.String(length=16), nullable=False, server_default="base2novel")
        )
        batch.add_column(sa.Column("prompt", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("prompt")
        batch.drop_column("protocol")
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_column("class_token_position")
