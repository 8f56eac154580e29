"""HAL responses: one place decides the media type, the ETag, 304s, Location, and
which responses no cache may keep."""

from __future__ import annotations

from collections.abc import Mapping

from connexion.context import operation as current_operation
from connexion.lifecycle import ConnexionResponse

from kiln.core.bodies import Body as Body
from kiln.core.bodies import dumps as dumps
from kiln.core.bodies import link as link
from kiln.http.asgi import current_scope, header
from kiln.http.etag import etag_of, none_match, require_match
from kiln.http.negotiation import HAL_JSON, JSON, choose
from kiln.http.pagination import Page

_OFFERED = (HAL_JSON, JSON)
NO_STORE = {"Cache-Control": "no-store"}


def _request_header(name: bytes) -> str | None:
    value = header(current_scope(), name)
    return value.decode("latin-1") if value is not None else None


def _declared_cache_control(status: int) -> Mapping[str, str]:
    """`Cache-Control: no-store` where the contract declares `Cache-Control` for the
    operation's response: on those that carry a secret (a new token, and its replays)."""
    try:
        responses = current_operation.responses
    except RuntimeError:  # not serving an operation of the contract
        return {}
    declared = responses.get(str(status), {}).get("headers", {})
    return NO_STORE if "Cache-Control" in declared else {}


def _respond(raw: bytes, status: int, headers: Mapping[str, str]) -> ConnexionResponse:
    media = choose(_request_header(b"accept"), _OFFERED) or HAL_JSON
    return ConnexionResponse(
        status_code=status,
        mimetype=media,
        content_type=media,
        body=raw,
        headers={**headers, **_declared_cache_control(status)},
    )


def resource(
    body: Body, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> ConnexionResponse:
    """One resource, with its strong ETag; a GET whose `If-None-Match` matches gets 304."""
    raw = dumps(body)
    etag = etag_of(raw)
    if current_scope()["method"] in ("GET", "HEAD") and none_match(
        _request_header(b"if-none-match"), etag
    ):
        return ConnexionResponse(status_code=304, headers={"ETag": etag})
    return _respond(raw, status, {"ETag": etag, **(headers or {})})


def created(body: Body) -> ConnexionResponse:
    return resource(body, status=201, headers={"Location": body["_links"]["self"]["href"]})


def accepted(body: Body) -> ConnexionResponse:
    return resource(body, status=202, headers={"Location": body["_links"]["self"]["href"]})


def document(body: Body) -> ConnexionResponse:
    """A 200 with no validator: for answers that are not resources (health, listings)."""
    return _respond(dumps(body), 200, {})


def collection(name: str, items: list[Body], page: Page) -> ConnexionResponse:
    """A page of a listing: its items embedded as `name`, its links, and `next_cursor`."""
    body = {"_links": page.links, "next_cursor": page.next_cursor, "_embedded": {name: items}}
    return document(body)


def no_content() -> ConnexionResponse:
    return ConnexionResponse(status_code=204)


def require_unchanged(current: Body) -> None:
    """For writes: 412 when `If-Match` names another version than `current`."""
    require_match(_request_header(b"if-match"), etag_of(dumps(current)))


def replay(raw: bytes, headers: Mapping[str, str]) -> ConnexionResponse:
    """The stored result of an earlier request with the same `Idempotency-Key`."""
    return _respond(raw, 200, {**headers, "Idempotent-Replayed": "true"})
