"""Webhooks: a namespace's subscriptions to events, and the record of their deliveries."""

from __future__ import annotations

from typing import Any

from connexion.lifecycle import ConnexionResponse
from sqlmodel import col, delete, select

from kiln.core.problems import FieldError, Problem, not_found
from kiln.domain import access, events, webhook_targets
from kiln.http import hal
from kiln.http.auth import current_principal
from kiln.http.context import current_app
from kiln.http.operations import read, unit
from kiln.http.pagination import paginate
from kiln.store.db import session, utcnow
from models import DeliveryAttempt, Webhook, WebhookDelivery

NS = "/api/v1/namespaces"


def _href(webhook: Webhook) -> str:
    return f"{NS}/{webhook.namespace_id}/webhooks/{webhook.id}"


def represent_webhook(webhook: Webhook) -> hal.Body:
    href = _href(webhook)
    return {
        "id": webhook.id,
        "namespace_id": webhook.namespace_id,
        "payload_url": webhook.payload_url,
        "events": webhook.events.split(),
        "active": webhook.active,
        "has_secret": webhook.secret is not None,
        "created_at": webhook.created_at,
        "updated_at": webhook.updated_at,
        "_links": {
            "self": hal.link(href),
            "namespace": hal.link(f"{NS}/{webhook.namespace_id}"),
            "deliveries": hal.link(f"{href}/deliveries"),
            "pings": hal.link(f"{href}/pings"),
        },
    }


def represent_delivery(
    webhook: Webhook, delivery: WebhookDelivery, attempts: list[DeliveryAttempt]
) -> hal.Body:
    return {
        "id": delivery.id,
        "guid": delivery.guid,
        "event": delivery.event,
        "status": delivery.status,
        "attempts": [
            {
                "response_code": a.response_code,
                "error": a.error,
                "duration_ms": a.duration_ms,
                "created_at": a.created_at,
            }
            for a in attempts
        ],
        "next_attempt_at": delivery.next_attempt_at,
        "created_at": delivery.created_at,
        "finished_at": delivery.finished_at,
        "_links": {
            "self": hal.link(f"{_href(webhook)}/deliveries/{delivery.id}"),
            "webhook": hal.link(_href(webhook)),
        },
    }


def _namespace_for(namespace_id: int, *, manage: bool) -> None:
    """Members see a namespace's webhooks; only its owner manages them."""
    _, _, role = access.find_readable(current_principal(), namespace_id)
    if role is access.Role.reader or (manage and role is not access.Role.owner):
        raise Problem(
            "permission_denied",
            "Only the namespace's owner manages its webhooks."
            if manage
            else f"You do not own or collaborate in namespace {namespace_id}.",
        )


def _find(namespace_id: int, webhook_id: int, *, manage: bool = False) -> Webhook:
    _namespace_for(namespace_id, manage=manage)
    webhook = (
        session()
        .exec(select(Webhook).where(Webhook.id == webhook_id, Webhook.namespace_id == namespace_id))
        .one_or_none()
    )
    if webhook is None:
        raise not_found("Webhook", webhook_id)
    return webhook


async def _check_target(url: str) -> None:
    settings = current_app().settings
    try:
        await webhook_targets.check(
            url,
            allow_private=settings.webhooks_allow_private,
            allow_http=settings.webhooks_allow_http,
        )
    except webhook_targets.TargetRefused as exc:
        raise Problem(
            "invalid_value",
            str(exc),
            errors=[FieldError("refused", str(exc), pointer="/payload_url")],
        ) from None


def list_webhooks(id: int, limit: int = 25, after: str | None = None) -> ConnexionResponse:
    _namespace_for(id, manage=False)
    page = paginate(
        select(Webhook).where(Webhook.namespace_id == id), Webhook.id, limit=limit, after=after
    )
    return hal.collection("webhooks", [represent_webhook(w) for w in page.rows], page)


