"""Webhook delivery from the database queue.

`kiln.events` queues each event for each webhook as a pending `WebhookDelivery`. This
loop claims due ones and POSTs their stored payload, a few at a time so that one slow
receiver does not hold up the others. A claim moves `next_attempt_at` past the time an
attempt can take (a lease), in one statement, so no other process sends the same
attempt; a process that dies mid-send leaves the delivery to be retried once the lease
runs out. Network errors and `5xx` are retried with exponential backoff, at most
`MAX_ATTEMPTS` times in all; any other answer is final. Every attempt is recorded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import hmac
import logging
import ssl
import time
from dataclasses import dataclass, field

import httpx
from sqlmodel import col, select, update

from kiln.background.loops import Background
from kiln.core.config import Settings
from kiln.domain import webhook_targets
from kiln.store.db import Database, session, utcnow
from kiln.store.services import Services
from models import DeliveryAttempt, Webhook, WebhookDelivery

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
CONCURRENCY = 4
# A claimed delivery is offered again this long after its send should have ended.
LEASE_MARGIN = 30.0
USER_AGENT = "Kiln-Webhook/1"
MAX_ERROR = 500


@dataclass(frozen=True)
class Message:
    """What one attempt sends, read from the database before the network is touched."""

    url: str
    event: str
    guid: str
    body: bytes
    secret: str | None


@dataclass(frozen=True)
class Outcome:
    response_code: int | None = None
    error: str | None = None
    duration_ms: int = 0
    retry: bool = False  # a network error or 5xx: worth another attempt later
    started_at: dt.datetime = field(default_factory=utcnow)

    @property
    def delivered(self) -> bool:
        return self.response_code is not None and 200 <= self.response_code < 300


def precise_now() -> dt.datetime:
    # Not `utcnow()`: retries can be due sub-second apart, so keep the microseconds.
    return dt.datetime.now(dt.UTC)


def sign(secret: str, body: bytes) -> str:
    """The `X-Kiln-Signature` header's value."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def run(background: Background) -> None:
    """Claim and deliver until told to stop; what is in flight then is finished first."""
    services = background.services
    settings = services.settings
    lease = settings.webhook_timeout_seconds + LEASE_MARGIN
    in_flight: set[asyncio.Task[None]] = set()

    def done(task: asyncio.Task[None]) -> None:
        in_flight.discard(task)
        background.nudge("deliveries")  # a slot is free: look at the queue again

    async with (
        new_client(settings) as client,
        asyncio.TaskGroup() as tasks,
    ):
        while not background.stopping.is_set():
            free = CONCURRENCY - len(in_flight)
            claimed = await services.db.run(functools.partial(claim, services.db, free, lease))
            for delivery_id in claimed:
                task = tasks.create_task(deliver_logged(services, client, delivery_id))
                in_flight.add(task)
                task.add_done_callback(done)
            # After a full batch more may be due: look again at once.
            if free == 0 or len(claimed) < free:
                await background.idle("deliveries", settings.poll_interval)


def new_client(settings: Settings) -> httpx.AsyncClient:
    """The client every delivery is sent with.

    Requests go to the address the target check approved (see `attempt`), so the pool
    is keyed by that address: a kept-alive connection, verified for one name, could
    carry the next request for another name at the same address. None is kept.
    """
    return httpx.AsyncClient(
        timeout=settings.webhook_timeout_seconds,
        follow_redirects=False,
        trust_env=False,
        verify=tls_context(),
        limits=httpx.Limits(max_keepalive_connections=0),
    )


def tls_context() -> ssl.SSLContext:
    """How receivers' certificates are verified (httpx's default: certifi's roots)."""
    return httpx.create_ssl_context(trust_env=False)


def claim(db: Database, limit: int, lease_seconds: float) -> list[int]:
    """Take up to `limit` due deliveries, each leased for `lease_seconds`."""
    if limit <= 0:
        return []
    now = precise_now()
    due = (
        select(WebhookDelivery.id)
        .where(WebhookDelivery.status == "pending", col(WebhookDelivery.next_attempt_at) <= now)
        .order_by(col(WebhookDelivery.next_attempt_at), col(WebhookDelivery.id))
        .limit(limit)
    )
    if not db.is_sqlite:
        # PostgreSQL: rows another process is claiming right now are passed over, not
        # waited for. SQLite needs nothing: its writers take turns (BEGIN IMMEDIATE).
        due = due.with_for_update(skip_locked=True)
    statement = (
        update(WebhookDelivery)
        .where(col(WebhookDelivery.id).in_(due))
        .values(next_attempt_at=now + dt.timedelta(seconds=lease_seconds))
        .returning(col(WebhookDelivery.id))
    )
    # Look before taking the write lock: an idle loop only reads, so it never makes
    # other processes (or this one's event loop) wait on SQLite's writer lock.
    if db.first(due.with_only_columns(col(WebhookDelivery.id)), {}) is None:
        return []
    with db.transaction() as s:
        return list(s.exec(statement).scalars().all())


async def deliver_logged(services: Services, client: httpx.AsyncClient, delivery_id: int) -> None:
    """`deliver`, with failures logged: the lease brings the delivery back later."""
    try:
        await deliver(services, client, delivery_id)
    except Exception:
        log.exception("webhook delivery %s failed unexpectedly", delivery_id)


