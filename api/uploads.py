"""Streaming ``multipart/form-data`` reception: the file part goes to a temporary file chunk by chunk
(hashing as it goes) and reading stops as soon as the size limit is passed, so an oversized upload never
lands whole on disk nor in memory. FastAPI's ``UploadFile`` would spool the entire body first."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from api.errors import BadRequest, PayloadTooLarge, Unprocessable, UnsupportedMediaType

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

    tmp_dir.mkdir(parents=True, exist_ok=True)
    result = ReceivedUpload()
    hasher = hashlib.sha256()
    state: dict[str, object] = {
        "headers": {},
        "hname": b"",
        "hvalue": b"",
        "name": None,
        "out": None,
        "buf": None,
    }

    def on_part_begin() -> None:
        state.update(headers={}, hname=b"", hvalue=b"", name=None, out=None, buf=None)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["hname"] = state["hname"] + data[start:end]  # type: ignore[operator]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["hvalue"] = state["hvalue"] + data[start:end]  # type: ignore[operator]

    def on_header_end() -> None:
        state["headers"][bytes(state["hname"]).lower()] = bytes(state["hvalue"])  # type: ignore[index,arg-type]
        state["hname"], state["hvalue"] = b"", b""

    def on_headers_finished() -> None:
        disp = state["headers"].get(b"content-disposition", b"")  # type: ignore[attr-defined]
        _, opts = parse_options_header(disp)
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        state["name"] = name
        if name == file_field:
            if result.path is not None:
                raise BadRequest("only one `file` part is allowed", param="file")
            fd, tmp = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=tmp_dir)
            result.path = Path(tmp)
            result.filename = opts.get(b"filename", b"").decode("utf-8", "replace") or None
            state["out"] = os.fdopen(fd, "wb")
        else:
            state["buf"] = bytearray()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        out = state["out"]
        if out is not None:
            result.size += len(chunk)
            if result.size > max_bytes:
                raise _TooLarge()
            hasher.update(chunk)
            out.write(chunk)  # type: ignore[attr-defined]
        elif state["buf"] is not None:
            buf = state["buf"]
            buf.extend(chunk)  # type: ignore[attr-defined]
            if len(buf) > MAX_FIELD_BYTES:  # type: ignore[arg-type]
                raise _FieldTooLarge(str(state["name"]))

    def on_part_end() -> None:
        out = state["out"]
        if out is not None:
            out.close()  # type: ignore[attr-defined]
            state["out"] = None
        elif state["buf"] is not None and state["name"]:
            result.fields[str(state["name"])] = bytes(state["buf"]).decode("utf-8", "replace")  # type: ignore[arg-type]

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in request.stream():
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except _TooLarge:
        _close(state)
        result.cleanup()
        raise PayloadTooLarge(f"upload exceeds the limit of {max_bytes} bytes", param="file") from None
    except _FieldTooLarge as exc:
        _close(state)
        result.cleanup()
        raise Unprocessable(f"form field {exc.name!r} is too long", param=exc.name) from None
    except BadRequest:
        _close(state)
        result.cleanup()
        raise
    except Exception as exc:  # multipart parse errors, client disconnects
        _close(state)
        result.cleanup()
        raise BadRequest(f"malformed multipart body: {exc}", param="file") from exc
    except BaseException:
        _close(state)
        result.cleanup()
        raise
    _close(state)
    if result.path is None:
        raise Unprocessable("a `file` part is required", param="file")
    result.sha256 = hasher.hexdigest()
    return result


def _close(state: dict[str, object]) -> None:
    out = state.get("out")
    if out is not None:
        out.close()  # type: ignore[attr-defined]
        state["out"] = None
