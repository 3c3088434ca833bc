"""MLflow tracking: a project's tracking URI and experiment (projects.mlflow_tracking_uri,
projects.mlflow_experiment, set with ``mergetune project set``) and each job's (jobs.mlflow: where it
logs and, once it started, its run id and link)

Existing projects have no tracking server; existing jobs log nowhere.

Revision ID: 0013_mlflow
Revises: 0012_deadlines
Create Date: 2026-12-07 16:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_mlflow"
down_revision: str | None = "0012_deadlines"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mlflow_tracking_uri", sa.String(length=1024), nullable=True))
        batch_op.add_column(sa.Column("mlflow_experiment", sa.String(length=255), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mlflow", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("mlflow")
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("mlflow_experiment")
        batch_op.drop_column("mlflow_tracking_uri")
