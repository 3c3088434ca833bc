"""A lean closed-loop HTTP/1.1 load generator for the API benchmark.

``clients`` keep-alive connections, each sending one pre-built GET request (the same bytes every time)
and reading its whole answer (status line, headers, ``Content-Length`` bytes of body) before sending the
next: asyncio protocols on uvloop when it is installed, no HTTP library, no parsing beyond finding the
end of the headers and the length. The box running the benchmark shares its cores with the service, so
what the client costs is measured too (:attr:`LoadResult.cpu_seconds`, this process's CPU time).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)  # seconds, one per answered request
    wall: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of this process (user + system) while the loop ran
    statuses: Counter[int] = field(default_factory=Counter)
    reconnects: int = 0  # connections dropped by the server (the request is sent again)

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0


def build_get(host: str, port: int, path: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: keep-alive"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Client(asyncio.Protocol):
    """One connection sending ``request`` until ``remaining`` answers came back (or it is dropped)."""

    def __init__(self, request: bytes, remaining: int, result: LoadResult, done: asyncio.Future[int]) -> None:
        self.request, self.remaining, self.result, self.done = request, remaining, result, done
        self.buf = b""
        self.sent = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.sent = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            at = head.find(b"\r\ncontent-length:")
            length = 0
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            total = end + 4 + length
            if len(self.buf) < total:
                return
            self.result.latencies.append(time.perf_counter() - self.sent)
            self.result.statuses[int(self.buf[9:12])] += 1
            self.buf = self.buf[total:]
            self.remaining -= 1
            if self.remaining <= 0:
                assert self.transport is not None
                self.transport.close()
                if not self.done.done():
                    self.done.set_result(0)
                return
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.remaining)


async def _one(host: str, port: int, request: bytes, count: int, result: LoadResult) -> None:
    loop = asyncio.get_running_loop()
    remaining = count
    while remaining > 0:
        done: asyncio.Future[int] = loop.create_future()
        try:
            client = _Client(request, remaining, result, done)
            await loop.create_connection(lambda c=client: c, host, port)
        except OSError:
            result.reconnects += 1
            await asyncio.sleep(0.05)
            continue
        remaining = await done
        if remaining > 0:
            result.reconnects += 1


async def _run(host: str, port: int, request: bytes, clients: int, per_client: int) -> LoadResult:
    result = LoadResult()
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(_one(host, port, request, per_client, result) for _ in range(clients)))
    result.wall = time.perf_counter() - t0
    result.cpu_seconds = time.process_time() - cpu0
    return result


def _loop_factory() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.new_event_loop()


def closed_loop(host: str, port: int, request: bytes, clients: int, per_client: int) -> LoadResult:
    """``clients`` connections x ``per_client`` requests, back to back."""
    with asyncio.Runner(loop_factory=_loop_factory) as runner:
        return runner.run(_run(host, port, request, clients, per_client))


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else float("nan")
