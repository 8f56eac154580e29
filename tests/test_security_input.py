"""Hostile input that once got past request validation: a JSON body without the
`Content-Type` it was validated as, and NUL characters, which PostgreSQL refuses to store
and which cut a manifest's commands short."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from kiln.core import spec
from tests.support import MANIFEST, Account, query, ssh_private_key, unique
from tests.test_problems import assert_problem

SPEC = spec.load()


def _json_operations() -> Iterator[tuple[str, str, Any]]:
    """Every operation that takes a JSON body, with the contract's example of one."""
    for path, item in SPEC["paths"].items():
        for method in spec.METHODS:
            op = item.get(method)
            if op is None or "requestBody" not in op:
                continue
            content = spec.resolve(SPEC, op["requestBody"])["content"].get("application/json")
            if content is None:
                continue
            if "example" in content:
                example = content["example"]
            else:
                example = spec.resolve(SPEC, next(iter(content["examples"].values())))["value"]
            yield method.upper(), re.sub(r"\{[^}]+\}", "1", path), example


JSON_OPERATIONS = list(_json_operations())
IDS = [f"{method} {path}" for method, path, _ in JSON_OPERATIONS]


def test_the_contract_has_the_json_operations_under_test() -> None:
    assert len(JSON_OPERATIONS) >= 12


@pytest.mark.parametrize(("method", "path", "example"), JSON_OPERATIONS, ids=IDS)
def test_json_body_without_content_type_is_415_not_a_500(
    client: httpx.Client, alice: Account, method: str, path: str, example: Any
) -> None:
    # Validated as JSON by a guessed media type, then handed to the handler as bytes: 500.
    request = client.build_request(method, path, json=example, headers=alice.auth)
    del request.headers["content-type"]
    response = client.send(request)
    assert "content-type" not in response.request.headers
    assert int(response.request.headers["content-length"]) > 0
    body = assert_problem(response, 415, "unsupported_media_type")
    assert "no Content-Type" in body["detail"]


@pytest.mark.parametrize(("method", "path", "example"), JSON_OPERATIONS, ids=IDS)
@pytest.mark.parametrize("media", ["text/plain", "application/x-json-stream", "json"])
def test_json_body_with_a_foreign_content_type_is_415(
    client: httpx.Client, alice: Account, method: str, path: str, example: Any, media: str
) -> None:
    response = client.request(
        method,
        path,
        content=httpx.Request("POST", "/", json=example).content,
        headers={**alice.auth, "Content-Type": media},
    )
    assert_problem(response, 415, "unsupported_media_type")


