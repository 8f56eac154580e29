"""Paging with `next_cursor`: a client pages with the listing's own `after`, no URL parsed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.support import Account

NS = "/api/v1/namespaces"


def _namespace(client: httpx.Client, owner: Account, n: int) -> int:
    response = client.post(NS, json={"name": f"paged{n}"}, headers=owner.auth)
    assert response.status_code == 201, response.text
    made: int = response.json()["id"]
    return made


def _variable(client: httpx.Client, owner: Account, n: int, namespace_id: int | None) -> int:
    body = {"key": f"PAGED_{n}", "value": "v", "namespace_id": namespace_id}
    response = client.post("/api/v1/variables", json=body, headers=owner.auth)
    assert response.status_code == 201, response.text
    made: int = response.json()["id"]
    return made


def _token(client: httpx.Client, owner: Account, n: int) -> int:
    body = {"name": f"paged{n}", "scopes": ["build:read"]}
    response = client.post("/api/v1/tokens", json=body, headers=owner.auth)
    assert response.status_code == 201, response.text
    made: int = response.json()["id"]
    return made


def _walk(client: httpx.Client, path: str, key: str, owner: Account) -> tuple[list[int], int]:
    """Every item of a listing, paged by `next_cursor` alone; and how many pages."""
    seen: list[int] = []
    params: dict[str, Any] = {"limit": 2}
    pages = 0
    while True:
        response = client.get(path, params=params, headers=owner.auth)
        assert response.status_code == 200, response.text
        page = response.json()
        pages += 1
        seen += [item["id"] for item in page["_embedded"][key]]
        following = page["_links"].get("next")
        if following is None:
            assert page["next_cursor"] is None
            return seen, pages
        # the cursor is the `after` that `_links.next` carries
        assert [page["next_cursor"]] == parse_qs(urlsplit(following["href"]).query)["after"]
        params = {"limit": 2, "after": page["next_cursor"]}


Listing = Callable[[httpx.Client, Account], tuple[str, str, list[int]]]


def _namespaces(client: httpx.Client, owner: Account) -> tuple[str, str, list[int]]:
    return NS, "namespaces", [_namespace(client, owner, n) for n in range(5)]


def _variables(client: httpx.Client, owner: Account) -> tuple[str, str, list[int]]:
    return "/api/v1/variables", "variables", [_variable(client, owner, n, None) for n in range(5)]


def _namespace_variables(client: httpx.Client, owner: Account) -> tuple[str, str, list[int]]:
    namespace = _namespace(client, owner, 99)
    made = [_variable(client, owner, n, namespace) for n in range(4)]
    _variable(client, owner, 50, None)  # the caller's own: not in the namespace's listing
    return f"{NS}/{namespace}/variables", "variables", made


def _tokens(client: httpx.Client, owner: Account) -> tuple[str, str, list[int]]:
    listed = client.get("/api/v1/tokens", headers=owner.auth).json()["_embedded"]["tokens"]
    return (
        "/api/v1/tokens",
        "tokens",
        [t["id"] for t in listed] + [_token(client, owner, n) for n in range(4)],
    )


@pytest.mark.parametrize(
    "listing",
    [_namespaces, _variables, _namespace_variables, _tokens],
    ids=["namespaces", "variables", "namespace-variables", "tokens"],
)
def test_next_cursor_pages_through_a_listing(
    client: httpx.Client, alice: Account, listing: Listing
) -> None:
    path, key, made = listing(client, alice)
    seen, pages = _walk(client, path, key, alice)
    assert seen == made
    assert pages == -(-len(made) // 2)  # a full last page is known to be the last


def test_a_single_page_has_no_next_cursor(client: httpx.Client, alice: Account) -> None:
    _namespace(client, alice, 1)
    page = client.get(NS, headers=alice.auth).json()
    assert page["next_cursor"] is None
    assert "next" not in page["_links"]
    assert list(page) == ["_links", "next_cursor", "_embedded"]
