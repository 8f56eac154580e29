"""Cursor pagination: pages stay fast at any depth because they seek, never OFFSET."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from sqlmodel import col
from sqlmodel.sql.expression import Select, SelectOfScalar

from kiln.core.bodies import link
from kiln.core.principal import Principal
from kiln.core.problems import Problem
from kiln.domain import access, resources
from kiln.http.asgi import current_scope
from kiln.store.db import session
from models import Owned


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"id": last_id})).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> int:
    try:
        data = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        last_id = data["id"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise Problem("invalid_cursor", "The after cursor is not one this server issued.") from None
    if not isinstance(last_id, int) or isinstance(last_id, bool) or not 0 <= last_id < 2**63:
        raise Problem("invalid_cursor", "The after cursor is not one this server issued.")
    return last_id


@dataclass
class Page:
    rows: Sequence[Any]
    links: dict[str, Any]
    next_cursor: str | None  # the `after` of `links["next"]`: clients page without URLs


def paginate(
    query: Select[*tuple[Any, ...]] | SelectOfScalar[Any],
    key: Any,
    *,
    limit: int,
    after: str | None,
    params: dict[str, Any] | None = None,
    newest_first: bool = False,
) -> Page:
    """Rows of `query` after the cursor in `key` order (descending when `newest_first`),
    and the page's self/next links and the cursor of the next page.

    `key` is a unique, increasing integer column of the first entity the query
    selects; rows are that entity, or tuples when the query selects more.
    """
    if after is not None:
        cursor = decode_cursor(after)
        query = query.where(col(key) < cursor if newest_first else col(key) > cursor)
    order = col(key).desc() if newest_first else key
    rows = list(session().exec(query.order_by(order).limit(limit + 1), params=params or {}).all())
    links: dict[str, Any] = {"self": link(_url())}
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1] if isinstance(query, SelectOfScalar) else rows[-1][0]
        next_cursor = encode_cursor(getattr(last, key.key))
        links["next"] = link(_url(after=next_cursor))
    return Page(rows, links, next_cursor)


def _url(**overrides: str) -> str:
    scope = current_scope()
    path: str = scope["path"]
    query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
    params = [(k, v) for k, v in query if k not in overrides]
    params.extend(overrides.items())
    return f"{path}?{urlencode(params)}" if params else path


def page_of(
    model: type[Owned],
    principal: Principal,
    *,
    members_only: bool,
    search_column: Any,
    namespace_id: int | None,
    search: str | None,
    limit: int,
    after: str | None,
) -> Page:
    """A page of `listing(...)`, oldest first."""
    query = resources.listing(
        model,
        principal,
        members_only=members_only,
        namespace_id=namespace_id,
        search=search,
        search_column=search_column,
    )
    params = access.caller_params(principal)
    key = model.id  # type: ignore[attr-defined]
    return paginate(query, key, limit=limit, after=after, params=params)
