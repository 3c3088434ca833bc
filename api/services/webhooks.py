"""Webhook endpoints of a project: registration (the target is checked for SSRF), reads, deletion, secret
rotation and the delivery log. Nothing here sends anything: the dispatcher
(:mod:`mergetune.worker.webhooks`) does, from the outbox rows."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mergetune.api.errors import Conflict, NotFound, Unprocessable
from mergetune.api.schemas import (
    WebhookAttemptRead,
    WebhookCreate,
    WebhookDeliveryRead,
    WebhookRead,
    WebhookWithSecret,
)
from mergetune.common import repositories as repo
from mergetune.common import webhooks
from mergetune.common.db import rowcount
from mergetune.common.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, utcnow
from mergetune.common.settings import Settings

log = logging.getLogger(__name__)


def check_target(settings: Settings, url: str) -> str:
    url = url.strip()
    try:
        webhooks.check_url(url, allow_private=settings.WEBHOOKS_ALLOW_PRIVATE)
    except webhooks.UnsafeTarget as exc:
        raise Unprocessable(exc.message, code=exc.code, param="url") from None
    return url


def check_events(events: list[str]) -> list[str]:
    out: list[str] = []
    for i, name in enumerate(events):
        if name not in webhooks.EVENT_TYPES:
            raise Unprocessable(
                f"unknown event {name!r}; one of {', '.join(webhooks.EVENT_TYPES)}",
                code="unknown_event",
                param=f"events[{i}]",
            )
        if name not in out:
            out.append(name)
    return out


def webhook_read(endpoint: WebhookEndpoint) -> WebhookRead:
    return WebhookRead(
        id=endpoint.id,
        url=endpoint.url,
        events=[str(e) for e in endpoint.events or []],
        description=endpoint.description,
        enabled=endpoint.enabled,
        disabled_at=endpoint.disabled_at,
        disabled_reason=endpoint.disabled_reason,
        failing_since=endpoint.failing_since,
        created_at=endpoint.created_at,
        secret_rotated_at=endpoint.secret_rotated_at,
        previous_secret_expires_at=endpoint.previous_secret_expires_at
        if endpoint.previous_secret
        and endpoint.previous_secret_expires_at
        and endpoint.previous_secret_expires_at > utcnow()
        else None,
    )


def with_secret(endpoint: WebhookEndpoint) -> WebhookWithSecret:
    return WebhookWithSecret(**webhook_read(endpoint).model_dump(), secret=endpoint.secret)


def create_webhook(
    session: Session, settings: Settings, project_id: str, body: WebhookCreate
) -> WebhookEndpoint:
    events = check_events(body.events)
    url = check_target(settings, body.url)
    endpoint = WebhookEndpoint(
        project_id=project_id,
        url=url,
        events=events,
        description=body.description,
        secret=webhooks.new_secret(),
        enabled=True,
        created_at=utcnow(),
    )
    session.add(endpoint)
    session.commit()
    log.info("webhook %s registered for %s (%s)", endpoint.id, url, ", ".join(events))
    return endpoint


def get_webhook(session: Session, project_id: str, webhook_id: str) -> WebhookEndpoint:
    endpoint = session.scalar(
        select(WebhookEndpoint).where(
            WebhookEndpoint.id == webhook_id, WebhookEndpoint.project_id == project_id
        )
    )
    if endpoint is None:
        raise NotFound(f"webhook {webhook_id!r} not found", param="id")
    return endpoint


def list_webhooks(
    session: Session, project_id: str, *, limit: int, after: str | None
) -> repo.Page[WebhookEndpoint]:
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.project_id == project_id)
    return repo.paginate(session, stmt, WebhookEndpoint.id, limit=limit, after=after)


def delete_webhook(session: Session, project_id: str, webhook_id: str) -> None:
    """Remove the endpoint with its deliveries (pending ones are never sent)."""
    endpoint = get_webhook(session, project_id, webhook_id)
    session.delete(endpoint)
    session.commit()


def rotate_secret(session: Session, settings: Settings, project_id: str, webhook_id: str) -> WebhookEndpoint:
    """A new secret; the previous one keeps signing (a second signature) for WEBHOOK_SECRET_GRACE_SECONDS."""
    endpoint = get_webhook(session, project_id, webhook_id)
    now = utcnow()
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_secret_expires_at = now + timedelta(seconds=settings.WEBHOOK_SECRET_GRACE_SECONDS)
    endpoint.secret = webhooks.new_secret()
    endpoint.secret_rotated_at = now
    session.commit()
    return endpoint


def enable_webhook(session: Session, project_id: str, webhook_id: str) -> WebhookEndpoint:
    """Enable a disabled endpoint again: its pending deliveries go out at the next pass."""
    endpoint = get_webhook(session, project_id, webhook_id)
    endpoint.enabled = True
    endpoint.disabled_at = None
    endpoint.disabled_reason = None
    endpoint.failing_since = None
    session.commit()
    return endpoint


def delivery_read(delivery: WebhookDelivery, attempts: list[WebhookAttempt]) -> WebhookDeliveryRead:
    return WebhookDeliveryRead(
        id=delivery.id,
        webhook_id=delivery.endpoint_id,
        event_id=delivery.event_id,
        type=delivery.event_type,
        status=delivery.status,
        next_attempt_at=delivery.next_attempt_at,
        created_at=delivery.created_at,
        finished_at=delivery.finished_at,
        attempts=[
            WebhookAttemptRead(
                at=a.created_at,
                status_code=a.status_code,
                error=a.error,
                duration_ms=a.duration_ms,
                success=a.success,
            )
            for a in attempts
        ],
    )


def attempts_of(session: Session, delivery_ids: list[str]) -> dict[str, list[WebhookAttempt]]:
    out: dict[str, list[WebhookAttempt]] = {d: [] for d in delivery_ids}
    if delivery_ids:
        rows = session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(delivery_ids))
            .order_by(WebhookAttempt.id)
        )
        for a in rows:
            out[a.delivery_id].append(a)
    return out


def list_deliveries(
    session: Session, project_id: str, webhook_id: str, *, limit: int, after: str | None
) -> tuple[repo.Page[WebhookDelivery], dict[str, list[WebhookAttempt]]]:
    endpoint = get_webhook(session, project_id, webhook_id)
    stmt = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
    page = repo.paginate(session, stmt, WebhookDelivery.id, limit=limit, after=after)
    return page, attempts_of(session, [d.id for d in page.items])


def redeliver(session: Session, project_id: str, webhook_id: str, delivery_id: str) -> WebhookDelivery:
    """Send a finished delivery again (same ``webhook-id`` and body, a fresh retry schedule); 409 while
    it is still pending."""
    endpoint = get_webhook(session, project_id, webhook_id)
    delivery = session.scalar(
        select(WebhookDelivery).where(
            WebhookDelivery.id == delivery_id, WebhookDelivery.endpoint_id == endpoint.id
        )
    )
    if delivery is None:
        raise NotFound(f"delivery {delivery_id!r} not found", param="delivery_id")
    # Conditional: a pending row may be locked by a dispatcher sending it; never wait for it here.
    now = utcnow()
    n = rowcount(
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery.id, WebhookDelivery.status.in_(["succeeded", "failed"]))
            .values(status="pending", tries=0, next_attempt_at=now, finished_at=None)
            .execution_options(synchronize_session=False)
        )
    )
    if not n:
        raise Conflict(
            f"delivery {delivery.id} is still pending (next attempt at {delivery.next_attempt_at})",
            code="delivery_pending",
            param="delivery_id",
        )
    session.commit()
    session.refresh(delivery)
    return delivery
