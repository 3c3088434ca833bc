"""The Python clients of the MergeTune REST API: :class:`Client` (sync) and :class:`AsyncClient`.

    from mergetune import Client
    with Client("http://127.0.0.1:8000", token) as c:
        ckpt = c.upload_checkpoint("model.pth.tar")
        ds = c.create_dataset("demo", "builtin")
        job = c.create_job(ckpt["id"], ds["id"], backbone={"model": "tiny-clip", "pretrained": "builtin"})
        job = c.wait_job(job["id"])
        c.download_artifacts(job["id"], "out/")

    async with AsyncClient("http://127.0.0.1:8000", token) as c:
        job = await c.wait_job((await c.create_job(ckpt_id, ds_id))["id"])

Both have the same methods (:class:`mergetune._operations.Operations`: each written once as a
generator of request steps); here they are only carried out, with httpx's sync or async client.
Error answers raise :class:`ApiError`; network failures raise httpx's exceptions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from mergetune._operations import SWEEP_TERMINAL, TERMINAL, Flow, Operations
from mergetune._requests import (
    CHUNK,
    ApiError,
    Call,
    Close,
    Download,
    Emit,
    Open,
    Read,
    Sleep,
    Step,
    http_options,
    raise_for_error,
    request_args,
    result,
)

__all__ = ["SWEEP_TERMINAL", "TERMINAL", "ApiError", "AsyncClient", "Client"]


class Client(Operations):
    """A synchronous client: ``Client(base_url, token, timeout=60.0, **httpx_client_kwargs)``."""

    def __init__(
        self, base_url: str, token: str | None = None, *, timeout: float = 60.0, **kwargs: Any
    ) -> None:
        self._http = httpx.Client(**http_options(base_url, token, timeout), **kwargs)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, flow: Flow[Any]) -> Any:
        drive = self._drive(flow)
        while True:
            try:
                next(drive)
            except StopIteration as done:
                return done.value

    def _iterate(self, flow: Flow[Any]) -> Iterator[Any]:
        return (yield from self._drive(flow))

    def _drive(self, flow: Flow[Any]) -> Iterator[Any]:
        """Carry out the steps of ``flow``, yielding the values it emits; returns what it returns.
        Responses it left open (it failed, or the caller stopped iterating) are closed."""
        reply: Any = None
        error: BaseException | None = None
        opened: list[_Stream] = []
        try:
            while True:
                try:
                    step = flow.throw(error) if error is not None else flow.send(reply)
                except StopIteration as done:
                    return done.value
                reply, error = None, None
                if isinstance(step, Emit):
                    yield step.value
                    continue
                try:
                    reply = self._step(step)
                except BaseException as exc:  # handed to the operation, which cleans up and re-raises
                    error = exc
                _track(opened, step, reply)
        finally:
            flow.close()
            for stream in opened:
                stream.close()

    def _step(self, step: Step) -> Any:
        if isinstance(step, Sleep):
            time.sleep(step.seconds)
            return None
        if isinstance(step, Read):
            return step.handle.read()
        if isinstance(step, Close):
            step.handle.close()
            return None
        if isinstance(step, Open):
            with request_args(step.call) as args:
                timeout = _timeout(self._http.timeout, step.read_timeout)
                cm = self._http.stream(step.call.method, step.call.path, timeout=timeout, **args)
                r = cm.__enter__()
                try:
                    if r.status_code >= 400:
                        r.read()
                        raise_for_error(r)
                except BaseException:
                    cm.__exit__(None, None, None)
                    raise
                return _Stream(r.iter_bytes(), lambda: cm.__exit__(None, None, None))
        assert not isinstance(step, Emit)
        call = step.call if isinstance(step, Download) else step
        with request_args(call) as args:
            if isinstance(step, Call):
                return result(call, self._http.request(call.method, call.path, **args))
            with self._http.stream(call.method, call.path, **args) as r:
                if r.status_code >= 400:
                    r.read()
                    raise_for_error(r)
                for chunk in r.iter_bytes(CHUNK):
                    step.out.write(chunk)
        return None


class AsyncClient(Operations):
    """An asyncio client with the methods of :class:`Client`, each a coroutine:
    ``AsyncClient(base_url, token, timeout=60.0, **httpx_async_client_kwargs)``."""

    def __init__(
        self, base_url: str, token: str | None = None, *, timeout: float = 60.0, **kwargs: Any
    ) -> None:
        self._http = httpx.AsyncClient(**http_options(base_url, token, timeout), **kwargs)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, flow: Flow[Any]) -> Any:
        result: list[Any] = []
        async for _ in self._drive(flow, result):
            pass
        return result[0] if result else None

    def _iterate(self, flow: Flow[Any]) -> AsyncIterator[Any]:
        return self._drive(flow, [])

    async def _drive(self, flow: Flow[Any], result: list[Any]) -> AsyncIterator[Any]:
        """As :meth:`Client._drive`; what ``flow`` returns is appended to ``result``."""
        reply: Any = None
        error: BaseException | None = None
        opened: list[_AsyncStream] = []
        try:
            while True:
                try:
                    step = flow.throw(error) if error is not None else flow.send(reply)
                except StopIteration as done:
                    result.append(done.value)
                    return
                reply, error = None, None
                if isinstance(step, Emit):
                    yield step.value
                    continue
                try:
                    reply = await self._step(step)
                except BaseException as exc:  # handed to the operation, which cleans up and re-raises
                    error = exc
                _track(opened, step, reply)
        finally:
            flow.close()
            for stream in opened:
                await stream.close()

    async def _step(self, step: Step) -> Any:
        if isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
            return None
        if isinstance(step, Read):
            return await step.handle.read()
        if isinstance(step, Close):
            await step.handle.close()
            return None
        if isinstance(step, Open):
            with request_args(step.call) as args:
                timeout = _timeout(self._http.timeout, step.read_timeout)
                cm = self._http.stream(step.call.method, step.call.path, timeout=timeout, **args)
                r = await cm.__aenter__()
                try:
                    if r.status_code >= 400:
                        await r.aread()
                        raise_for_error(r)
                except BaseException:
                    await cm.__aexit__(None, None, None)
                    raise
                return _AsyncStream(r.aiter_bytes(), lambda: cm.__aexit__(None, None, None))
        assert not isinstance(step, Emit)
        call = step.call if isinstance(step, Download) else step
        with request_args(call) as args:
            if isinstance(step, Call):
                return result(call, await self._http.request(call.method, call.path, **args))
            async with self._http.stream(call.method, call.path, **args) as r:
                if r.status_code >= 400:
                    await r.aread()
                    raise_for_error(r)
                async for chunk in r.aiter_bytes(CHUNK):
                    step.out.write(chunk)
        return None


# -- open streaming responses (the Open / Read / Close steps) --------------------------------------


def _timeout(default: httpx.Timeout, read: float | None) -> httpx.Timeout:
    return default if read is None else httpx.Timeout(default.connect, read=read)


def _track(opened: list[Any], step: Step, reply: Any) -> None:
    if isinstance(step, Open) and reply is not None:
        opened.append(reply)
    elif isinstance(step, Close) and step.handle in opened:
        opened.remove(step.handle)


class _Stream:
    def __init__(self, chunks: Iterator[bytes], close: Any) -> None:
        self._chunks, self._close, self._closed = chunks, close, False

    def read(self) -> bytes:
        return next(self._chunks, b"")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()


class _AsyncStream:
    def __init__(self, chunks: AsyncIterator[bytes], close: Any) -> None:
        self._chunks, self._close, self._closed = chunks, close, False

    async def read(self) -> bytes:
        return await anext(self._chunks, b"")

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._close()
