"""Every operation of the MergeTune API, written once for the sync and the async client.

Each public method of :class:`Operations` is a generator of steps (:mod:`mergetune._requests`) turned
into a method by :func:`operation`: on :class:`mergetune.Client` it returns the result, on
:class:`mergetune.AsyncClient` an awaitable of it. Waiting (``wait_job``), paging (``list_*``) and
all-or-nothing downloads are therefore the same code in both.
"""

from __future__ import annotations

import functools
import inspect
import json
import time
import uuid
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from mergetune._follow import TERMINAL, follow_stream, poll_events
from mergetune._requests import Call, Download, Sleep, Step, Upload, missing_dirs, remove_dirs

SWEEP_TERMINAL = TERMINAL
REPORT_FORMATS = ("json", "csv", "tex", "txt", "html")

P = ParamSpec("P")
T = TypeVar("T")
Flow = Generator[Step, Any, T]


def operation(fn: Callable[Concatenate[Any, P], Flow[T]]) -> Callable[Concatenate[Any, P], Any]:
    """Turn a generator of steps into a method that runs it with the client's ``_run``."""

    @functools.wraps(fn)
    def method(self: Operations, *args: P.args, **kwargs: P.kwargs) -> Any:
        return self._run(fn(self, *args, **kwargs))

    # help() shows what the method gives back, not the generator it is written as
    sig = inspect.signature(fn)
    returns = str(sig.return_annotation)
    if returns.startswith("Flow[") and returns.endswith("]"):
        method.__signature__ = sig.replace(return_annotation=returns[5:-1])  # type: ignore[attr-defined]
    return method


def _key(given: str | None) -> dict[str, str]:
    return {"Idempotency-Key": given} if given else {}


