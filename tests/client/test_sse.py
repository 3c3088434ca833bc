"""The client's server-sent event reader: what an EventSource would make of the same bytes."""

from __future__ import annotations

from mergetune._sse import ServerSentEvent, SSEParser


def _all(*chunks: bytes) -> list[ServerSentEvent]:
    parser = SSEParser()
    out: list[ServerSentEvent] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out


def test_fields_comments_multiline_data_and_defaults():
    body = (
        b"retry: 2000\n\n"
        b": keep-alive\n\n"
        b'id: 1\nevent: status\ndata: {"a": 1}\n\n'
        b"data: first line\ndata:second line\ndata\n\n"
        b"event: end\ndata: {}\n\n"
    )
    events = _all(body)
    assert events == [
        ServerSentEvent("status", '{"a": 1}', "1", 2000),
        ServerSentEvent("message", "first line\nsecond line\n", "1", 2000),  # the id stays
        ServerSentEvent("end", "{}", "1", 2000),
    ]


def test_split_anywhere_and_every_line_break():
    body = b"\xef\xbb\xbfid: 7\r\nevent: epoch\r\ndata: x\r\n\r\nid: 8\rdata: y\r\rid: 9\ndata: z\n\n"
    whole = _all(body)
    assert [(e.id, e.event, e.data) for e in whole] == [
        ("7", "epoch", "x"),
        ("8", "message", "y"),
        ("9", "message", "z"),
    ]
    for size in (1, 2, 3, 5):  # the same events however the bytes arrive
        assert _all(*(body[i : i + size] for i in range(0, len(body), size))) == whole


def test_ignored_lines_and_undispatched_events():
    events = _all(
        b"retry: soon\nid: a\0b\nunknown: 1\nevent: lonely\n\nid: 3\ndata: kept\n\ndata: no blank line"
    )
    assert events == [ServerSentEvent("message", "kept", "3", None)]
