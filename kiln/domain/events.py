"""Webhook events: what happened in a namespace, queued for the webhooks that asked.

Handlers call `emit` inside their unit of work, so a delivery is queued in the same
transaction as the change it reports: both happen or neither does. `kiln.deliveries`
sends what is queued.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any

from sqlmodel import col, select

from kiln.core import bodies, spec
from kiln.store.db import session, utcnow
from models import Webhook, WebhookDelivery


@functools.cache
def subscribable() -> frozenset[str]:
    """The events a webhook may subscribe to, as the contract lists them."""
    return frozenset(spec.load()["components"]["schemas"]["WebhookEvent"]["enum"])


Data = dict[str, Any] | Callable[[], dict[str, Any]]


def emit(namespace_id: int | None, event: str, data: Data) -> None:
    """Queue `event` for every active webhook of the namespace subscribed to it. `data`
    may be a function making it, called only if some webhook wants the event (a build's
    view costs queries that most builds, in namespaces without webhooks, need not pay)."""
    if event not in subscribable():
        raise ValueError(f"{event} is not a webhook event")
    if namespace_id is None:
        return
    webhooks = session().exec(
        select(Webhook).where(Webhook.namespace_id == namespace_id, col(Webhook.active).is_(True))
    )
    made: dict[str, Any] | None = None
    for webhook in webhooks.all():
        if event in webhook.events.split():
            if made is None:
                made = data() if callable(data) else data
            queue_delivery(webhook, event, made)


def queue_delivery(webhook: Webhook, event: str, data: dict[str, Any]) -> WebhookDelivery:
    """Queue one event for one webhook, due now; `payload` is the exact body it will get."""
    assert webhook.id is not None
    guid = str(uuid.uuid4())
    now = utcnow()
    payload = {
        "event": event,
        "delivery": guid,
        "created_at": now,
        "namespace_id": webhook.namespace_id,
        "data": data,
    }
    delivery = WebhookDelivery(
        webhook_id=webhook.id,
        guid=guid,
        event=event,
        payload=bodies.dumps(payload).decode(),
        next_attempt_at=now,
        created_at=now,
    )
    session().add(delivery)
    session().flush()
    return delivery
