"""Webhooks shared by the API and the workers: event types, secrets and signatures (Standard Webhooks),
the check of target addresses, the JSON of the objects sent, and the outbox writes.

Events are written as :class:`mergetune.common.models.WebhookDelivery` rows (one per subscribed
endpoint) by :func:`enqueue_job_finished` in the same transaction that moves a job to its terminal
status, so that an event exists exactly when its cause was committed. ``sweep.finished`` is written
when the last job of a sweep finishes (:func:`note_sweep_finished`, non-blocking) or, when that
transaction could not tell (two last jobs finishing at once), by the dispatcher's periodic
:func:`finish_sweeps`. Sending is :mod:`mergetune.worker.webhooks`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from mergetune.common.models import (
    TERMINAL_STATUSES,
    Job,
    JobStatus,
    Sweep,
    WebhookDelivery,
    WebhookEndpoint,
    new_id,
    utcnow,
)

JOB_SUCCEEDED = "job.succeeded"
JOB_FAILED = "job.failed"
JOB_CANCELLED = "job.cancelled"
JOB_TIMED_OUT = "job.timed_out"
JOB_WARNING = "job.warning"
SWEEP_FINISHED = "sweep.finished"
#: Every event type an endpoint may subscribe to.
EVENT_TYPES: tuple[str, ...] = (
    JOB_SUCCEEDED,
    JOB_FAILED,
    JOB_CANCELLED,
    JOB_TIMED_OUT,
    JOB_WARNING,
    SWEEP_FINISHED,
)

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32

_TERMINAL = {s.value for s in TERMINAL_STATUSES}
_JOB_EVENTS = {
    JobStatus.succeeded.value: JOB_SUCCEEDED,
    JobStatus.failed.value: JOB_FAILED,
    JobStatus.cancelled.value: JOB_CANCELLED,
    JobStatus.timed_out.value: JOB_TIMED_OUT,
}


# -- secrets and signatures -----------------------------------------------------------------------
def new_secret() -> str:
    """``whsec_`` + base64 of 32 random bytes (the Standard Webhooks format)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def sign(secret: str, msg_id: str, timestamp: int, body: str | bytes) -> str:
    """``v1,`` + base64(HMAC-SHA256(key = the decoded secret, ``{msg_id}.{timestamp}.{body}``))."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    raw = body.encode("utf-8") if isinstance(body, str) else body
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + raw, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def signature_header(
    endpoint: WebhookEndpoint, msg_id: str, timestamp: int, body: str, now: datetime | None = None
) -> str:
    """The ``webhook-signature`` value: the current secret's signature, then, during a rotation's grace
    period, the previous secret's (space-separated)."""
    now = now or utcnow()
    sigs = [sign(endpoint.secret, msg_id, timestamp, body)]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and expires > now:
        sigs.append(sign(endpoint.previous_secret, msg_id, timestamp, body))
    return " ".join(sigs)


