"""Tokens can expire and be revoked; jobs carry a progress stamp, their last enqueue time and the run
time of earlier attempts (the reconciler and resumed jobs need them)

Revision ID: 0004_reliability
Revises: 0003_prompt_protocol
Create Date: 2026-11-29 18:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_reliability"
down_revision: str | None = "0003_prompt_protocol"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Tokens: optional expiry and revocation (NULL = never expires / not revoked).
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
    # Jobs: the worker's progress stamp (the lease a reconciler checks), the last time a message was
    # sent for the job, and the run time of earlier attempts (a resumed job reports the total).
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("progress_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("attempt_started_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("run_seconds", sa.Float(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("run_seconds")
        batch_op.drop_column("attempt_started_at")
        batch_op.drop_column("enqueued_at")
        batch_op.drop_column("progress_at")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("revoked_at")
        batch_op.drop_column("expires_at")
