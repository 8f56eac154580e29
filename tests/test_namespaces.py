"""Namespaces: nesting, paths, visibility, collaborators, ETags and cursor pagination."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from tests.support import Account, RunningServer, add_collaborator

Maker = Callable[..., Account]
NS = "/api/v1/namespaces"


def create(client: httpx.Client, who: Account, name: str, **fields: Any) -> dict[str, Any]:
    response = client.post(NS, json={"name": name, **fields}, headers=who.auth)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def test_create_top_level(client: httpx.Client, alice: Account) -> None:
    response = client.post(NS, json={"name": "proj", "description": "d"}, headers=alice.auth)
    assert response.status_code == 201
    body = response.json()
    assert response.headers["location"] == f"{NS}/{body['id']}"
    assert response.headers["etag"]
    assert body["path"] == f"{alice.username}/proj"
    assert body["owner"] == {"id": alice.id, "username": alice.username}
    assert (body["depth"], body["root_id"], body["parent_id"]) == (1, body["id"], None)
    assert body["visibility"] == "private"
    assert "parent" not in body["_links"]


def test_create_child(client: httpx.Client, alice: Account) -> None:
    parent = create(client, alice, "parent")
    child = create(client, alice, "child", parent_id=parent["id"])
    assert child["path"] == f"{alice.username}/parent/child"
    assert (child["depth"], child["root_id"], child["parent_id"]) == (2, parent["id"], parent["id"])
    assert child["_links"]["parent"]["href"] == f"{NS}/{parent['id']}"


def test_paths_are_unique(client: httpx.Client, alice: Account) -> None:
    create(client, alice, "twice")
    response = client.post(NS, json={"name": "twice"}, headers=alice.auth)
    assert response.status_code == 409
    assert response.json()["code"] == "already_exists"


def test_names_follow_the_pattern(client: httpx.Client, alice: Account) -> None:
    for name in ("has space", "dot.ted", "", "x" * 65, "slash/y"):
        assert client.post(NS, json={"name": name}, headers=alice.auth).status_code == 400


def test_nesting_stops_at_twenty(client: httpx.Client, alice: Account) -> None:
    parent = create(client, alice, "d1")
    for depth in range(2, 21):
        parent = create(client, alice, f"d{depth}", parent_id=parent["id"])
    assert parent["depth"] == 20
    response = client.post(NS, json={"name": "d21", "parent_id": parent["id"]}, headers=alice.auth)
    assert response.status_code == 422
    assert response.json()["code"] == "namespace_too_deep"


def test_children_of_namespaces_others_own(
    client: httpx.Client, alice: Account, bob: Account
) -> None:
    public = create(client, alice, "open", visibility="public")
    private = create(client, alice, "closed")
    readable = client.post(NS, json={"name": "x", "parent_id": public["id"]}, headers=bob.auth)
    assert readable.status_code == 422
    assert readable.json()["code"] == "namespace_forbidden"
    unseen = client.post(NS, json={"name": "x", "parent_id": private["id"]}, headers=bob.auth)
    assert unseen.status_code == 404


def test_visibility(client: httpx.Client, alice: Account, bob: Account) -> None:
    public = create(client, alice, "vis-public", visibility="public")
    internal = create(client, alice, "vis-internal", visibility="internal")
    private = create(client, alice, "vis-private")
    cases = [
        (public, {}, 200),
        (internal, {}, 404),
        (private, {}, 404),
        (public, bob.auth, 200),
        (internal, bob.auth, 200),
        (private, bob.auth, 404),
        (private, alice.auth, 200),
    ]
    for namespace, headers, status in cases:
        assert client.get(f"{NS}/{namespace['id']}", headers=headers).status_code == status


def test_a_child_is_no_more_visible_than_its_parent(client: httpx.Client, alice: Account) -> None:
    parent = create(client, alice, "vp", visibility="internal")
    too_open = client.post(
        NS,
        json={"name": "c", "parent_id": parent["id"], "visibility": "public"},
        headers=alice.auth,
    )
    assert too_open.status_code == 422
    assert too_open.json()["code"] == "visibility_conflict"
    create(client, alice, "c", parent_id=parent["id"], visibility="internal")
    closing = client.patch(
        f"{NS}/{parent['id']}", json={"visibility": "private"}, headers=alice.auth
    )
    assert closing.status_code == 422
    assert closing.json()["code"] == "visibility_conflict"


def test_put_replaces_and_renames_everything_below(client: httpx.Client, alice: Account) -> None:
    top = create(client, alice, "old", description="keep?")
    mid = create(client, alice, "mid", parent_id=top["id"])
    leaf = create(client, alice, "leaf", parent_id=mid["id"])
    response = client.put(
        f"{NS}/{top['id']}", json={"name": "new", "visibility": "private"}, headers=alice.auth
    )
    assert response.status_code == 200, response.text
    assert response.json()["path"] == f"{alice.username}/new"
    assert response.json()["description"] == ""
    moved = client.get(f"{NS}/{leaf['id']}", headers=alice.auth).json()
    assert moved["path"] == f"{alice.username}/new/mid/leaf"
    found = client.get(NS, params={"path": f"{alice.username}/new/mid"}, headers=alice.auth).json()
    assert [n["id"] for n in found["_embedded"]["namespaces"]] == [mid["id"]]


def test_rename_onto_a_taken_path(client: httpx.Client, alice: Account) -> None:
    create(client, alice, "here")
    there = create(client, alice, "there")
    response = client.patch(f"{NS}/{there['id']}", json={"name": "here"}, headers=alice.auth)
    assert response.status_code == 409


def test_patch_changes_only_what_it_names(client: httpx.Client, alice: Account) -> None:
    ns = create(client, alice, "patchy", description="before")
    response = client.patch(f"{NS}/{ns['id']}", json={"visibility": "internal"}, headers=alice.auth)
    assert response.json()["description"] == "before"
    assert response.json()["visibility"] == "internal"
    assert response.json()["updated_at"] >= ns["updated_at"]


def test_etags(client: httpx.Client, alice: Account) -> None:
    ns = create(client, alice, "tagged")
    url = f"{NS}/{ns['id']}"
    first = client.get(url, headers=alice.auth)
    etag = first.headers["etag"]
    assert etag.startswith('"')
    not_modified = client.get(url, headers={**alice.auth, "If-None-Match": etag})
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    assert client.get(url, headers={**alice.auth, "If-None-Match": f"W/{etag}"}).status_code == 304
    stale = client.patch(
        url, json={"description": "x"}, headers={**alice.auth, "If-Match": '"old"'}
    )
    assert stale.status_code == 412
    assert stale.json()["code"] == "precondition_failed"
    fresh = client.patch(url, json={"description": "x"}, headers={**alice.auth, "If-Match": etag})
    assert fresh.status_code == 200
    assert fresh.headers["etag"] != etag
    assert client.get(url, headers={**alice.auth, "If-None-Match": etag}).status_code == 200
    assert client.delete(url, headers={**alice.auth, "If-Match": etag}).status_code == 412
    assert client.delete(url, headers={**alice.auth, "If-Match": "*"}).status_code == 204


def test_delete_takes_everything_below(client: httpx.Client, alice: Account) -> None:
    top = create(client, alice, "doomed")
    child = create(client, alice, "kid", parent_id=top["id"])
    grandchild = create(client, alice, "grandkid", parent_id=child["id"])
    assert client.delete(f"{NS}/{top['id']}", headers=alice.auth).status_code == 204
    for ns in (top, child, grandchild):
        assert client.get(f"{NS}/{ns['id']}", headers=alice.auth).status_code == 404


def test_listing_is_mine_and_shared_not_everything_visible(
    client: httpx.Client, database_url: str, alice: Account, bob: Account
) -> None:
    own = create(client, bob, "own")
    shared = create(client, alice, "shared")
    create(client, alice, "public-but-not-mine", visibility="public")
    add_collaborator(database_url, shared["id"], bob.id)
    listed = client.get(NS, headers=bob.auth).json()["_embedded"]["namespaces"]
    assert [n["id"] for n in listed] == [own["id"], shared["id"]]


def test_find_by_path_among_visible(client: httpx.Client, alice: Account, bob: Account) -> None:
    public = create(client, alice, "findme", visibility="public")
    secret = create(client, alice, "hidden")
    found = client.get(NS, params={"path": public["path"]}, headers=bob.auth).json()
    assert [n["id"] for n in found["_embedded"]["namespaces"]] == [public["id"]]
    missing = client.get(NS, params={"path": secret["path"]}, headers=bob.auth).json()
    assert missing["_embedded"]["namespaces"] == []


def test_search(client: httpx.Client, alice: Account) -> None:
    for name in ("alpha_1", "ALPHA-2", "beta"):
        create(client, alice, name)
    found = client.get(NS, params={"search": "alpha"}, headers=alice.auth).json()
    assert sorted(n["name"] for n in found["_embedded"]["namespaces"]) == ["ALPHA-2", "alpha_1"]
    literal = client.get(NS, params={"search": "a_"}, headers=alice.auth).json()
    assert [n["name"] for n in literal["_embedded"]["namespaces"]] == ["alpha_1"]


@pytest.fixture
def statements(server: RunningServer) -> Iterator[list[tuple[str, Any]]]:
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        seen.append((statement, parameters))

    engine = server.app.db.engine
    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def test_cursor_pagination_walks_every_page_without_offset(
    client: httpx.Client, alice: Account, statements: list[tuple[str, Any]]
) -> None:
    made = [create(client, alice, f"page{i}")["id"] for i in range(7)]
    seen: list[int] = []
    url: str | None = f"{NS}?limit=3"
    pages = 0
    while url:
        page = client.get(url, headers=alice.auth).json()
        seen += [n["id"] for n in page["_embedded"]["namespaces"]]
        assert page["_links"]["self"]["href"] == url
        url = page["_links"].get("next", {}).get("href")
        pages += 1
    assert seen == made
    assert pages == 3
    # SQLite gets "LIMIT ? OFFSET ?" from SQLAlchemy with 0 for every LIMIT: nothing skips rows.
    offsets = [params[-1] for sql, params in statements if "OFFSET" in sql.upper()]
    assert all(offset == 0 for offset in offsets)
    assert any("LIMIT" in sql.upper() and "namespaces.id >" in sql for sql, _ in statements)


def test_a_forged_cursor_is_refused(client: httpx.Client, alice: Account) -> None:
    response = client.get(f"{NS}?after=bm90LWpzb24", headers=alice.auth)
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_cursor"


def test_children(client: httpx.Client, alice: Account, bob: Account) -> None:
    parent = create(client, alice, "brood", visibility="public")
    kids = [
        create(client, alice, f"k{i}", parent_id=parent["id"], visibility="public")
        for i in range(2)
    ]
    create(client, alice, "quiet", parent_id=parent["id"])
    for headers, expected in ((alice.auth, 3), (bob.auth, 2), ({}, 2)):
        listed = client.get(f"{NS}/{parent['id']}/namespaces", headers=headers).json()
        assert len(listed["_embedded"]["namespaces"]) == expected
    listed = client.get(f"{NS}/{parent['id']}/namespaces", headers=bob.auth).json()
    assert [n["id"] for n in listed["_embedded"]["namespaces"]] == [k["id"] for k in kids]


def test_collaborators_inherit_access_and_lose_it_at_once(
    client: httpx.Client, database_url: str, make_user: Maker
) -> None:
    owner, helper, other = make_user(), make_user(), make_user()
    top = create(client, owner, "team")
    below = create(client, owner, "below", parent_id=top["id"])
    assert client.get(f"{NS}/{below['id']}", headers=helper.auth).status_code == 404
    add_collaborator(database_url, top["id"], helper.id)

    assert client.get(f"{NS}/{below['id']}", headers=helper.auth).status_code == 200
    patched = client.patch(f"{NS}/{below['id']}", json={"description": "hi"}, headers=helper.auth)
    assert patched.status_code == 200
    child = create(client, helper, "made-by-helper", parent_id=below["id"])
    assert child["owner"]["id"] == owner.id
    listed = client.get(f"{NS}/{below['id']}/collaborators", headers=owner.auth).json()
    assert [(c["username"], c["namespace_id"]) for c in listed["_embedded"]["collaborators"]] == [
        (helper.username, top["id"])
    ]
    collaborator_url = listed["_embedded"]["collaborators"][0]["_links"]["self"]["href"]
    assert collaborator_url == f"{NS}/{top['id']}/collaborators/{helper.username}"

    denied = client.delete(f"{NS}/{top['id']}", headers=helper.auth)
    assert denied.status_code == 403
    assert denied.json()["code"] == "permission_denied"
    add_collaborator(database_url, top["id"], other.id)
    removing_other = client.delete(
        f"{NS}/{top['id']}/collaborators/{other.username}", headers=helper.auth
    )
    assert removing_other.status_code == 403

    assert client.delete(collaborator_url, headers=owner.auth).status_code == 204
    assert client.get(f"{NS}/{below['id']}", headers=helper.auth).status_code == 404
    assert client.delete(collaborator_url, headers=owner.auth).status_code == 404
    assert (
        client.delete(
            f"{NS}/{top['id']}/collaborators/{other.username}", headers=other.auth
        ).status_code
        == 204
    )


def test_readers_cannot_change(client: httpx.Client, alice: Account, bob: Account) -> None:
    public = create(client, alice, "look-dont-touch", visibility="public")
    response = client.patch(f"{NS}/{public['id']}", json={"description": "x"}, headers=bob.auth)
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
