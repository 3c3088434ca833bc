from __future__ import annotations

from fastapi import APIRouter, status

from mergetune.api.deps import PageDep, PrincipalDep, SessionDep, SettingsDep
from mergetune.api.errors import error_responses
from mergetune.api.schemas import (
    DeletedRead,
    WebhookCreate,
    WebhookDeliveryList,
    WebhookDeliveryRead,
    WebhookList,
    WebhookRead,
    WebhookWithSecret,
)
from mergetune.api.services import webhooks as svc

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=error_responses(401, 422))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookWithSecret,
    responses=error_responses(400, 401, 422),
    summary="Register a webhook endpoint; the answer shows its signing secret once",
)
def post_webhook(
    body: WebhookCreate, principal: PrincipalDep, settings: SettingsDep, session: SessionDep
) -> WebhookWithSecret:
    return svc.with_secret(svc.create_webhook(session, settings, principal.project_id, body))


@router.get("", response_model=WebhookList, responses=error_responses(401, 422))
def list_webhooks(principal: PrincipalDep, session: SessionDep, page: PageDep) -> WebhookList:
    p = svc.list_webhooks(session, principal.project_id, limit=page.limit, after=page.after)
    return WebhookList(
        data=[svc.webhook_read(w) for w in p.items], has_more=p.has_more, next_cursor=p.next_cursor
    )


@router.get("/{webhook_id}", response_model=WebhookRead, responses=error_responses(401, 404))
def get_webhook(webhook_id: str, principal: PrincipalDep, session: SessionDep) -> WebhookRead:
    return svc.webhook_read(svc.get_webhook(session, principal.project_id, webhook_id))


@router.delete("/{webhook_id}", response_model=DeletedRead, responses=error_responses(401, 404))
def delete_webhook(webhook_id: str, principal: PrincipalDep, session: SessionDep) -> DeletedRead:
    """Removes the endpoint and its delivery log; its pending events are not sent."""
    svc.delete_webhook(session, principal.project_id, webhook_id)
    return DeletedRead(id=webhook_id, object="webhook")


@router.post(
    "/{webhook_id}/rotate-secret",
    response_model=WebhookWithSecret,
    responses=error_responses(401, 404),
    summary="New signing secret (shown once); the previous one still signs during the grace period",
)
def rotate_secret(
    webhook_id: str, principal: PrincipalDep, settings: SettingsDep, session: SessionDep
) -> WebhookWithSecret:
    return svc.with_secret(svc.rotate_secret(session, settings, principal.project_id, webhook_id))


@router.post("/{webhook_id}/enable", response_model=WebhookRead, responses=error_responses(401, 404))
def enable_webhook(webhook_id: str, principal: PrincipalDep, session: SessionDep) -> WebhookRead:
    """Enable an endpoint disabled after failing too long; its pending events go out again."""
    return svc.webhook_read(svc.enable_webhook(session, principal.project_id, webhook_id))


@router.get(
    "/{webhook_id}/deliveries", response_model=WebhookDeliveryList, responses=error_responses(401, 404, 422)
)
def list_deliveries(
    webhook_id: str, principal: PrincipalDep, session: SessionDep, page: PageDep
) -> WebhookDeliveryList:
    p, attempts = svc.list_deliveries(
        session, principal.project_id, webhook_id, limit=page.limit, after=page.after
    )
    return WebhookDeliveryList(
        data=[svc.delivery_read(d, attempts[d.id]) for d in p.items],
        has_more=p.has_more,
        next_cursor=p.next_cursor,
    )


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WebhookDeliveryRead,
    responses=error_responses(401, 404, 409),
    summary="Send a finished delivery again (same webhook-id and body)",
)
def redeliver(
    webhook_id: str, delivery_id: str, principal: PrincipalDep, session: SessionDep
) -> WebhookDeliveryRead:
    d = svc.redeliver(session, principal.project_id, webhook_id, delivery_id)
    return svc.delivery_read(d, svc.attempts_of(session, [d.id])[d.id])
