"""jobs.eval_dataset_ids: extra datasets a job is evaluated on (cross-dataset and shift evaluation)

Revision ID: 0002_job_eval_datasets
Revises: 0001_initial
Create Date: 2026-11-27 17:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_job_eval_datasets"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: existing jobs have no extra datasets. Batch mode recreates the table on SQLite.
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("eval_dataset_ids", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("eval_dataset_ids")
