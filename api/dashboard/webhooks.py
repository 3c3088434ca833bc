"""``/webhooks``: the project's webhook endpoints (url, events, enabled or why disabled), the
registration form (the signing secret is shown once, on the page that answers the form), and one
endpoint's page ``/webhooks/{id}``: rotate the secret, enable, delete, and its delivery log (each
attempt's time, status code or error, duration) with a redeliver button per finished delivery.

Every action goes through the same service functions as ``/v1/webhooks`` (same checks and messages);
every POST carries the CSRF token."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from mergetune.api.dashboard.auth import Viewer, ViewerDep, check_csrf, to_login
from mergetune.api.dashboard.render import not_found, render
from mergetune.api.deps import SessionDep, SettingsDep
from mergetune.api.errors import ApiError, NotFound
from mergetune.api.schemas import WebhookCreate
from mergetune.api.services import webhooks as svc
from mergetune.common import webhooks as events
from mergetune.common.models import WebhookEndpoint

router = APIRouter(include_in_schema=False)

LIST_LIMIT = 100
DELIVERIES_PAGE = 50


def _endpoints(session: Session, viewer: Viewer) -> list[Any]:
    page = svc.list_webhooks(session, viewer.project_id, limit=LIST_LIMIT, after=None)
    return [svc.webhook_read(w) for w in page.items]


def _list_page(
    request: Request,
    session: Session,
    viewer: Viewer,
    *,
    status_code: int = 200,
    form: dict[str, Any] | None = None,
    error: str | None = None,
    error_param: str | None = None,
    created: Any = None,
    deleted: str = "",
) -> Response:
    return render(
        request,
        "webhooks.html",
        viewer,
        status_code=status_code,
        webhooks=_endpoints(session, viewer),
        event_types=events.EVENT_TYPES,
        form=form or {"events": list(events.EVENT_TYPES)},
        error=error,
        error_param=error_param,
        created=created,
        deleted=deleted,
    )


@router.get("/webhooks")
def webhook_list(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    deleted: Annotated[str, Query(max_length=64)] = "",
) -> Response:
    if viewer is None:
        return to_login(request)
    return _list_page(request, session, viewer, deleted=deleted)


@router.post("/webhooks")
async def register_webhook_form(
    request: Request, session: SessionDep, viewer: ViewerDep, settings: SettingsDep
) -> Response:
    """``POST /v1/webhooks`` from the form; the answer is the page showing the secret once (it never
    goes into a URL)."""
    if viewer is None:
        return to_login(request)
    raw = await request.form()
    if not check_csrf(viewer, _str(raw.get("csrf"))):
        return Response("bad CSRF token", status_code=403)
    url = (_str(raw.get("url")) or "").strip()
    chosen = [v for v in raw.getlist("events") if isinstance(v, str)]
    description = (_str(raw.get("description")) or "").strip() or None
    form = {"url": url, "events": chosen, "description": description or ""}

    def again(status_code: int, message: str, param: str | None) -> Response:
        return _list_page(
            request, session, viewer, status_code=status_code, form=form, error=message, error_param=param
        )

    try:
        body = WebhookCreate.model_validate({"url": url, "events": chosen, "description": description})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or None
        message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        if where == "events" and not chosen:
            message = "choose at least one event"
        return again(422, message, where)
    try:
        endpoint = await run_in_threadpool(svc.create_webhook, session, settings, viewer.project_id, body)
    except ApiError as exc:
        return again(exc.status_code, exc.message, exc.param)
    return _list_page(request, session, viewer, status_code=201, created=svc.with_secret(endpoint))


# ---------------------------------------------------------------------------------------- one endpoint


def _endpoint(session: Session, viewer: Viewer, webhook_id: str) -> WebhookEndpoint | None:
    try:
        return svc.get_webhook(session, viewer.project_id, webhook_id)
    except NotFound:
        return None


def _detail_page(
    request: Request,
    session: Session,
    viewer: Viewer,
    endpoint: WebhookEndpoint,
    *,
    after: str | None = None,
    secret: str | None = None,
    notice: str = "",
    error: str = "",
) -> Response:
    page, attempts = svc.list_deliveries(
        session, viewer.project_id, endpoint.id, limit=DELIVERIES_PAGE, after=after or None
    )
    deliveries = [svc.delivery_read(d, attempts[d.id]) for d in page.items]
    return render(
        request,
        "webhook.html",
        viewer,
        webhook=svc.webhook_read(endpoint),
        deliveries=deliveries,
        next_cursor=page.next_cursor if page.has_more else None,
        secret=secret,
        notice=notice,
        error=error,
    )


@router.get("/webhooks/{webhook_id}")
def webhook_detail(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    webhook_id: str,
    after: Annotated[str, Query(max_length=64)] = "",
    notice: Annotated[str, Query(max_length=200)] = "",
    error: Annotated[str, Query(max_length=500)] = "",
) -> Response:
    if viewer is None:
        return to_login(request)
    endpoint = _endpoint(session, viewer, webhook_id)
    if endpoint is None:
        return not_found(request, viewer, f"webhook {webhook_id}")
    try:
        return _detail_page(request, session, viewer, endpoint, after=after, notice=notice, error=error)
    except ApiError as exc:  # a malformed cursor
        return render(request, "not_found.html", viewer, status_code=exc.status_code, what=exc.message)


async def _checked(
    request: Request, session: Session, viewer: Viewer | None, webhook_id: str
) -> tuple[Viewer, WebhookEndpoint] | Response:
    """The viewer and its endpoint for a POST, or the response refusing it (login, CSRF, 404)."""
    if viewer is None:
        return to_login(request)
    form = await request.form()
    if not check_csrf(viewer, _str(form.get("csrf"))):
        return Response("bad CSRF token", status_code=403)
    endpoint = _endpoint(session, viewer, webhook_id)
    if endpoint is None:
        return not_found(request, viewer, f"webhook {webhook_id}")
    return viewer, endpoint


def _back(webhook_id: str, **query: str) -> RedirectResponse:
    suffix = f"?{urlencode(query)}" if query else ""
    return RedirectResponse(f"/webhooks/{quote(webhook_id)}{suffix}", status_code=303)


@router.post("/webhooks/{webhook_id}/rotate-secret")
async def rotate_secret_form(
    request: Request, session: SessionDep, viewer: ViewerDep, settings: SettingsDep, webhook_id: str
) -> Response:
    checked = await _checked(request, session, viewer, webhook_id)
    if isinstance(checked, Response):
        return checked
    who, endpoint = checked
    endpoint = await run_in_threadpool(svc.rotate_secret, session, settings, who.project_id, endpoint.id)
    return _detail_page(request, session, who, endpoint, secret=endpoint.secret)


@router.post("/webhooks/{webhook_id}/enable")
async def enable_form(request: Request, session: SessionDep, viewer: ViewerDep, webhook_id: str) -> Response:
    checked = await _checked(request, session, viewer, webhook_id)
    if isinstance(checked, Response):
        return checked
    who, endpoint = checked
    await run_in_threadpool(svc.enable_webhook, session, who.project_id, endpoint.id)
    return _back(endpoint.id, notice="Enabled: pending deliveries go out at the next pass.")


@router.post("/webhooks/{webhook_id}/delete")
async def delete_form(request: Request, session: SessionDep, viewer: ViewerDep, webhook_id: str) -> Response:
    checked = await _checked(request, session, viewer, webhook_id)
    if isinstance(checked, Response):
        return checked
    who, endpoint = checked
    endpoint_id = endpoint.id
    await run_in_threadpool(svc.delete_webhook, session, who.project_id, endpoint_id)
    return RedirectResponse(f"/webhooks?{urlencode({'deleted': endpoint_id})}", status_code=303)


@router.post("/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver")
async def redeliver_form(
    request: Request, session: SessionDep, viewer: ViewerDep, webhook_id: str, delivery_id: str
) -> Response:
    checked = await _checked(request, session, viewer, webhook_id)
    if isinstance(checked, Response):
        return checked
    who, endpoint = checked
    try:
        await run_in_threadpool(svc.redeliver, session, who.project_id, endpoint.id, delivery_id)
    except ApiError as exc:  # still pending (409) or not this endpoint's delivery (404)
        return _back(endpoint.id, error=exc.message)
    return _back(endpoint.id, notice=f"Delivery {delivery_id} queued again (same webhook-id).")


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
