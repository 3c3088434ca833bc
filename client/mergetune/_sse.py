"""Server-sent events read from bytes, as the HTML standard's EventSource reads them (no I/O here):
lines end with CRLF, LF or CR; ``:`` starts a comment; ``data`` lines of one event are joined with
newlines; ``id`` (without NUL) sets the last event id, which stays for later events; ``retry`` (digits
only) sets the reconnection delay; a blank line dispatches the event, unless it had no data.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSentEvent:
    """One dispatched event: its type (``message`` when the stream named none), its data, the last
    event id at the time (None before any) and the reconnection delay the stream asked for (ms)."""

    event: str
    data: str
    id: str | None = None
    retry: int | None = None


class SSEParser:
    """Feed it the body's bytes as they arrive; it gives back the events completed by them."""

    def __init__(self) -> None:
        self._buffer = b""
        self._first = True  # a leading byte order mark is dropped
        self._pending_cr = False  # a chunk ended with CR: a LF opening the next one belongs to it
        self._data: list[str] = []
        self._event = ""
        self.last_id: str | None = None
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._pending_cr = False
        self._buffer += chunk
        if self._first and len(self._buffer) >= 3:
            if self._buffer.startswith(b"\xef\xbb\xbf"):
                self._buffer = self._buffer[3:]
            self._first = False
        out: list[ServerSentEvent] = []
        while True:
            cut = _line_end(self._buffer)
            if cut is None:
                return out
            end, width = cut
            if width == 1 and self._buffer[end : end + 1] == b"\r" and end + 1 == len(self._buffer):
                self._pending_cr = True  # maybe the first half of a CRLF split over two chunks
            line = self._buffer[:end].decode("utf-8", errors="replace")
            self._buffer = self._buffer[end + width :]
            event = self._line(line)
            if event is not None:
                out.append(event)

    def _line(self, line: str) -> ServerSentEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_id = value
        elif name == "retry":
            if value.isdigit():
                self.retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return ServerSentEvent(event or "message", "\n".join(data), self.last_id, self.retry)


def _line_end(buf: bytes) -> tuple[int, int] | None:
    """Where the first line of ``buf`` ends and how wide its line break is (CRLF 2, CR or LF 1)."""
    cr, lf = buf.find(b"\r"), buf.find(b"\n")
    if cr == -1 and lf == -1:
        return None
    if cr == -1 or (lf != -1 and lf < cr):
        return lf, 1
    if cr + 1 < len(buf) and buf[cr + 1 : cr + 2] == b"\n":
        return cr, 2
    return cr, 1
