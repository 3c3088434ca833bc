"""The webhook dispatcher: sends the deliveries the outbox holds (``webhook_deliveries``), signed per the
Standard Webhooks spec, at least once.

One delivery is one transaction: it is claimed with ``SELECT ... FOR UPDATE SKIP LOCKED`` (so several
dispatchers never send the same delivery at once), sent, and its attempt recorded before the commit. A
dispatcher killed mid-send (SIGKILL, a lost machine) never commits: its row lock goes with its
connection and the delivery, still ``pending``, is sent again by the next pass of any dispatcher, with
the same ``webhook-id``. A 2xx within ``WEBHOOK_TIMEOUT`` is success; anything else (another status, a
redirect, which is never followed, a timeout, a refused connection, a target that now resolves to a
private address) is retried after the next delay of ``WEBHOOK_RETRY_SCHEDULE``, then the delivery is
``failed``. An endpoint with no success for ``WEBHOOK_DISABLE_AFTER_SECONDS`` is disabled (its
``disabled_reason`` says why); its pending deliveries wait until it is enabled again.

It runs as a thread of the reconciler (``mergetune reconcile``, and so ``mergetune serve --embedded``),
or alone: ``python -m mergetune.worker.webhooks``. On SQLite (the embedded mode, one process) there are
no row locks: run one dispatcher there.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select, update

from mergetune.common import webhooks
from mergetune.common.db import session_scope
from mergetune.common.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, utcnow
from mergetune.common.settings import Settings

logger = logging.getLogger(__name__)

USER_AGENT = "mergetune-webhooks/1"
#: Characters of an error message kept in an attempt row.
ERROR_CHARS = 500


def _client(settings: Settings) -> httpx.Client:
    return httpx.Client(
        timeout=settings.WEBHOOK_TIMEOUT,
        follow_redirects=False,
        trust_env=False,  # no proxy from the environment: the address checked is the one connected to
        headers={"user-agent": USER_AGENT},
    )


def send(
    settings: Settings, client: httpx.Client, endpoint: WebhookEndpoint, delivery: WebhookDelivery
) -> WebhookAttempt:
    """One attempt (no database access): sign now, POST, and say how it went."""
    started = time.monotonic()
    at = utcnow()
    status_code: int | None = None
    error: str | None = None
    try:
        webhooks.check_url(endpoint.url, allow_private=settings.WEBHOOKS_ALLOW_PRIVATE)
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": webhooks.signature_header(
                endpoint, delivery.event_id, timestamp, delivery.payload
            ),
        }
        # streamed and closed unread: the receiver's answer body is never downloaded
        with client.stream(
            "POST", endpoint.url, content=delivery.payload.encode("utf-8"), headers=headers
        ) as r:
            status_code = r.status_code
        if 300 <= status_code < 400:
            error = f"redirect to {r.headers.get('location', '?')!r} not followed"
    except webhooks.UnsafeTarget as exc:
        error = f"refused: {exc.message}"
    except httpx.TimeoutException:
        error = f"timeout after {settings.WEBHOOK_TIMEOUT:g} s"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    duration_ms = (time.monotonic() - started) * 1000.0
    ok = status_code is not None and 200 <= status_code < 300
    return WebhookAttempt(
        delivery_id=delivery.id,
        created_at=at,
        status_code=status_code,
        error=error[:ERROR_CHARS] if error else None,
        duration_ms=round(duration_ms, 1),
        success=ok,
    )


def _due(session: Any, now: datetime) -> WebhookDelivery | None:
    stmt = (
        select(WebhookDelivery)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(
            WebhookDelivery.status == "pending",
            WebhookDelivery.next_attempt_at <= now,
            WebhookEndpoint.enabled.is_(True),
        )
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(1)
    )
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True, of=WebhookDelivery)
    return session.scalar(stmt)


def deliver_next(settings: Settings, client: httpx.Client) -> WebhookAttempt | None:
    """Claim one due delivery, send it, record the attempt (one transaction); None when none is due."""
    with session_scope(settings.DATABASE_URL) as s:
        delivery = _due(s, utcnow())
        if delivery is None:
            return None
        endpoint = s.get(WebhookEndpoint, delivery.endpoint_id)
        assert endpoint is not None  # the foreign key
        attempt = send(settings, client, endpoint, delivery)
        s.add(attempt)
        now = utcnow()
        delivery.tries += 1
        if attempt.success:
            delivery.status = "succeeded"
            delivery.finished_at = now
            delivery.next_attempt_at = None
            s.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == endpoint.id, WebhookEndpoint.failing_since.is_not(None))
                .values(failing_since=None)
            )
            return attempt
        schedule = settings.webhook_retry_schedule
        if delivery.tries <= len(schedule):
            delivery.next_attempt_at = now + timedelta(seconds=schedule[delivery.tries - 1])
        else:
            delivery.status = "failed"
            delivery.finished_at = now
            delivery.next_attempt_at = None
            logger.warning(
                "webhook delivery %s (%s) to %s failed after %d attempts",
                delivery.id,
                delivery.event_type,
                endpoint.url,
                delivery.tries,
            )
        since = endpoint.failing_since
        if since is None:
            s.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == endpoint.id, WebhookEndpoint.failing_since.is_(None))
                .values(failing_since=attempt.created_at)
            )
        elif (now - since).total_seconds() >= settings.WEBHOOK_DISABLE_AFTER_SECONDS:
            reason = (
                f"disabled at {now:%Y-%m-%d %H:%M} UTC: no successful delivery since "
                f"{since:%Y-%m-%d %H:%M} UTC (last attempt: "
                f"{attempt.error or f'HTTP {attempt.status_code}'}); pending events wait until it is enabled"
            )
            s.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == endpoint.id, WebhookEndpoint.enabled.is_(True))
                .values(enabled=False, disabled_at=now, disabled_reason=reason)
            )
            logger.warning("webhook endpoint %s (%s) %s", endpoint.id, endpoint.url, reason)
        return attempt


def dispatch_once(settings: Settings, *, limit: int = 200, client: httpx.Client | None = None) -> int:
    """One pass: write the ``sweep.finished`` events still missing, then send due deliveries (at most
    ``limit``). Returns the number of attempts made."""
    with session_scope(settings.DATABASE_URL) as s:
        webhooks.finish_sweeps(s)
    own = client is None
    client = client or _client(settings)
    n = 0
    try:
        while n < limit and deliver_next(settings, client) is not None:
            n += 1
    finally:
        if own:
            client.close()
    return n


def run_forever(settings: Settings, stop: threading.Event | None = None) -> None:
    """Dispatch every WEBHOOK_POLL_INTERVAL seconds (at once again after a busy pass) until ``stop``."""
    stop = stop or threading.Event()
    logger.info(
        "webhook dispatcher: poll %.1f s, timeout %.0f s, retries after %s s",
        settings.WEBHOOK_POLL_INTERVAL,
        settings.WEBHOOK_TIMEOUT,
        settings.WEBHOOK_RETRY_SCHEDULE,
    )
    with _client(settings) as client:
        while not stop.is_set():
            n = 0
            try:
                n = dispatch_once(settings, client=client)
            except Exception as exc:  # noqa: BLE001 - the database may be down: try again next poll
                logger.warning("webhook dispatch pass failed: %s: %s", type(exc).__name__, exc)
            if n == 0:
                stop.wait(settings.WEBHOOK_POLL_INTERVAL)


def start_thread(settings: Settings, stop: threading.Event) -> threading.Thread:
    """Run the dispatcher in a daemon thread until ``stop`` is set."""
    thread = threading.Thread(
        target=run_forever, args=(settings, stop), name="mergetune-webhooks", daemon=True
    )
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    """``python -m mergetune.worker.webhooks [--once]``: the dispatcher alone (settings from the environment)."""
    from mergetune.common.settings import get_settings

    args = sys.argv[1:] if argv is None else argv
    settings = get_settings()
    logging.basicConfig(level=settings.LOG_LEVEL, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if "--once" in args:
        print(dispatch_once(settings))
        return 0
    try:
        run_forever(settings)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
