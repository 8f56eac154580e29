"""Every error is problem+json with a stable code, including the framework's own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kiln.core.problems import CATALOGUE
from tests.support import Account

JSON = {"Content-Type": "application/json"}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["type"] == f"/problems/{code}"
    assert body["title"] == CATALOGUE[code].title
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["instance"] == response.request.url.path
    assert "Traceback" not in response.text
    return body


def test_unknown_path_is_a_problem(client: httpx.Client) -> None:
    assert_problem(client.get("/api/v1/nothing-here"), 404, "not_found")


def test_wrong_method_lists_every_allowed_method(client: httpx.Client, alice: Account) -> None:
    response = client.post("/api/v1/namespaces/1", headers=alice.auth)
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET, PUT, DELETE, PATCH, HEAD"


def test_unparsable_json(client: httpx.Client, alice: Account) -> None:
    response = client.post(
        "/api/v1/namespaces", content=b'{"name": ', headers={**alice.auth, **JSON}
    )
    assert_problem(response, 400, "malformed_json")


@pytest.mark.parametrize(
    "body", [b'{"name": "\xff\xfe"}', b"\xc3\x28", b'{"name": "a\xed\xa0\x80"}']
)
def test_body_that_is_not_utf8(client: httpx.Client, alice: Account, body: bytes) -> None:
    response = client.post("/api/v1/namespaces", content=body, headers={**alice.auth, **JSON})
    assert_problem(response, 400, "invalid_encoding")


def test_validation_lists_every_failing_field(client: httpx.Client, alice: Account) -> None:
    response = client.post(
        "/api/v1/namespaces",
        json={"nam": "x", "visibility": "secret", "parent_id": "a", "description": "d" * 1001},
        headers=alice.auth,
    )
    body = assert_problem(response, 400, "validation_failed")
    errors = {e["pointer"]: e["code"] for e in body["errors"]}
    assert errors == {
        "/nam": "unknown_field",
        "/name": "required",
        "/visibility": "enum",
        "/parent_id": "type",
        "/description": "too_long",
    }
    assert body["detail"] == "5 fields are invalid."


def test_parameter_errors_name_the_parameter(client: httpx.Client, alice: Account) -> None:
    response = client.get("/api/v1/namespaces?limit=0&after=!!&color=red", headers=alice.auth)
    body = assert_problem(response, 400, "validation_failed")
    found = {(e["parameter"], e["in"], e["code"]) for e in body["errors"]}
    assert found == {
        ("limit", "query", "out_of_range"),
        ("after", "query", "pattern"),
        ("color", "query", "unknown_parameter"),
    }


def test_huge_path_id_is_a_validation_problem(client: httpx.Client, alice: Account) -> None:
    response = client.get("/api/v1/namespaces/99999999999999999999999", headers=alice.auth)
    body = assert_problem(response, 400, "validation_failed")
    assert body["errors"] == [
        {
            "code": "out_of_range",
            "detail": "id must be at most 9007199254740991.",
            "parameter": "id",
            "in": "path",
        }
    ]


def test_missing_body(client: httpx.Client, alice: Account) -> None:
    response = client.post("/api/v1/namespaces", headers={**alice.auth, **JSON})
    body = assert_problem(response, 400, "validation_failed")
    assert body["errors"][0]["code"] == "required"


def test_body_of_the_wrong_media_type(client: httpx.Client, alice: Account) -> None:
    response = client.post(
        "/api/v1/namespaces",
        content=b"name=x",
        headers={**alice.auth, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_problem(response, 415, "unsupported_media_type")


def test_accept_that_cannot_be_met(client: httpx.Client, alice: Account) -> None:
    response = client.get("/api/v1/user", headers={**alice.auth, "Accept": "application/xml"})
    assert_problem(response, 406, "not_acceptable")


def test_body_over_the_limit_by_content_length(client: httpx.Client, alice: Account) -> None:
    body = b'{"name": "' + b"x" * (1024 * 1024) + b'"}'
    response = client.post("/api/v1/namespaces", content=body, headers={**alice.auth, **JSON})
    assert_problem(response, 413, "payload_too_large")


def test_chunked_body_over_the_limit(client: httpx.Client, alice: Account) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts as it reads
        yield b'{"name": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    response = client.post("/api/v1/namespaces", content=chunks(), headers={**alice.auth, **JSON})
    assert_problem(response, 413, "payload_too_large")


def test_chunked_body_within_the_limit_is_read(client: httpx.Client, alice: Account) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": '
        yield b'"chunked"}'

    response = client.post("/api/v1/namespaces", content=chunks(), headers={**alice.auth, **JSON})
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("code", sorted(CATALOGUE))
def test_every_problem_type_has_its_page(client: httpx.Client, code: str) -> None:
    response = client.get(f"/problems/{code}")
    assert response.status_code == 200
    page = response.json()
    assert page["code"] == code
    assert page["status"] == CATALOGUE[code].status
    assert page["_links"]["self"]["href"] == CATALOGUE[code].type_uri


def test_request_id_is_echoed_when_sane(client: httpx.Client) -> None:
    response = client.get("/healthz", headers={"X-Request-Id": "trace-42.a:b"})
    assert response.headers["x-request-id"] == "trace-42.a:b"


def test_request_id_is_made_when_missing_or_unsafe(client: httpx.Client) -> None:
    ids = {
        client.get("/healthz").headers["x-request-id"],
        client.get("/healthz", headers={"X-Request-Id": "bad id\t<script>"}).headers[
            "x-request-id"
        ],
    }
    assert len(ids) == 2
    assert all(len(i) == 26 and i.isalnum() for i in ids)


def test_details_that_quote_the_request_stay_within_the_contract(
    client: httpx.Client, alice: Account
) -> None:
    name = "p" * 5000
    response = client.get(f"/api/v1/namespaces?{name}=1", headers=alice.auth)
    error = assert_problem(response, 400, "validation_failed")["errors"][0]
    assert len(error["parameter"]) == 100
    assert len(error["detail"]) <= 1000


def test_a_problem_page_answers_to_hyphens_for_underscores(client: httpx.Client) -> None:
    response = client.get("/problems/not-found")
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["code"] == "not_found"
    assert page["_links"]["self"]["href"] == "/problems/not_found"
    assert client.get("/problems/https-required").json()["code"] == "https_required"
    missing = assert_problem(client.get("/problems/no-such-thing"), 404, "not_found")
    assert missing["detail"] == "No problem type no-such-thing."