# -- target addresses ------------------------------------------------------------------------------
class UnsafeTarget(ValueError):
    """A webhook URL that may not be used; ``code`` is the API error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _refused(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # not is_global: loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7), link-local (169.254/16
    # with the clouds' metadata address, fe80::/10), shared 100.64/10, unspecified, reserved.
    return not ip.is_global or ip.is_multicast


def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse (:class:`UnsafeTarget`) a URL that is not http(s) with a host, or whose host resolves to a
    loopback, private, link-local, metadata or otherwise non-public address (unless ``allow_private``)."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise UnsafeTarget("invalid_url", f"url is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeTarget("invalid_url", "url must be an http:// or https:// URL with a host")
    if allow_private:
        return
    host = parts.hostname
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UnsafeTarget("unresolvable_url", f"url's host {host!r} does not resolve: {exc}") from None
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if _refused(ip):
            raise UnsafeTarget(
                "private_address",
                f"url's host {host!r} resolves to {ip}, a loopback, private, link-local or reserved "
                "address; webhooks go to public addresses only",
            )


# -- the objects sent (the same JSON as GET /v1/jobs/{id} and GET /v1/sweeps/{id}) ---------------
def _ts(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _progress(p: dict[str, Any] | None) -> dict[str, Any] | None:
    if not p:
        return None
    out: dict[str, Any] = {k: p.get(k) for k in ("epoch", "epochs", "step", "steps")}
    out["loss"] = float(p["loss"]) if p.get("loss") is not None else None
    out.update({k: v for k, v in p.items() if k not in out})
    return out


def _error(e: dict[str, Any] | None) -> dict[str, Any] | None:
    if not e:
        return None
    out = {"code": e.get("code", "error"), "message": e.get("message", ""), "user_error": e.get("user_error")}
    out.update({k: v for k, v in e.items() if k not in out})
    return out


def job_object(job: Job) -> dict[str, Any]:
    """The job as ``GET /v1/jobs/{id}`` answers it once finished (no queue position, no estimate).
    Mirrors ``mergetune.api.services.jobs.job_read`` (which this package may not import);
    tests/api/test_api_webhooks.py checks that the two agree."""
    out = {
        "id": job.id,
        "object": "job",
        "status": job.status,
        "job_type": job.job_type,
        "checkpoint_id": job.checkpoint_id,
        "dataset_id": job.dataset_id,
        "backbone": job.backbone,
        "protocol": job.protocol or "base2novel",
        "prompt": job.prompt,
        "hyperparameters": job.hyperparameters,
        "metadata": job.metadata_ or {},
        "eval_dataset_ids": list(job.eval_dataset_ids or []),
        "progress": _progress(job.progress),
        "metrics": job.metrics,
        "verdict": job.verdict,
        "error": _error(job.error),
        "cancel_requested": bool(job.cancel_requested),
        "priority": job.priority or "normal",
        "device_seconds": round(float(job.device_seconds or 0.0), 3),
        "max_runtime_seconds": job.max_runtime_seconds,
        "resume_from": job.resume_from_job_id,
        "mlflow": job.mlflow,
        "queue": None,
        "queue_position": None,
        "created_at": _ts(job.created_at),
        "queued_at": _ts(job.queued_at),
        "started_at": _ts(job.started_at),
        "finished_at": _ts(job.finished_at),
        "estimated_finish": None,
        "estimated_finish_range": None,
        "tags": [str(t) for t in job.tags or []],
        "notes": job.notes,
    }
    return out


def _index(job: Job) -> tuple[int, int]:
    meta = job.metadata_ or {}
    try:
        return int(meta.get("sweep_point", 0)), int(meta.get("sweep_cell", 0))
    except (TypeError, ValueError):
        return 0, 0


def sweep_object(sweep: Sweep, jobs: Sequence[Job]) -> dict[str, Any]:
    """A finished sweep as ``GET /v1/sweeps/{id}`` answers it (every job finished); mirrors
    ``mergetune.api.services.sweeps.sweep_read``."""
    jobs = sorted(jobs, key=_index)
    counts = {s: 0 for s in ("queued", "running", "succeeded", "failed", "cancelled")}
    for j in jobs:
        counts[j.status if j.status in _TERMINAL else "running"] += 1
    if sweep.cancel_requested:
        status = "cancelled"
    else:
        status = "succeeded" if all(j.status == JobStatus.succeeded.value for j in jobs) else "failed"
    spec = sweep.spec
    out = {
        "id": sweep.id,
        "object": "sweep",
        "name": sweep.name,
        "status": status,
        "backbone": spec["backbone"],
        "protocol": spec["protocol"],
        "prompt": spec.get("prompt"),
        "hyperparameters": spec["hyperparameters"],
        "grid": spec["grid"],
        "points": spec["points"],
        "selection": spec["selection"],
        "cells": [
            {"index": i, **{k: c[k] for k in ("dataset", "dataset_id", "checkpoint_id", "seed", "source")}}
            for i, c in enumerate(sweep.cells)
        ],
        "jobs": [
            {"id": j.id, "cell": c, "point": p, "status": j.status, "fraction": 1.0, "metrics": j.metrics}
            for j in jobs
            for p, c in [_index(j)]
        ],
        "progress": {"jobs": len(jobs), **counts, "fraction": 1.0 if jobs else 0.0},
        "source": sweep.source,
        "cancel_requested": bool(sweep.cancel_requested),
        "priority": sweep.priority or "normal",
        "created_at": _ts(sweep.created_at),
    }
    return out


def event_body(event_type: str, data: dict[str, Any], at: datetime) -> str:
    """The exact body sent for an event (stored once, sent identically on every attempt)."""
    return json.dumps({"type": event_type, "timestamp": _ts(at), "data": data}, separators=(",", ":"))


# -- the outbox --------------------------------------------------------------------------------------
def _endpoints(session: Session, project_id: str) -> list[WebhookEndpoint]:
    """The project's endpoints, enabled or not: a disabled endpoint keeps its events for later."""
    return list(session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.project_id == project_id)))


