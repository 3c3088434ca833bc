"""Streaming ``multipart/form-data`` reception: the file part goes to a temporary file chunk by chunk
(hashing as it goes) and reading stops as soon as the size limit is passed, so an oversized upload never
lands whole on disk nor in memory. FastAPI's ``UploadFile`` would spool the entire body first."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from mergetune.api.errors import (
    BadRequest,
    PayloadTooLarge,
    Unprocessable,
    UnsupportedMediaType,
    storage_full,
)
from mergetune.api.hygiene import describe, has_control
from mergetune.common.storage import free_bytes, is_storage_full

#: Slack for multipart framing and small form fields when judging Content-Length up front.
FRAMING_SLACK = 64 * 1024
MAX_FIELD_BYTES = 4096


class _TooLarge(Exception):
    pass


class _FieldTooLarge(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


@dataclass
class ReceivedUpload:
    path: Path | None = None
    filename: str | None = None
    size: int = 0
    sha256: str = ""
    fields: dict[str, str] = field(default_factory=dict)

    def cleanup(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def multipart_schema(file_description: str, **fields: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI schema of a multipart/form-data body: a required binary ``file`` and ``fields``."""
    return {
        "schema": {
            "type": "object",
            "required": ["file"],
            "properties": {
                "file": {"type": "string", "format": "binary", "description": file_description},
                **fields,
            },
        }
    }


def safe_filename(name: str | None, default: str = "upload.bin") -> str:
    """A storage-key-safe basename: no directories, only ``[A-Za-z0-9._-]``, no leading dot."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip(".")[:200]
    return base or default


async def receive_multipart(
    request: Request, *, tmp_dir: Path, max_bytes: int, file_field: str = "file"
) -> ReceivedUpload:
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        raise UnsupportedMediaType("the upload must be multipart/form-data with a `file` part", param="file")
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart boundary missing from Content-Type", param="file")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes + FRAMING_SLACK:
        raise PayloadTooLarge(
            f"upload of {int(length)} bytes exceeds the limit of {max_bytes} bytes", param="file"
        )

    try:
        tmp_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if is_storage_full(exc):
            raise storage_full() from None
        raise
    free = free_bytes(tmp_dir)
    if free is not None and length is not None and length.isdigit() and int(length) > free:
        raise storage_full(f"the server's storage cannot hold {int(length)} more bytes now; retry later")
    sink = _Sink(tmp_dir, max_bytes, file_field)
    result = sink.result
    parser = MultipartParser(boundary, sink.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except _TooLarge:
        sink.close()
        result.cleanup()
        raise PayloadTooLarge(f"upload exceeds the limit of {max_bytes} bytes", param="file") from None
    except _FieldTooLarge as exc:
        sink.close()
        result.cleanup()
        raise Unprocessable(f"form field {exc.name!r} is too long", param=exc.name) from None
    except (BadRequest, Unprocessable):
        sink.close()
        result.cleanup()
        raise
    except Exception as exc:  # multipart parse errors, client disconnects, a full disk
        sink.close()
        result.cleanup()
        if is_storage_full(exc):  # the server's fault and temporary: never a 400 a client won't retry
            raise storage_full() from None
        raise BadRequest(f"malformed multipart body: {exc}", param="file") from exc
    except BaseException:
        sink.close()
        result.cleanup()
        raise
    sink.close()
    if not sink.ended:  # the closing boundary never came: a truncated body is not an upload
        result.cleanup()
        raise BadRequest(
            "malformed multipart body: it ends before the closing boundary (truncated upload?)",
            code="truncated_body",
            param="file",
        )
    if result.path is None:
        raise Unprocessable("a `file` part is required", param="file")
    if result.size == 0:
        result.cleanup()
        raise Unprocessable("the uploaded file is empty", code="empty_file", param="file")
    result.sha256 = sink.hasher.hexdigest()
    return result


class _Sink:
    """python-multipart callbacks: the file part to a temp file (hashed, size-capped), small fields kept."""

    def __init__(self, tmp_dir: Path, max_bytes: int, file_field: str) -> None:
        self.tmp_dir, self.max_bytes, self.file_field = tmp_dir, max_bytes, file_field
        self.result = ReceivedUpload()
        self.hasher = hashlib.sha256()
        self.headers: dict[bytes, bytes] = {}
        self.hname = b""
        self.hvalue = b""
        self.name: str | None = None
        self.out: BinaryIO | None = None
        self.buf: bytearray | None = None
        self.ended = False  # the closing boundary was parsed

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self.headers, self.hname, self.hvalue, self.name, self.out, self.buf = {}, b"", b"", None, None, None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.hname += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.hvalue += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.hname.lower()] = self.hvalue
        self.hname, self.hvalue = b"", b""

    def on_headers_finished(self) -> None:
        _, opts = parse_options_header(self.headers.get(b"content-disposition", b""))
        self.name = opts.get(b"name", b"").decode("utf-8", "replace")
        if has_control(self.name):
            raise Unprocessable(
                f"a multipart part name holds control character {describe(self.name)}",
                code="invalid_characters",
                param="name",
            )
        if self.name == self.file_field:
            if self.result.path is not None:
                raise BadRequest("only one `file` part is allowed", param="file")
            filename = opts.get(b"filename", b"").decode("utf-8", "replace") or None
            if filename is not None and has_control(filename):
                raise Unprocessable(
                    f"the file name holds control character {describe(filename)}",
                    code="invalid_characters",
                    param="filename",
                )
            fd, tmp = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=self.tmp_dir)
            self.result.path = Path(tmp)
            self.result.filename = filename
            self.out = os.fdopen(fd, "wb")
        else:
            self.buf = bytearray()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.out is not None:
            self.result.size += len(chunk)
            if self.result.size > self.max_bytes:
                raise _TooLarge()  # stop before the limit is exceeded on disk
            self.hasher.update(chunk)
            self.out.write(chunk)
        elif self.buf is not None:
            self.buf.extend(chunk)
            if len(self.buf) > MAX_FIELD_BYTES:
                raise _FieldTooLarge(self.name or "?")

    def on_part_end(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None
        elif self.buf is not None and self.name:
            value = bytes(self.buf).decode("utf-8", "replace")
            if has_control(value):
                raise Unprocessable(
                    f"{self.name}: control character {describe(value)} is not allowed",
                    code="invalid_characters",
                    param=self.name,
                )
            self.result.fields[self.name] = value

    def on_end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None
