"""Jobs carry tags and notes, editable from the dashboard and PATCH /v1/jobs/{id}

Revision ID: 0007_dashboard
Revises: 0006_sweeps
Create Date: 2026-11-29 18:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_dashboard"
down_revision: str | None = "0006_sweeps"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # tags: a JSON list of short strings (NULL = none); notes: free text. The status history needs no
    # table: it is the job's "status" events.
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tags", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("notes", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("notes")
        batch_op.drop_column("tags")
