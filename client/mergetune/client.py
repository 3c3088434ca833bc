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
from typing import Any

import httpx

from mergetune._operations import SWEEP_TERMINAL, TERMINAL, Flow, Operations
from mergetune._requests import (
    CHUNK,
    ApiError,
    Call,
    Download,
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
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = flow.throw(error) if error is not None else flow.send(reply)
            except StopIteration as done:
                return done.value
            reply, error = None, None
            try:
                reply = self._step(step)
            except BaseException as exc:  # handed to the operation, which cleans up and re-raises
                error = exc

    def _step(self, step: Step) -> Any:
        if isinstance(step, Sleep):
            time.sleep(step.seconds)
            return None
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
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = flow.throw(error) if error is not None else flow.send(reply)
            except StopIteration as done:
                return done.value
            reply, error = None, None
            try:
                reply = await self._step(step)
            except BaseException as exc:  # handed to the operation, which cleans up and re-raises
                error = exc

    async def _step(self, step: Step) -> Any:
        if isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
            return None
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
