"""A dataset's own object-store credentials, sealed with MERGETUNE_SECRET_KEY

Revision ID: 0017_dataset_credentials
Revises: 0016_uploaded_weights
Create Date: 2026-12-07 19:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017_dataset_credentials"
down_revision: str | None = "0016_uploaded_weights"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("credentials_sealed", sa.Text(), nullable=True))
        batch.add_column(sa.Column("credentials_hint", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("credentials_hint")
        batch.drop_column("credentials_sealed")