async def deliver(services: Services, client: httpx.AsyncClient, delivery_id: int) -> None:
    """One attempt at one claimed delivery, recorded."""
    db = services.db
    retry_seconds = services.settings.webhook_retry_seconds
    message = await db.run(functools.partial(prepare, services, delivery_id))
    if message is None:
        return
    outcome = await attempt(client, services.settings, message)

    def record_outcome() -> None:
        with db.transaction():
            delivery = session().get(WebhookDelivery, delivery_id)
            if delivery is not None:
                record(delivery, outcome, retry_seconds=retry_seconds)

    await db.run(record_outcome)


def prepare(services: Services, delivery_id: int) -> Message | None:
    """What to send for the delivery, or None (having failed it) if nothing may be sent."""
    with services.db.transaction():
        delivery = session().get(WebhookDelivery, delivery_id)
        if delivery is None or delivery.status != "pending":
            return None
        webhook = session().get(Webhook, delivery.webhook_id)
        if webhook is None or not webhook.active:
            record(delivery, Outcome(error="The webhook is inactive; nothing was sent."))
            return None
        try:
            secret = services.secrets.decrypt(webhook.secret) if webhook.secret else None
        except ValueError as exc:
            record(delivery, Outcome(error=str(exc)))
            return None
        return Message(
            url=webhook.payload_url,
            event=delivery.event,
            guid=delivery.guid,
            body=delivery.payload.encode(),
            secret=secret,
        )


async def attempt(client: httpx.AsyncClient, settings: Settings, message: Message) -> Outcome:
    """POST the message once; how it went."""
    started_at, clock = utcnow(), time.monotonic()

    def outcome(
        *, code: int | None = None, error: str | None = None, retry: bool = False
    ) -> Outcome:
        elapsed = int((time.monotonic() - clock) * 1000)
        return Outcome(
            response_code=code,
            error=error,
            duration_ms=elapsed,
            retry=retry,
            started_at=started_at,
        )

    try:
        # Again before every attempt: the name may resolve elsewhere since it was saved.
        target = await webhook_targets.check(
            message.url,
            allow_private=settings.webhooks_allow_private,
            allow_http=settings.webhooks_allow_http,
        )
    except webhook_targets.TargetRefused as exc:
        return outcome(error=str(exc))
    try:
        # httpx's timeout bounds each read; this bounds the whole exchange.
        async with asyncio.timeout(settings.webhook_timeout_seconds):
            code = await post(client, target, message)
    except TimeoutError:
        return outcome(error=f"No answer in {settings.webhook_timeout_seconds:g} s.", retry=True)
    except httpx.TransportError as exc:
        return outcome(error=str(exc) or type(exc).__name__, retry=True)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return outcome(error=str(exc) or type(exc).__name__)
    return outcome(code=code, retry=code >= 500)


async def post(client: httpx.AsyncClient, target: webhook_targets.Target, message: Message) -> int:
    """POST the message to the first of the target's checked addresses that takes a
    connection, and the status it answers (its body is never read).

    httpx would resolve the name again, and a name can answer differently each time
    (DNS rebinding): so the request goes to a checked address, with the name in `Host`
    and in TLS (SNI, and the certificate verified against it)."""
    url = httpx.URL(message.url)
    refused: httpx.ConnectError | None = None
    for address in target.addresses:
        request = client.build_request(
            "POST",
            url.copy_with(host=str(address)),
            content=message.body,
            headers={**headers(message), "Host": url.netloc.decode("ascii")},
            extensions={"sni_hostname": url.raw_host.decode("ascii")},
        )
        try:
            response = await client.send(request, stream=True)
        except httpx.ConnectError as exc:  # nothing was sent: the next address may answer
            refused = exc
            continue
        await response.aclose()
        return response.status_code
    assert refused is not None  # a target has at least one address
    raise refused


def headers(message: Message) -> dict[str, str]:
    values = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Kiln-Event": message.event,
        "X-Kiln-Delivery": message.guid,
    }
    if message.secret is not None:
        values["X-Kiln-Signature"] = sign(message.secret, message.body)
    return values


def record(delivery: WebhookDelivery, outcome: Outcome, *, retry_seconds: float = 0.0) -> None:
    """Keep the attempt and decide what follows: done, given up, or another try later."""
    assert delivery.id is not None
    delivery.attempts += 1
    session().add(
        DeliveryAttempt(
            delivery_id=delivery.id,
            response_code=outcome.response_code,
            error=outcome.error[:MAX_ERROR] if outcome.error is not None else None,
            duration_ms=outcome.duration_ms,
            created_at=outcome.started_at,
        )
    )
    if not outcome.delivered and outcome.retry and delivery.attempts < MAX_ATTEMPTS:
        backoff = retry_seconds * 2 ** (delivery.attempts - 1)
        delivery.next_attempt_at = precise_now() + dt.timedelta(seconds=backoff)
        return
    delivery.status = "delivered" if outcome.delivered else "failed"
    delivery.next_attempt_at = None
    delivery.finished_at = utcnow()