def enqueue_event(
    session: Session,
    endpoints: Iterable[WebhookEndpoint],
    event_type: str,
    data: dict[str, Any],
    now: datetime,
) -> int:
    targets = [e for e in endpoints if event_type in (e.events or [])]
    if not targets:
        return 0
    event_id = new_id("msg")
    body = event_body(event_type, data, now)
    for endpoint in targets:
        session.add(
            WebhookDelivery(
                endpoint_id=endpoint.id,
                event_id=event_id,
                event_type=event_type,
                payload=body,
                status="pending",
                tries=0,
                next_attempt_at=now,
                created_at=now,
            )
        )
    return len(targets)


def enqueue_job_finished(session: Session, job: Job, now: datetime | None = None) -> int:
    """Write the events of a job that has just reached a terminal status (call in that transaction):
    ``job.succeeded`` (plus ``job.warning`` when its verdict has warnings), ``job.failed``,
    ``job.cancelled`` or ``job.timed_out``; then, for a sweep's job, ``sweep.finished`` if it was the last one."""
    now = now or utcnow()
    n = 0
    event_type = _JOB_EVENTS.get(str(job.status))
    endpoints = _endpoints(session, job.project_id)
    if event_type is not None and endpoints:
        data = job_object(job)
        n += enqueue_event(session, endpoints, event_type, data, now)
        warnings = (job.verdict or {}).get("warnings") if event_type == JOB_SUCCEEDED else None
        if warnings:
            n += enqueue_event(session, endpoints, JOB_WARNING, data, now)
    if job.sweep_id is not None:
        n += note_sweep_finished(session, job.sweep_id, now=now, endpoints=endpoints)
    return n


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def note_sweep_finished(
    session: Session,
    sweep_id: str,
    *,
    now: datetime | None = None,
    endpoints: list[WebhookEndpoint] | None = None,
) -> int:
    """If every job of the sweep has finished, stamp ``sweeps.finished_at`` and write ``sweep.finished``.

    Never waits: a sweep row another transaction holds is skipped (``SKIP LOCKED``), and so is what
    this transaction cannot see yet (a job finishing concurrently): :func:`finish_sweeps` catches both."""
    now = now or utcnow()
    stmt = select(Sweep).where(Sweep.id == sweep_id, Sweep.finished_at.is_(None))
    if _is_postgres(session):
        stmt = stmt.with_for_update(skip_locked=True)
    sweep = session.scalar(stmt)
    if sweep is None:
        return 0
    jobs = list(session.scalars(select(Job).where(Job.sweep_id == sweep.id)))
    if any(j.status not in _TERMINAL for j in jobs):
        return 0
    sweep.finished_at = now
    endpoints = _endpoints(session, sweep.project_id) if endpoints is None else endpoints
    if not endpoints:
        return 0
    return enqueue_event(session, endpoints, SWEEP_FINISHED, sweep_object(sweep, jobs), now)


def finish_sweeps(session: Session, *, limit: int = 100) -> int:
    """Sweeps whose jobs have all finished but that have no ``finished_at`` yet: stamp them and write
    their ``sweep.finished`` events (the dispatcher runs this every pass). Returns the events written."""
    open_job = (
        select(Job.id).where(Job.sweep_id == Sweep.id, Job.status.not_in(sorted(_TERMINAL))).correlate(Sweep)
    )
    stmt = select(Sweep.id).where(Sweep.finished_at.is_(None), ~exists(open_job)).limit(limit)
    n = 0
    for sweep_id in list(session.scalars(stmt)):
        n += note_sweep_finished(session, sweep_id)
    return n
