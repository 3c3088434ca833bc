"""Weights uploaded to the service (``POST /v1/weights``), as jobs name them: ``weights:<id>`` or
``sha256:<hex>`` in ``backbone.pretrained``. Shared by the API (the check at creation, the in-use check
of DELETE) and the workers (which fetch the file from the artifact store into their input cache)."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select

from mergetune.common.models import UploadedWeights

ID_PREFIX = "weights:"
SHA_PREFIX = "sha256:"
_ID = re.compile(r"^wgt_[0-9a-f]{24}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")


class BadReference(ValueError):
    """A ``weights:`` / ``sha256:`` value that names nothing an id or a sha256 can be."""


def is_uploaded_reference(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    v = value.strip().lower()
    return v.startswith(ID_PREFIX) or v.startswith(SHA_PREFIX)


def parse_reference(value: str) -> tuple[str, str]:
    """("id", wgt_...) or ("sha256", hex) of a reference; BadReference when malformed."""
    v = value.strip()
    if v.lower().startswith(ID_PREFIX):
        ident = v[len(ID_PREFIX) :].strip()
        if not _ID.match(ident):
            raise BadReference(f"{v[:120]!r}: weights:<id> takes the id POST /v1/weights answered (wgt_...)")
        return "id", ident
    if v.lower().startswith(SHA_PREFIX):
        digest = v[len(SHA_PREFIX) :].strip().lower()
        if not _SHA.match(digest):
            raise BadReference(f"{v[:120]!r}: sha256:<hex> takes 64 hexadecimal digits")
        return "sha256", digest
    raise BadReference(f"{v[:120]!r} is not a weights:<id> or sha256:<hex> reference")


def storage_key(project_id: str, sha256: str, suffix: str) -> str:
    """Where the file lies in the artifact store: by content, once per project."""
    return f"weights/{project_id}/{sha256}{suffix}"


def find(session: Any, project_id: str, value: str) -> UploadedWeights | None:
    """The project's uploaded weights a reference names (None: none of this project's)."""
    kind, ident = parse_reference(value)
    column = UploadedWeights.id if kind == "id" else UploadedWeights.sha256
    return session.scalar(
        select(UploadedWeights).where(UploadedWeights.project_id == project_id, column == ident)
    )


def names(row: UploadedWeights, pretrained: Any) -> bool:
    """True when ``pretrained`` (a job's) names ``row``."""
    if not is_uploaded_reference(pretrained):
        return False
    try:
        kind, ident = parse_reference(str(pretrained))
    except BadReference:
        return False
    return ident == (row.id if kind == "id" else row.sha256)
