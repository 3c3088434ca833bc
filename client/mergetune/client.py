"""A small synchronous Python client of the MergeTune REST API (httpx), used by the CLI.

from mergetune.client import Client
with Client("http://127.0.0.1:8000", token) as c:
    ckpt = c.upload_checkpoint("model.pth.tar")
    ds = c.create_dataset("demo", "builtin")
    job = c.create_job(ckpt["id"], ds["id"], backbone={"model": "tiny-clip", "pretrained": "builtin"})
    job = c.wait_job(job["id"])
    c.download_artifacts(job["id"], "out/")
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
SWEEP_TERMINAL = TERMINAL


class ApiError(Exception):
    """An error answer of the API: HTTP status plus the ``{"error": {code, message, param}}`` body."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" (param: {param})" if param else ""))
        self.status, self.code, self.message, self.param = status, code, message, param


class Client:
    def __init__(
        self, base_url: str, token: str | None = None, *, timeout: float = 60.0, **kwargs: Any
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, **kwargs)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing ----------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self._http.request(method, path, **kwargs)
        _raise_for_error(r)
        return r.json() if r.content else None

    def _paginate(
        self, path: str, params: dict[str, Any] | None = None, page_size: int = 100
    ) -> Iterator[dict]:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        params["limit"] = page_size
        while True:
            page = self._request("GET", path, params=params)
            yield from page["data"]
            if not page.get("has_more"):
                return
            params["after"] = page["next_cursor"]

    # -- operations --------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._request("GET", "/healthz")

    def ready(self) -> dict[str, Any]:
        return self._request("GET", "/readyz")

    # -- checkpoints -------------------------------------------------------------------------
    def upload_checkpoint(
        self,
        path: str | Path,
        *,
        method: str | None = None,
        name: str | None = None,
        idempotency_key: str | None = None,
        class_token_position: str | None = None,
    ) -> dict[str, Any]:
        """Stream a checkpoint file (httpx reads it in chunks). ``class_token_position``: CoOp's
        CLASS_TOKEN_POSITION (end | middle | front), which its files do not record."""
        path = Path(path)
        fields = {"method": method, "name": name, "class_token_position": class_token_position}
        data = {k: v for k, v in fields.items() if v}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        with path.open("rb") as f:
            return self._request(
                "POST", "/v1/checkpoints", files={"file": (path.name, f)}, data=data, headers=headers
            )

    def get_checkpoint(self, checkpoint_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/checkpoints/{checkpoint_id}")

    def list_checkpoints(self) -> list[dict[str, Any]]:
        return list(self._paginate("/v1/checkpoints"))

    def delete_checkpoint(self, checkpoint_id: str) -> dict[str, Any]:
        return self._request("DELETE", f"/v1/checkpoints/{checkpoint_id}")

    # -- datasets ----------------------------------------------------------------------------
    def create_dataset(
        self,
        name: str,
        kind: str,
        path: str | None = None,
        *,
        coop_name: str | None = None,
        options: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        body = {"name": name, "kind": kind, "path": path, "coop_name": coop_name, "options": options}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._request(
            "POST", "/v1/datasets", json={k: v for k, v in body.items() if v is not None}, headers=headers
        )

    def get_dataset(self, dataset_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/datasets/{dataset_id}")

    def list_datasets(self) -> list[dict[str, Any]]:
        return list(self._paginate("/v1/datasets"))

    # -- jobs --------------------------------------------------------------------------------
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
    ) -> dict[str, Any]:
        """Create a job. An Idempotency-Key is always sent (a fresh one unless given) so that a retried
        request cannot start two jobs. ``eval_dataset_ids``: other datasets to evaluate the result on;
        ``protocol``: base2novel | all; ``class_token_position`` overrides the checkpoint's."""
        body: dict[str, Any] = {"checkpoint_id": checkpoint_id, "dataset_id": dataset_id}
        if backbone:
            body["backbone"] = backbone
        if hyperparameters:
            body["hyperparameters"] = hyperparameters
        if metadata:
            body["metadata"] = metadata
        if eval_dataset_ids:
            body["eval_dataset_ids"] = list(eval_dataset_ids)
        if protocol:
            body["protocol"] = protocol
        if class_token_position:
            body["prompt"] = {"class_token_position": class_token_position}
        headers = {"Idempotency-Key": idempotency_key or f"cli-{uuid.uuid4()}"}
        return self._request("POST", "/v1/jobs", json=body, headers=headers)

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/jobs/{job_id}")

    def list_jobs(self, *, status: str | None = None, dataset_id: str | None = None) -> list[dict[str, Any]]:
        return list(self._paginate("/v1/jobs", {"status": status, "dataset_id": dataset_id}))

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/jobs/{job_id}/cancel")

    def job_events(self, job_id: str, *, after: int | None = None, limit: int = 1000) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        return self._request("GET", f"/v1/jobs/{job_id}/events", params=params)

    def wait_job(
        self,
        job_id: str,
        *,
        interval: float = 1.0,
        timeout: float | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the job is succeeded, failed or cancelled; returns the final job object."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if on_update is not None:
                on_update(job)
            if job["status"] in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s")
            time.sleep(interval)

    # -- artifacts ---------------------------------------------------------------------------
    def list_artifacts(self, job_id: str) -> list[dict[str, Any]]:
        return self._request("GET", f"/v1/jobs/{job_id}/artifacts")["data"]

    def download_artifact(self, job_id: str, name: str, dest: str | Path) -> Path:
        """Stream one artifact to ``dest`` (a file path, or a directory to put ``name`` in)."""
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / name
        created = _missing_dirs(dest.parent)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        try:
            with self._http.stream("GET", f"/v1/jobs/{job_id}/artifacts/{name}") as r:
                if r.status_code >= 400:
                    r.read()
                    _raise_for_error(r)
                with tmp.open("wb") as f:
                    for chunk in r.iter_bytes(1024 * 1024):
                        f.write(chunk)
            tmp.replace(dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            _remove_dirs(created)
            raise
        return dest

    def download_artifacts(
        self, job_id: str, out_dir: str | Path, names: list[str] | None = None
    ) -> list[Path]:
        """Download ``names`` (default: every artifact) into ``out_dir``. All or nothing: when one fails,
        the files written so far and the folders this call created are removed before the error."""
        out = Path(out_dir)
        wanted = names or [a["name"] for a in self.list_artifacts(job_id)]
        created = _missing_dirs(out)
        out.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        try:
            for n in wanted:
                written.append(self.download_artifact(job_id, n, out / n))
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            _remove_dirs(created)
            raise
        return written

    # -- sweeps ------------------------------------------------------------------------------
    def create_sweep(
        self, spec: dict[str, Any], *, tree: str | Path | None = None, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Create a sweep from ``spec`` (SweepCreate: cells, grid, hyperparameters ...) or, with ``tree``,
        from a zip/tar of a CoOp output directory (``spec`` then has no cells; ``dataset_map`` maps the
        tree's dataset names to dataset ids)."""
        headers = {"Idempotency-Key": idempotency_key or f"cli-{uuid.uuid4()}"}
        if tree is None:
            return self._request("POST", "/v1/sweeps", json=spec, headers=headers)
        path = Path(tree)
        with path.open("rb") as f:
            return self._request(
                "POST",
                "/v1/sweeps",
                files={"file": (path.name, f, "application/octet-stream")},
                data={"spec": json.dumps(spec)},
                headers=headers,
            )

    def get_sweep(self, sweep_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/sweeps/{sweep_id}")

    def list_sweeps(self) -> list[dict[str, Any]]:
        return list(self._paginate("/v1/sweeps"))

    def cancel_sweep(self, sweep_id: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/sweeps/{sweep_id}/cancel")

    def wait_sweep(
        self,
        sweep_id: str,
        *,
        interval: float = 2.0,
        timeout: float | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until every job of the sweep has finished; returns the final sweep object."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            sweep = self.get_sweep(sweep_id)
            if on_update is not None:
                on_update(sweep)
            if sweep["status"] in SWEEP_TERMINAL:
                return sweep
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"sweep {sweep_id} still {sweep['status']} after {timeout} s")
            time.sleep(interval)

    def sweep_report(self, sweep_id: str, fmt: str = "json") -> bytes:
        """The report as ``json`` | ``csv`` | ``tex`` | ``html`` (bytes as served)."""
        r = self._http.get(f"/v1/sweeps/{sweep_id}/report.{fmt}")
        _raise_for_error(r)
        return r.content

    def download_sweep_report(
        self, sweep_id: str, out_dir: str | Path, formats: tuple[str, ...] = ("json", "csv", "tex", "html")
    ) -> list[Path]:
        reports = {fmt: self.sweep_report(sweep_id, fmt) for fmt in formats}  # all fetched, then written
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for fmt, body in reports.items():
            dest = out / f"{sweep_id}-report.{fmt}"
            dest.write_bytes(body)
            paths.append(dest)
        return paths


def _missing_dirs(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    for p in (path, *path.parents):
        if p.exists():
            break
        missing.append(p)
    return missing


def _remove_dirs(dirs: list[Path]) -> None:
    for d in dirs:  # deepest first; only if empty (never someone else's files)
        try:
            d.rmdir()
        except OSError:
            pass


def _raise_for_error(r: httpx.Response) -> None:
    if r.status_code < 400:
        return
    try:
        err = r.json()["error"]
        raise ApiError(r.status_code, err.get("code", "error"), err.get("message", ""), err.get("param"))
    except (ValueError, KeyError, TypeError):
        raise ApiError(r.status_code, "http_error", r.text[:500]) from None
