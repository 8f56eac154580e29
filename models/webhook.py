from __future__ import annotations

import datetime as dt

from sqlalchemy import Text
from sqlmodel import Field, SQLModel

from models.base import reference, timestamp


class Webhook(SQLModel, table=True):
    __tablename__ = "webhooks"

    id: int | None = Field(default=None, primary_key=True)
    namespace_id: int = reference("namespaces.id")
    payload_url: str = Field(max_length=2048)
    secret: str | None = Field(
        default=None, sa_type=Text, description="encrypted at rest (see kiln.secrets)"
    )
    events: str = Field(max_length=1000, description="space-separated")
    active: bool = True
    created_at: dt.datetime = timestamp()
    updated_at: dt.datetime = timestamp()


class WebhookDelivery(SQLModel, table=True):
    """One event to deliver to one webhook, retried until it succeeds or gives up."""

    __tablename__ = "webhook_deliveries"

    id: int | None = Field(default=None, primary_key=True)
    webhook_id: int = reference("webhooks.id")
    guid: str = Field(max_length=36, unique=True, description="X-Kiln-Delivery")
    event: str = Field(max_length=64)
    payload: str = Field(sa_type=Text, description="the exact JSON body")
    status: str = Field(default="pending", max_length=16)
    attempts: int = 0
    next_attempt_at: dt.datetime | None = timestamp(nullable=True, default_now=False, index=True)
    created_at: dt.datetime = timestamp()
    finished_at: dt.datetime | None = timestamp(nullable=True, default_now=False)


class DeliveryAttempt(SQLModel, table=True):
    __tablename__ = "webhook_delivery_attempts"

    id: int | None = Field(default=None, primary_key=True)
    delivery_id: int = reference("webhook_deliveries.id")
    response_code: int | None = None
    error: str | None = Field(default=None, max_length=500)
    duration_ms: int = 0
    created_at: dt.datetime = timestamp()