class Operations:
    """The API's operations; a subclass supplies ``_run`` (carry out a generator of steps)."""

    def _run(self, flow: Flow[Any]) -> Any:  # pragma: no cover - supplied by the subclasses
        raise NotImplementedError

    def _iterate(self, flow: Flow[Any]) -> Any:  # pragma: no cover - supplied by the subclasses
        """An iterator (async iterator) of the values ``flow`` emits."""
        raise NotImplementedError

    # -- plumbing ----------------------------------------------------------------------------
    def _paginate(self, path: str, params: dict[str, Any] | None = None, page_size: int = 100) -> Flow[list]:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        params["limit"] = page_size
        items: list[dict[str, Any]] = []
        while True:
            page = yield Call("GET", path, params=dict(params))
            items.extend(page["data"])
            if not page.get("has_more"):
                return items
            params["after"] = page["next_cursor"]

    def _poll(
        self, kind: str, ident: str, interval: float, timeout: float | None, on_update: Any
    ) -> Flow[dict[str, Any]]:
        """Get ``/v1/{kind}s/{ident}`` every ``interval`` s until it is finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            obj = yield Call("GET", f"/v1/{kind}s/{ident}")
            if on_update is not None:
                on_update(obj)
            if obj["status"] in TERMINAL:
                return obj
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{kind} {ident} still {obj['status']} after {timeout} s")
            yield Sleep(interval)

    # -- operations --------------------------------------------------------------------------
    @operation
    def health(self) -> Flow[dict[str, Any]]:
        return (yield Call("GET", "/healthz"))

    @operation
    def ready(self) -> Flow[dict[str, Any]]:
        return (yield Call("GET", "/readyz"))

    # -- checkpoints -------------------------------------------------------------------------
    @operation
    def upload_checkpoint(
        self,
        path: str | Path,
        *,
        method: str | None = None,
        name: str | None = None,
        idempotency_key: str | None = None,
        class_token_position: str | None = None,
    ) -> Flow[dict[str, Any]]:
        """Stream a checkpoint file (read in chunks). ``class_token_position``: CoOp's
        CLASS_TOKEN_POSITION (end | middle | front), which its files do not record."""
        fields = {"method": method, "name": name, "class_token_position": class_token_position}
        return (
            yield Call(
                "POST",
                "/v1/checkpoints",
                data={k: v for k, v in fields.items() if v},
                files={"file": Upload(Path(path))},
                headers=_key(idempotency_key),
            )
        )

    @operation
    def get_checkpoint(self, checkpoint_id: str) -> Flow[dict[str, Any]]:
        return (yield Call("GET", f"/v1/checkpoints/{checkpoint_id}"))

    @operation
    def list_checkpoints(self, *, page_size: int = 100) -> Flow[list[dict[str, Any]]]:
        return (yield from self._paginate("/v1/checkpoints", page_size=page_size))

    @operation
    def delete_checkpoint(self, checkpoint_id: str) -> Flow[dict[str, Any]]:
        return (yield Call("DELETE", f"/v1/checkpoints/{checkpoint_id}"))

    # -- weights -----------------------------------------------------------------------------
    @operation
    def upload_weights(self, path: str | Path, *, name: str | None = None) -> Flow[dict[str, Any]]:
        """Stream backbone weights (a safetensors file or a torch state dict) to the service; the same
        bytes again answer the record already there. Jobs name it by its ``pretrained``
        (``"weights:<id>"``)."""
        return (
            yield Call(
                "POST",
                "/v1/weights",
                data={"name": name} if name else {},
                files={"file": Upload(Path(path))},
            )
        )

    @operation
    def get_weights(self, weights_id: str) -> Flow[dict[str, Any]]:
        return (yield Call("GET", f"/v1/weights/{weights_id}"))

    @operation
    def list_weights(self, *, page_size: int = 100) -> Flow[list[dict[str, Any]]]:
        return (yield from self._paginate("/v1/weights", page_size=page_size))

    @operation
    def delete_weights(self, weights_id: str) -> Flow[dict[str, Any]]:
        """409 ``in_use`` while a queued or running job names them."""
        return (yield Call("DELETE", f"/v1/weights/{weights_id}"))

    # -- datasets ----------------------------------------------------------------------------
    @operation
    def create_dataset(
        self,
        name: str,
        kind: str,
        path: str | None = None,
        *,
        coop_name: str | None = None,
        options: dict[str, Any] | None = None,
        credentials: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Flow[dict[str, Any]]:
        """``credentials`` (s3:// paths): the bucket's own ``access_key_id``, ``secret_access_key`` and
        optional ``session_token``, ``endpoint_url``, ``region``; stored sealed, shown back masked."""
        body = {
            "name": name,
            "kind": kind,
            "path": path,
            "coop_name": coop_name,
            "options": options,
            "credentials": credentials,
        }
        body = {k: v for k, v in body.items() if v is not None}
        return (yield Call("POST", "/v1/datasets", json=body, headers=_key(idempotency_key)))

    @operation
    def set_dataset_credentials(
        self, dataset_id: str, credentials: dict[str, str] | None
    ) -> Flow[dict[str, Any]]:
        """Replace an s3:// dataset's own credentials (checked by the server), or forget them (None)."""
        if credentials is None:
            return (yield Call("DELETE", f"/v1/datasets/{dataset_id}/credentials"))
        return (yield Call("PUT", f"/v1/datasets/{dataset_id}/credentials", json=credentials))

    @operation
    def get_dataset(self, dataset_id: str) -> Flow[dict[str, Any]]:
        return (yield Call("GET", f"/v1/datasets/{dataset_id}"))

    @operation
    def list_datasets(self, *, page_size: int = 100) -> Flow[list[dict[str, Any]]]:
        return (yield from self._paginate("/v1/datasets", page_size=page_size))

    # -- jobs --------------------------------------------------------------------------------
    @operation
    def create_job(
        self,
        checkpoint_id: str,
        dataset_id: str,
        *,
        backbone: dict[str, str] | None = None,
        hyperparameters: dict[str, Any] | None = None,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        eval_dataset_ids: list[str] | None = None,
        protocol: str | None = None,
        class_token_position: str | None = None,
    ) -> Flow[dict[str, Any]]:
        """Create a job. An Idempotency-Key is always sent (a fresh one unless given) so that a retried
        request cannot start two jobs. ``eval_dataset_ids``: other datasets to evaluate the result on;
        ``protocol``: base2novel | all; ``class_token_position`` overrides the checkpoint's."""
        body: dict[str, Any] = {"checkpoint_id": checkpoint_id, "dataset_id": dataset_id}
        optional = {
            "backbone": backbone,
            "hyperparameters": hyperparameters,
            "metadata": metadata,
            "eval_dataset_ids": list(eval_dataset_ids or []),
            "protocol": protocol,
            "prompt": {"class_token_position": class_token_position} if class_token_position else None,
        }
        body.update({k: v for k, v in optional.items() if v})
        headers = _key(idempotency_key or f"cli-{uuid.uuid4()}")
        return (yield Call("POST", "/v1/jobs", json=body, headers=headers))

    @operation
    def get_job(self, job_id: str) -> Flow[dict[str, Any]]:
        return (yield Call("GET", f"/v1/jobs/{job_id}"))

    @operation
    def list_jobs(
        self, *, status: str | None = None, dataset_id: str | None = None, page_size: int = 100
    ) -> Flow[list[dict[str, Any]]]:
        """The project's jobs, newest first (every page); ``status``/``dataset_id`` filter them."""
        params = {"status": status, "dataset_id": dataset_id}
        return (yield from self._paginate("/v1/jobs", params, page_size))

    @operation
    def cancel_job(self, job_id: str) -> Flow[dict[str, Any]]:
        return (yield Call("POST", f"/v1/jobs/{job_id}/cancel"))

    @operation
    def job_events(self, job_id: str, *, after: int | str | None = None, limit: int = 1000) -> Flow[dict]:
        """One page of a job's events, oldest first: ``{"data", "has_more", "next_cursor"}``."""
        return (yield Call("GET", f"/v1/jobs/{job_id}/events", params={"limit": limit, "after": after}))

    @operation
    def list_job_events(
        self, job_id: str, *, after: int | str | None = None, page_size: int = 1000
    ) -> Flow[list[dict[str, Any]]]:
        """Every event of a job (after the event id ``after``), oldest first, following the cursor."""
        params = {"after": after} if after is not None else None
        return (yield from self._paginate(f"/v1/jobs/{job_id}/events", params, page_size))

    @operation
    def wait_job(
        self,
        job_id: str,
        *,
        interval: float = 1.0,
        timeout: float | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        stream: bool = True,
    ) -> Flow[dict[str, Any]]:
        """Wait until the job is finished (succeeded, failed, cancelled, timed_out, expired); returns
        the final job object. Follows the job's event stream (server-sent events, resumed after a
        dropped connection); polls every ``interval`` s instead where the server has no stream, the
        stream keeps failing, or ``stream=False``. ``on_update`` is called with the job object as its
        status or progress changes; past ``timeout`` s: TimeoutError."""
        start = time.monotonic()
        if stream:
            job = yield Call("GET", f"/v1/jobs/{job_id}")
            if on_update is not None:
                on_update(job)
            if job["status"] in TERMINAL:
                return job
            followed = yield from follow_stream(job, timeout=timeout, on_update=on_update)
            if followed.job is not None:
                return followed.job
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
        return (yield from self._poll("job", job_id, interval, left, on_update))

    def stream_job_events(self, job_id: str, after: int | None = None) -> Any:
        """The job's events as they happen, oldest first, from after seq ``after`` (else the first),
        until the job is finished: an iterator of event objects (``GET /v1/jobs/{id}/events``'s),
        an async iterator on :class:`mergetune.AsyncClient`. Follows the event stream (resumed after a
        dropped connection without losing or repeating events); polls where the server has none."""
        return self._iterate(self._follow_events(job_id, after or 0))

    def _follow_events(self, job_id: str, after: int) -> Flow[dict[str, Any]]:
        job = yield Call("GET", f"/v1/jobs/{job_id}")
        followed = yield from follow_stream(job, after=after, emit=True)
        if followed.job is not None:
            return followed.job
        return (yield from poll_events(job_id, after=followed.seq))

    # -- artifacts ---------------------------------------------------------------------------
    @operation
    def list_artifacts(self, job_id: str) -> Flow[list[dict[str, Any]]]:
        return (yield Call("GET", f"/v1/jobs/{job_id}/artifacts"))["data"]

    def _download(self, job_id: str, name: str, dest: Path) -> Flow[Path]:
        if dest.is_dir():
            dest = dest / name
        created = missing_dirs(dest.parent)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        try:
            with tmp.open("wb") as out:
                yield Download(Call("GET", f"/v1/jobs/{job_id}/artifacts/{name}"), out)
            tmp.replace(dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            remove_dirs(created)
            raise
        return dest

    @operation
    def download_artifact(self, job_id: str, name: str, dest: str | Path) -> Flow[Path]:
        """Stream one artifact to ``dest`` (a file path, or a directory to put ``name`` in)."""
        return (yield from self._download(job_id, name, Path(dest)))

    @operation
    def download_artifacts(
        self, job_id: str, out_dir: str | Path, names: list[str] | None = None
    ) -> Flow[list[Path]]:
        """Download ``names`` (default: every artifact) into ``out_dir``. All or nothing: when one fails,
        the files written so far and the folders this call created are removed before the error."""
        out = Path(out_dir)
        if names:
            wanted = list(names)
        else:
            wanted = [a["name"] for a in (yield Call("GET", f"/v1/jobs/{job_id}/artifacts"))["data"]]
        created = missing_dirs(out)
        out.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        try:
            for n in wanted:
                written.append((yield from self._download(job_id, n, out / n)))
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            remove_dirs(created)
            raise
        return written

    # -- sweeps ------------------------------------------------------------------------------
    @operation
    def create_sweep(
        self, spec: dict[str, Any], *, tree: str | Path | None = None, idempotency_key: str | None = None
    ) -> Flow[dict[str, Any]]:
        """Create a sweep from ``spec`` (SweepCreate: cells, grid, hyperparameters ...) or, with ``tree``,
        from a zip/tar of a CoOp output directory (``spec`` then has no cells; ``dataset_map`` maps the
        tree's dataset names to dataset ids)."""
        headers = _key(idempotency_key or f"cli-{uuid.uuid4()}")
        if tree is None:
            return (yield Call("POST", "/v1/sweeps", json=spec, headers=headers))
        files = {"file": Upload(Path(tree), "application/octet-stream")}
        data = {"spec": json.dumps(spec)}
        return (yield Call("POST", "/v1/sweeps", data=data, files=files, headers=headers))

    @operation
    def get_sweep(self, sweep_id: str) -> Flow[dict[str, Any]]:
        return (yield Call("GET", f"/v1/sweeps/{sweep_id}"))

    @operation
    def list_sweeps(self, *, page_size: int = 100) -> Flow[list[dict[str, Any]]]:
        return (yield from self._paginate("/v1/sweeps", page_size=page_size))

    @operation
    def cancel_sweep(self, sweep_id: str) -> Flow[dict[str, Any]]:
        return (yield Call("POST", f"/v1/sweeps/{sweep_id}/cancel"))

    @operation
    def wait_sweep(
        self,
        sweep_id: str,
        *,
        interval: float = 2.0,
        timeout: float | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> Flow[dict[str, Any]]:
        """Poll until every job of the sweep has finished; returns the final sweep object."""
        return (yield from self._poll("sweep", sweep_id, interval, timeout, on_update))

    @operation
    def sweep_report(self, sweep_id: str, fmt: str = "json") -> Flow[bytes]:
        """The report as ``json`` | ``csv`` | ``tex`` | ``txt`` | ``html`` (bytes as served; ``txt`` is
        the fixed-width table for terminals)."""
        return (yield Call("GET", f"/v1/sweeps/{sweep_id}/report.{fmt}", raw=True))

    @operation
    def download_sweep_report(
        self, sweep_id: str, out_dir: str | Path, formats: tuple[str, ...] = REPORT_FORMATS
    ) -> Flow[list[Path]]:
        """Write ``<sweep>-report.<fmt>`` for each format into ``out_dir`` (all fetched, then written)."""
        reports = {}
        for fmt in formats:
            reports[fmt] = yield Call("GET", f"/v1/sweeps/{sweep_id}/report.{fmt}", raw=True)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for fmt, body in reports.items():
            dest = out / f"{sweep_id}-report.{fmt}"
            dest.write_bytes(body)
            paths.append(dest)
        return paths