def test_chunked_json_body_without_content_type_is_415(
    client: httpx.Client, alice: Account
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": '
        yield b'"chunked"}'

    response = client.post("/api/v1/namespaces", content=chunks(), headers=alice.auth)
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_problem(response, 415, "unsupported_media_type")


def test_no_body_and_no_content_type_is_a_missing_body(
    client: httpx.Client, alice: Account
) -> None:
    response = client.post("/api/v1/namespaces", headers=alice.auth)
    body = assert_problem(response, 400, "validation_failed")
    assert body["errors"][0]["code"] == "required"


@pytest.mark.parametrize(
    "media", ["Application/JSON", "application/json ; charset=UTF-8", "APPLICATION/JSON;x=1"]
)
def test_content_type_in_capitals_is_read_as_the_json_it_was_validated_as(
    client: httpx.Client, alice: Account, media: str
) -> None:
    # Media types are case-insensitive: accepted by the validator, but once read as bytes.
    name = unique("ct")
    response = client.post(
        "/api/v1/namespaces",
        content=b'{"name": "%s"}' % name.encode(),
        headers={**alice.auth, "Content-Type": media},
    )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == name


def test_merge_patch_in_capitals_is_read_as_json(client: httpx.Client, alice: Account) -> None:
    created = client.post("/api/v1/namespaces", json={"name": unique("mp")}, headers=alice.auth)
    assert created.status_code == 201, created.text
    response = client.patch(
        created.headers["location"],
        content=b'{"description": "patched"}',
        headers={**alice.auth, "Content-Type": "Application/Merge-Patch+JSON"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["description"] == "patched"


# NUL (U+0000): PostgreSQL text cannot hold one (a 500 there, stored on SQLite), and in a
# manifest a YAML "\0" ran `echo a\0b` as `echo a`.


def _manifest(*, command: str = "true", env: str = "A=b") -> str:
    return (
        f'driver:\n  type: local\nenv: ["{env}"]\nstages: [test]\n'
        f'jobs:\n- stage: test\n  commands: ["{command}"]\n'
    )


Sender = Callable[[httpx.Client, Account, str], httpx.Response]


@dataclass(frozen=True)
class Place:
    """Where a string goes: a request that carries `text` there, and where the
    validation problem points for it."""

    send: Sender
    where: dict[str, str]
    accepted: int  # the status of the same request without the NUL
    count: str | None = None  # rows of the caller's that a refused request must not add


def _post(path: str, body: Callable[[str], dict[str, Any]]) -> Sender:
    def send(client: httpx.Client, account: Account, text: str) -> httpx.Response:
        return client.post(path, json=body(text), headers=account.auth)

    return send


def _get(path: str, name: str) -> Sender:
    def send(client: httpx.Client, account: Account, text: str) -> httpx.Response:
        return client.get(path, params={name: text}, headers=account.auth)

    return send


def _delete_tag(client: httpx.Client, account: Account, text: str) -> httpx.Response:
    quoted = urllib.parse.quote(text, safe="")
    return client.delete(f"/api/v1/builds/999999/tags/{quoted}", headers=account.auth)


BUILDS = "SELECT count(*) FROM builds WHERE user_id = :user"
PLACES = {
    "build comment": Place(
        _post("/api/v1/builds", lambda t: {"manifest": MANIFEST, "comment": t}),
        {"pointer": "/comment"},
        202,
        BUILDS,
    ),
    "build search": Place(
        _get("/api/v1/builds", "search"), {"parameter": "search", "in": "query"}, 200
    ),
    "namespace search": Place(
        _get("/api/v1/namespaces", "search"), {"parameter": "search", "in": "query"}, 200
    ),
    "namespace description": Place(
        _post("/api/v1/namespaces", lambda t: {"name": unique("nul"), "description": t}),
        {"pointer": "/description"},
        201,
        "SELECT count(*) FROM namespaces WHERE owner_id = :user",
    ),
    "ssh key config": Place(
        _post(
            "/api/v1/keys",
            lambda t: {"name": unique("k"), "key": ssh_private_key(), "config": f"Host {t}\n"},
        ),
        {"pointer": "/config"},
        201,
        "SELECT count(*) FROM ssh_keys WHERE user_id = :user",
    ),
    "token name": Place(
        _post("/api/v1/tokens", lambda t: {"name": t, "scopes": ["build:read"]}),
        {"pointer": "/name"},
        201,
        "SELECT count(*) FROM tokens WHERE user_id = :user",
    ),
    "path parameter": Place(_delete_tag, {"parameter": "name", "in": "path"}, 404),
    "manifest as sent": Place(
        _post("/api/v1/builds", lambda t: {"manifest": _manifest(command=f"echo {t}")}),
        {"pointer": "/manifest"},
        202,
        BUILDS,
    ),
}
# In the manifest's YAML a NUL is written "\0"; the request itself holds none.
MANIFEST_PLACES = {
    "manifest command": Place(
        _post("/api/v1/builds", lambda t: {"manifest": _manifest(command=f"echo {t}")}),
        {"pointer": "/manifest/jobs/0/commands/0"},
        202,
        BUILDS,
    ),
    "manifest env": Place(
        _post("/api/v1/builds", lambda t: {"manifest": _manifest(env=f"A={t}")}),
        {"pointer": "/manifest/env/0"},
        202,
        BUILDS,
    ),
    "cron manifest command": Place(
        _post(
            "/api/v1/cron",
            lambda t: {
                "name": unique("c"),
                "schedule": "@daily",
                "manifest": _manifest(command=f"echo {t}"),
            },
        ),
        {"pointer": "/manifest/jobs/0/commands/0"},
        201,
        "SELECT count(*) FROM cron_jobs WHERE user_id = :user",
    ),
}
ALL_PLACES = [(name, place, "a\x00b") for name, place in PLACES.items()] + [
    (name, place, "a\\0b") for name, place in MANIFEST_PLACES.items()
]


def _count(database_url: str, place: Place, account: Account) -> int | None:
    if place.count is None:
        return None
    count: int = query(database_url, place.count, user=account.id)[0][0]
    return count


@pytest.mark.parametrize(
    ("place", "nul"), [(p, n) for _, p, n in ALL_PLACES], ids=[n for n, _, _ in ALL_PLACES]
)
def test_nul_byte_injection_is_400_on_every_database(
    client: httpx.Client, database_url: str, alice: Account, place: Place, nul: str
) -> None:
    before = _count(database_url, place, alice)
    response = place.send(client, alice, nul)
    body = assert_problem(response, 400, "validation_failed")
    assert {**place.where, "code": "pattern"} in [
        {k: v for k, v in e.items() if k != "detail"} for e in body["errors"]
    ], body
    assert "NUL (U+0000)" in body["errors"][0]["detail"]
    assert _count(database_url, place, alice) == before
    # The same request without the NUL is not refused: the NUL was the reason.
    control = place.send(client, alice, nul.replace("\x00", "").replace("\\0", ""))
    assert control.status_code == place.accepted, control.text


def _request_strings() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every string schema a request can carry in a JSON body or a query or path parameter."""

    def walk(node: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
        node = spec.resolve(SPEC, node)
        if not isinstance(node, dict):
            return
        if node.get("type") == "string" and node.get("format") != "binary":
            yield where, node
        for name, sub in node.get("properties", {}).items():
            yield from walk(sub, f"{where}/{name}")
        if "items" in node:
            yield from walk(node["items"], f"{where}/0")
        for key in ("allOf", "anyOf", "oneOf"):
            for sub in node.get(key, []):
                yield from walk(sub, where)

    for path, item in SPEC["paths"].items():
        for method in spec.METHODS:
            op = item.get(method)
            if op is None:
                continue
            for param in [*item.get("parameters", []), *op.get("parameters", [])]:
                param = spec.resolve(SPEC, param)
                if param["in"] in ("query", "path"):
                    name = f"{method.upper()} {path} {param['in']} {param['name']}"
                    yield from walk(param["schema"], name)
            if "requestBody" not in op:
                continue
            for media, content in spec.resolve(SPEC, op["requestBody"])["content"].items():
                yield from walk(content["schema"], f"{method.upper()} {path} {media} body")


def test_the_contract_refuses_nul_in_every_request_string() -> None:
    # So that clients (and schemathesis) know; the validator enforces exactly the contract.
    samples = ["\x00", "a\x00", "a\x00b", "a: a\x00", "a/a\x00"]
    letting_nul_through = sorted(
        where
        for where, schema in _request_strings()
        if "enum" not in schema
        and not (
            "pattern" in schema and all(re.search(schema["pattern"], s) is None for s in samples)
        )
    )
    assert letting_nul_through == []


@pytest.mark.parametrize(
    ("part_type", "filename"),
    [("text/pl\x00ain", "ok.txt"), ("text/plain\x7f", "ok.txt"), ("nonsense", "ok.txt")],
)
def test_a_multipart_part_with_a_forged_content_type_is_400(
    client: httpx.Client, alice: Account, database_url: str, part_type: str, filename: str
) -> None:
    boundary = "kilnboundary"
    body = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: {part_type}\r\n\r\n"
        f"data\r\n--{boundary}--\r\n"
    ).encode()
    name = unique("forged")
    response = client.post(
        f"/api/v1/objects?name={name}",
        content=body,
        headers={**alice.auth, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_problem(response, 400, "validation_failed")
    assert response.json()["errors"][0]["pointer"] == "/file"
    assert query(database_url, "SELECT count(*) FROM objects WHERE name = :n", n=name)[0][0] == 0


def test_a_file_part_name_with_a_newline_is_not_taken_as_the_objects_name(
    client: httpx.Client, alice: Account
) -> None:
    response = client.post(
        "/api/v1/objects",
        files={"file": ("evil.txt\n", b"data", "text/plain")},
        headers=alice.auth,
    )
    assert_problem(response, 422, "invalid_value")
