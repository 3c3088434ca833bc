"""Shrink checkpoints.info rows over the bound the API now keeps (128 KiB of JSON): their "metadata"
(the provenance of our own exports, or whatever a file put there) is dropped, the rest stays.

Revision ID: 0009_bounded_checkpoint_info
Revises: 0008_webhooks
Create Date: 2026-12-07 15:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_bounded_checkpoint_info"
down_revision: str | None = "0008_webhooks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INFO_MAX_BYTES = 128 * 1024


def upgrade() -> None:
    bind = op.get_bind()
    checkpoints = sa.table("checkpoints", sa.column("id", sa.String()), sa.column("info", sa.JSON()))
    size = sa.func.length(sa.cast(checkpoints.c.info, sa.Text()))
    big = bind.execute(sa.select(checkpoints.c.id).where(size > INFO_MAX_BYTES)).scalars().all()
    for ckpt_id in big:  # one row at a time: each may be large
        info = bind.execute(sa.select(checkpoints.c.info).where(checkpoints.c.id == ckpt_id)).scalar_one()
        if not isinstance(info, dict):
            info = {}
        info.pop("metadata", None)
        info["metadata_dropped"] = True  # what stays (epoch, unknown_globals, mma_layout) is bounded
        bind.execute(sa.update(checkpoints).where(checkpoints.c.id == ckpt_id).values(info=info))


def downgrade() -> None:
    pass  # what was dropped is not kept anywhere