async def create_webhook(id: int, body: dict[str, Any]) -> ConnexionResponse:
    await read(lambda: _namespace_for(id, manage=True))
    await _check_target(body["payload_url"])

    def create() -> ConnexionResponse:
        _namespace_for(id, manage=True)
        secret = body.get("secret")
        webhook = Webhook(
            namespace_id=id,
            payload_url=body["payload_url"],
            secret=current_app().secrets.encrypt(secret) if secret else None,
            events=" ".join(body["events"]),
            active=body.get("active", True),
        )
        session().add(webhook)
        session().flush()
        return hal.created(represent_webhook(webhook))

    return await unit(create)


def get_webhook(id: int, webhook_id: int) -> ConnexionResponse:
    return hal.resource(represent_webhook(_find(id, webhook_id)))


async def update_webhook(id: int, webhook_id: int, body: dict[str, Any]) -> ConnexionResponse:
    await read(lambda: _find(id, webhook_id, manage=True))
    if "payload_url" in body:
        await _check_target(body["payload_url"])

    def update() -> ConnexionResponse:
        webhook = _find(id, webhook_id, manage=True)
        hal.require_unchanged(represent_webhook(webhook))
        if "payload_url" in body:
            webhook.payload_url = body["payload_url"]
        if "secret" in body:
            secret = body["secret"]
            webhook.secret = current_app().secrets.encrypt(secret) if secret else None
        if "events" in body:
            webhook.events = " ".join(body["events"])
        if "active" in body:
            webhook.active = body["active"]
        webhook.updated_at = utcnow()
        session().flush()
        return hal.resource(represent_webhook(webhook))

    return await unit(update)


def delete_webhook(id: int, webhook_id: int) -> ConnexionResponse:
    webhook = _find(id, webhook_id, manage=True)
    hal.require_unchanged(represent_webhook(webhook))
    session().exec(delete(Webhook).where(col(Webhook.id) == webhook_id))
    return hal.no_content()


def list_webhook_deliveries(
    id: int, webhook_id: int, limit: int = 25, after: str | None = None
) -> ConnexionResponse:
    webhook = _find(id, webhook_id)
    page = paginate(
        select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id),
        WebhookDelivery.id,
        limit=limit,
        after=after,
    )
    attempts = _attempts([d.id for d in page.rows])
    items = [represent_delivery(webhook, d, attempts.get(d.id or 0, [])) for d in page.rows]
    return hal.collection("deliveries", items, page)


def get_webhook_delivery(id: int, webhook_id: int, delivery_id: int) -> ConnexionResponse:
    webhook = _find(id, webhook_id)
    delivery = (
        session()
        .exec(
            select(WebhookDelivery).where(
                WebhookDelivery.id == delivery_id, WebhookDelivery.webhook_id == webhook_id
            )
        )
        .one_or_none()
    )
    if delivery is None:
        raise not_found("Delivery", delivery_id)
    return hal.resource(
        represent_delivery(webhook, delivery, _attempts([delivery_id]).get(delivery_id, []))
    )


def ping_webhook(id: int, webhook_id: int) -> ConnexionResponse:
    """Queue a `ping` event for the webhook; `kiln.deliveries` delivers it."""
    webhook = _find(id, webhook_id, manage=True)
    delivery = events.queue_delivery(webhook, "ping", represent_webhook(webhook))
    return hal.accepted(represent_delivery(webhook, delivery, []))


def _attempts(delivery_ids: list[int | None]) -> dict[int, list[DeliveryAttempt]]:
    rows = session().exec(
        select(DeliveryAttempt)
        .where(col(DeliveryAttempt.delivery_id).in_(delivery_ids))
        .order_by(col(DeliveryAttempt.id))
    )
    grouped: dict[int, list[DeliveryAttempt]] = {}
    for attempt in rows:
        grouped.setdefault(attempt.delivery_id, []).append(attempt)
    return grouped
