"""Webhook delivery end to end: a real receiver on loopback that checks signatures,
and a Kiln whose delivery loop retries, gives up, and records every attempt."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpx
import pytest

from kiln.background import deliveries
from kiln.domain import events
from kiln.store.db import Database, session
from models import Webhook
from tests.support import (
    Account,
    RunningServer,
    free_port,
    isolated_database,
    make_account,
    run,
    server_settings,
    wait_until,
)

T = TypeVar("T")
DEADLINE = 10.0
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
Hook = dict[str, Any]
MakeWebhook = Callable[..., Hook]


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    verified: bool | None  # the signature matched; None when the receiver expects none

    @property
    def payload(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.body)
        return loaded


class Receiver:
    """An HTTP server on 127.0.0.1 that answers with scripted status codes (then `then`)
    and keeps every request. With a secret, it checks `X-Kiln-Signature` against the
    exact body and answers 401 when it does not match, as a real receiver would. With
    `hold`, it answers only once that event is set."""

    def __init__(
        self,
        script: Iterable[int] = (),
        *,
        then: int = 200,
        secret: str | None = None,
        hold: threading.Event | None = None,
    ) -> None:
        self.script = list(script)
        self.then = then
        self.secret = secret
        self.hold = hold
        self.received: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = receiver.answer(self.path, dict(self.headers.items()), body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> int:
        headers = {name.lower(): value for name, value in headers.items()}
        verified = None
        if self.secret is not None:
            expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
            verified = hmac.compare_digest(headers.get("x-kiln-signature", ""), expected)
        if self.hold is not None:
            self.hold.wait(DEADLINE)
        with self._lock:
            self.received.append(Received(path, headers, body, verified))
            if verified is False:
                return 401
            return self.script.pop(0) if self.script else self.then

    def requests(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


MakeReceiver = Callable[..., Receiver]


def at_least(receiver: Receiver, count: int) -> list[Received] | None:
    got = receiver.requests()
    return got if len(got) >= count else None


@pytest.fixture(scope="module")
def own_url(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return isolated_database(database_url, tmp_path_factory.mktemp("deliveries-db"), "deliveries")


@pytest.fixture(scope="module")
def kiln(own_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    settings = server_settings(
        tmp_path_factory.mktemp("deliveries"),
        own_url,
        webhooks_allow_private=True,
        webhooks_allow_http=True,
        poll_interval=0.05,
        webhook_retry_seconds=0.1,
        webhook_timeout_seconds=2.0,
        workers=1,  # builds run, so their events can be watched
        scheduler=False,
        grace_seconds=5.0,
    )
    with RunningServer(settings) as server, server.client() as client:
        yield client


@pytest.fixture
def owner(own_url: str) -> Account:
    return make_account(own_url, prefix="hooker")


@pytest.fixture
def namespace(kiln: httpx.Client, owner: Account) -> dict[str, Any]:
    made = kiln.post("/api/v1/namespaces", json={"name": "delivered"}, headers=owner.auth)
    assert made.status_code == 201, made.text
    body: dict[str, Any] = made.json()
    return body


@pytest.fixture
def receiver() -> Iterator[MakeReceiver]:
    made: list[Receiver] = []

    def make(*script: int, **options: Any) -> Receiver:
        made.append(Receiver(script, **options))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def webhook(kiln: httpx.Client, owner: Account, namespace: dict[str, Any]) -> MakeWebhook:
    def make(url: str, subscribed: list[str], **fields: Any) -> Hook:
        made = kiln.post(
            f"/api/v1/namespaces/{namespace['id']}/webhooks",
            json={"payload_url": url, "events": subscribed, **fields},
            headers=owner.auth,
        )
        assert made.status_code == 201, made.text
        body: dict[str, Any] = made.json()
        return body

    return make


def ping(kiln: httpx.Client, owner: Account, hook: dict[str, Any]) -> dict[str, Any]:
    response = kiln.post(hook["_links"]["pings"]["href"], headers=owner.auth)
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def deliveries_of(kiln: httpx.Client, owner: Account, hook: dict[str, Any]) -> list[Any]:
    listed = kiln.get(hook["_links"]["deliveries"]["href"], headers=owner.auth)
    assert listed.status_code == 200, listed.text
    found: list[Any] = listed.json()["_embedded"]["deliveries"]
    return found


def finished(kiln: httpx.Client, owner: Account, delivery: dict[str, Any]) -> dict[str, Any]:
    """The delivery once it is delivered or failed."""

    def check() -> dict[str, Any] | None:
        body: dict[str, Any] = kiln.get(
            delivery["_links"]["self"]["href"], headers=owner.auth
        ).json()
        return body if body["status"] != "pending" else None

    return wait_until(check, what=f"delivery {delivery['id']} to finish")


def test_a_ping_arrives_signed_and_its_attempt_is_recorded(
    kiln: httpx.Client,
    owner: Account,
    namespace: dict[str, Any],
    receiver: MakeReceiver,
    webhook: MakeWebhook,
) -> None:
    target = receiver(secret="a shared secret")
    hook = webhook(target.url, ["invite.sent"], secret="a shared secret")
    queued = ping(kiln, owner, hook)

    [request] = wait_until(target.requests, what="the ping")
    assert request.path == "/hook"
    assert request.verified is True
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "Kiln-Webhook/1"
    assert request.headers["x-kiln-event"] == "ping"
    assert request.headers["x-kiln-delivery"] == queued["guid"]
    payload = request.payload
    assert set(payload) == {"event", "delivery", "created_at", "namespace_id", "data"}
    assert (payload["event"], payload["delivery"]) == ("ping", queued["guid"])
    assert payload["namespace_id"] == namespace["id"]
    assert RFC3339_Z.match(payload["created_at"])
    assert payload["data"]["id"] == hook["id"]

    done = finished(kiln, owner, queued)
    assert (done["status"], done["next_attempt_at"]) == ("delivered", None)
    assert done["finished_at"] is not None
    [tried] = done["attempts"]
    assert (tried["response_code"], tried["error"]) == (200, None)
    assert tried["duration_ms"] >= 0
    assert [d["status"] for d in deliveries_of(kiln, owner, hook)] == ["delivered"]


def test_invites_and_namespace_changes_are_delivered(
    kiln: httpx.Client,
    own_url: str,
    owner: Account,
    namespace: dict[str, Any],
    receiver: MakeReceiver,
    webhook: MakeWebhook,
) -> None:
    target = receiver(secret="s")
    webhook(target.url, ["invite.sent", "invite.accepted", "namespace.updated"], secret="s")
    guest = make_account(own_url, prefix="guest")
    ns = f"/api/v1/namespaces/{namespace['id']}"

    sent = kiln.post(f"{ns}/invites", json={"username": guest.username}, headers=owner.auth)
    assert sent.status_code == 201, sent.text
    accepted = kiln.post(sent.json()["_links"]["accept"]["href"], headers=guest.auth)
    assert accepted.status_code == 200, accepted.text
    patched = kiln.patch(ns, json={"description": "now watched"}, headers=owner.auth)
    assert patched.status_code == 200, patched.text
    replaced = kiln.put(
        ns, json={"name": "redelivered", "visibility": "private"}, headers=owner.auth
    )
    assert replaced.status_code == 200, replaced.text

    got = wait_until(lambda: at_least(target, 4), what="four events")
    assert all(r.verified for r in got)
    by_event: dict[str, list[dict[str, Any]]] = {}
    for r in got:
        assert r.headers["x-kiln-event"] == r.payload["event"]
        assert r.payload["namespace_id"] == namespace["id"]
        by_event.setdefault(r.payload["event"], []).append(r.payload["data"])
    assert by_event["invite.sent"] == [sent.json()]
    [invite] = by_event["invite.accepted"]
    assert (invite["id"], invite["username"]) == (sent.json()["id"], guest.username)
    updates = by_event["namespace.updated"]
    assert len(updates) == 2
    assert patched.json() in updates
    assert replaced.json() in updates


def test_server_errors_are_retried_until_delivered(
    kiln: httpx.Client, owner: Account, receiver: MakeReceiver, webhook: MakeWebhook
) -> None:
    target = receiver(500, 503)
    queued = ping(kiln, owner, webhook(target.url, ["invite.sent"]))
    done = finished(kiln, owner, queued)
    assert done["status"] == "delivered"
    assert [a["response_code"] for a in done["attempts"]] == [500, 503, 200]
    got = target.requests()
    assert {r.headers["x-kiln-delivery"] for r in got} == {queued["guid"]}
    assert len({r.body for r in got}) == 1  # the same bytes every time


def test_delivery_gives_up_after_five_attempts(
    kiln: httpx.Client, owner: Account, receiver: MakeReceiver, webhook: MakeWebhook
) -> None:
    target = receiver(then=500)
    queued = ping(kiln, owner, webhook(target.url, ["invite.sent"]))
    done = finished(kiln, owner, queued)
    assert done["status"] == "failed"
    assert done["finished_at"] is not None
    assert [a["response_code"] for a in done["attempts"]] == [500] * 5
    assert len(target.requests()) == 5


def test_client_errors_are_final(
    kiln: httpx.Client, owner: Account, receiver: MakeReceiver, webhook: MakeWebhook
) -> None:
    target = receiver(then=404)
    queued = ping(kiln, owner, webhook(target.url, ["invite.sent"]))
    done = finished(kiln, owner, queued)
    assert done["status"] == "failed"
    assert [a["response_code"] for a in done["attempts"]] == [404]
    assert len(target.requests()) == 1


def test_unreachable_receivers_are_retried(
    kiln: httpx.Client, owner: Account, webhook: MakeWebhook
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    queued = ping(kiln, owner, webhook(closed, ["invite.sent"]))
    done = finished(kiln, owner, queued)
    assert done["status"] == "failed"
    assert len(done["attempts"]) == 5
    assert all(a["response_code"] is None and a["error"] for a in done["attempts"])


def test_inactive_webhooks_and_other_events_get_nothing(
    kiln: httpx.Client,
    owner: Account,
    namespace: dict[str, Any],
    receiver: MakeReceiver,
    webhook: MakeWebhook,
) -> None:
    target = receiver()
    inactive = webhook(target.url, ["namespace.updated"], active=False)
    elsewhere = webhook(target.url, ["invite.sent"])
    ns = f"/api/v1/namespaces/{namespace['id']}"
    assert kiln.patch(ns, json={"description": "x"}, headers=owner.auth).status_code == 200
    assert deliveries_of(kiln, owner, inactive) == []
    assert deliveries_of(kiln, owner, elsewhere) == []

    # A ping queued for an inactive webhook fails without being sent.
    refused = finished(kiln, owner, ping(kiln, owner, inactive))
    assert refused["status"] == "failed"
    assert [a["response_code"] for a in refused["attempts"]] == [None]
    assert "inactive" in refused["attempts"][0]["error"]
    sent = ping(kiln, owner, elsewhere)
    assert finished(kiln, owner, sent)["status"] == "delivered"
    assert [r.headers["x-kiln-delivery"] for r in target.requests()] == [sent["guid"]]


def test_a_slow_receiver_does_not_hold_up_others(
    kiln: httpx.Client, owner: Account, receiver: MakeReceiver, webhook: MakeWebhook
) -> None:
    release = threading.Event()
    slow = ping(kiln, owner, webhook(receiver(hold=release).url, ["invite.sent"]))
    try:
        fast = ping(kiln, owner, webhook(receiver().url, ["invite.sent"]))
        assert finished(kiln, owner, fast)["status"] == "delivered"
        assert kiln.get(slow["_links"]["self"]["href"], headers=owner.auth).json()["status"] == (
            "pending"
        )
    finally:
        release.set()
    assert finished(kiln, owner, slow)["status"] == "delivered"


def test_without_a_secret_nothing_is_signed(
    kiln: httpx.Client, owner: Account, receiver: MakeReceiver, webhook: MakeWebhook
) -> None:
    target = receiver()
    queued = ping(kiln, owner, webhook(target.url, ["invite.sent"]))
    assert finished(kiln, owner, queued)["status"] == "delivered"
    [request] = target.requests()
    assert "x-kiln-signature" not in request.headers


def test_no_delivery_is_claimed_twice(
    kiln: httpx.Client, own_url: str, owner: Account, receiver: MakeReceiver, webhook: MakeWebhook
) -> None:
    """Claimers racing for the same queue (the server's loop among them) never share a row."""
    hook = webhook(receiver().url, ["invite.sent"])

    def queue(db: Database) -> set[int]:
        with db.transaction():
            row = session().get(Webhook, hook["id"])
            assert row is not None
            return {events.queue_delivery(row, "ping", {}).id or 0 for _ in range(40)}

    queued = run(queue, own_url)

    def claim_all(db: Database) -> list[int]:
        taken: list[int] = []
        while batch := deliveries.claim(db, 3, 60.0):
            taken += batch
        return taken

    with ThreadPoolExecutor(4) as pool:
        claims = list(pool.map(lambda _: run(claim_all, own_url), range(4)))
    everything = [i for c in claims for i in c]
    assert everything
    assert len(everything) == len(set(everything))
    assert set(everything) & queued


def test_a_builds_events_are_delivered(
    kiln: httpx.Client,
    owner: Account,
    namespace: dict[str, Any],
    receiver: MakeReceiver,
    webhook: MakeWebhook,
) -> None:
    target = receiver(secret="b")
    events_ = ["build.submitted", "build.started", "build.finished", "build.tagged"]
    webhook(target.url, events_, secret="b")
    manifest = (
        f"namespace: {namespace['path']}\ndriver: {{type: local}}\nstages: [a]\n"
        'jobs:\n- stage: a\n  commands: ["true"]\n'
    )
    submitted = kiln.post("/api/v1/builds", json={"manifest": manifest}, headers=owner.auth)
    assert submitted.status_code == 202, submitted.text
    build_id = submitted.json()["id"]
    tagged = kiln.post(f"/api/v1/builds/{build_id}/tags", json={"name": "x"}, headers=owner.auth)
    assert tagged.status_code == 201, tagged.text

    got = wait_until(lambda: at_least(target, 4), what="four build events")
    assert all(r.verified for r in got)
    by_event = {r.payload["event"]: r.payload["data"] for r in got}
    assert set(by_event) == set(events_)
    assert by_event["build.submitted"]["id"] == build_id
    assert by_event["build.started"]["status"] == "running"
    assert by_event["build.finished"]["status"] == "passed"
    assert by_event["build.tagged"]["tag"] == "x"
