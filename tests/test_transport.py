"""HTTPS only, HSTS, HAL media types, dates, HEAD and the served contract."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

from kiln.core import spec
from tests.support import Account, RunningServer, server_settings


def test_plain_http_is_refused(database_url: str, tmp_path: Path) -> None:
    settings = server_settings(tmp_path, database_url, tls=False)
    with RunningServer(settings) as server, server.client() as client:
        response = client.get("/healthz")
        assert response.status_code == 403
        assert response.json()["code"] == "https_required"
        # X-Forwarded-Proto from an address that is not a trusted proxy changes nothing.
        response = client.get("/healthz", headers={"X-Forwarded-Proto": "https"})
        assert response.status_code == 403


def test_forwarded_proto_is_honoured_from_a_trusted_proxy(
    database_url: str, tmp_path: Path
) -> None:
    settings = server_settings(tmp_path, database_url, tls=False, forwarded_allow_ips="127.0.0.1")
    with RunningServer(settings) as server, server.client() as client:
        assert client.get("/healthz", headers={"X-Forwarded-Proto": "https"}).status_code == 200
        response = client.get("/healthz", headers={"X-Forwarded-Proto": "http"})
        assert response.status_code == 403
        assert response.json()["code"] == "https_required"


def test_every_answer_carries_hsts_and_nosniff(client: httpx.Client) -> None:
    for path in ("/healthz", "/nope", "/api/v1/user"):
        headers = client.get(path).headers
        assert headers["strict-transport-security"].startswith("max-age=")
        assert headers["x-content-type-options"] == "nosniff"


def test_hal_by_default_and_json_for_json_only_clients(
    client: httpx.Client, alice: Account
) -> None:
    assert client.get("/api/v1/user", headers=alice.auth).headers["content-type"] == (
        "application/hal+json"
    )
    json_only = client.get("/api/v1/user", headers={**alice.auth, "Accept": "application/json"})
    assert json_only.headers["content-type"] == "application/json"
    assert json_only.json()["_links"]["self"]["href"] == "/api/v1/user"
    weighted = client.get(
        "/api/v1/user",
        headers={**alice.auth, "Accept": "application/hal+json;q=0.5, application/json"},
    )
    assert weighted.headers["content-type"] == "application/json"


def test_dates_are_rfc3339_utc_with_z(client: httpx.Client, alice: Account) -> None:
    created = client.post("/api/v1/namespaces", json={"name": "dates"}, headers=alice.auth).json()
    for field in ("created_at", "updated_at"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", created[field])


def test_head_has_the_headers_of_get_and_no_body(client: httpx.Client, alice: Account) -> None:
    get = client.get("/api/v1/user", headers=alice.auth)
    head = client.head("/api/v1/user", headers=alice.auth)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["etag"] == get.headers["etag"]


def test_the_contract_is_served(client: httpx.Client) -> None:
    served = client.get("/openapi.json").json()
    assert served["paths"].keys() == spec.load()["paths"].keys()
    as_yaml = yaml.safe_load(client.get("/openapi.yaml").text)
    assert as_yaml["info"]["title"] == "Kiln API"
    docs = client.get("/docs/")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


def test_the_contract_is_served_as_written_with_an_etag(client: httpx.Client) -> None:
    # As written: $refs and components kept (connexion's copy had every $ref expanded,
    # 5.8 MB, dumped again for each request while the event loop waited).
    as_yaml = client.get("/openapi.yaml")
    assert as_yaml.status_code == 200
    assert as_yaml.content == spec.SPEC_PATH.read_bytes()
    assert as_yaml.headers["content-type"] == "application/yaml"
    as_json = client.get("/openapi.json")
    assert as_json.headers["content-type"] == "application/json"
    assert '"$ref":"#/components/' in as_json.text
    assert as_json.json()["components"].keys() == spec.load()["components"].keys()
    assert len(as_json.content) < 2 * len(as_yaml.content)
    for document in (as_yaml, as_json):
        etag = document.headers["etag"]
        again = client.get(document.url.path, headers={"If-None-Match": etag})
        assert again.status_code == 304
        assert again.headers["etag"] == etag
        head = client.head(document.url.path)
        assert head.status_code == 200
        assert head.content == b""


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ok"}


def test_readiness_fails_when_the_database_is_unreachable(tmp_path: Path) -> None:
    unreachable = "postgresql+psycopg://postgres@127.0.0.1:1/test"
    settings = server_settings(tmp_path, unreachable)
    with RunningServer(settings) as server, server.client() as client:
        assert client.get("/healthz").status_code == 200
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["code"] == "service_unavailable"
        assert int(response.headers["retry-after"]) > 0
        response = client.get("/api/v1/user", headers={"Authorization": "Bearer kiln_" + "a" * 43})
        assert response.status_code == 503
        assert response.json()["code"] == "service_unavailable"


def test_merge_patch_media_type(client: httpx.Client, make_user: Callable[..., Account]) -> None:
    owner = make_user()
    created = client.post(
        "/api/v1/namespaces", json={"name": "mp", "description": "first"}, headers=owner.auth
    ).json()
    response = client.patch(
        f"/api/v1/namespaces/{created['id']}",
        content=b'{"description": null}',
        headers={**owner.auth, "Content-Type": "application/merge-patch+json"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["description"] == ""
    assert response.json()["name"] == "mp"


def test_plain_http_to_the_tls_port_is_refused_then_closed(server: RunningServer) -> None:
    port = server.settings.port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
        plain.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := plain.recv(65536):  # the server closes the connection
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    assert status_line.startswith("HTTP/1.1 403")
    headers = {name.lower(): value for name, value in (h.split(": ", 1) for h in header_lines)}
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    problem = json.loads(body)
    assert problem["code"] == "https_required"
    assert problem["instance"] == "/healthz"
    assert problem["request_id"] == headers["x-request-id"]
    # TLS on the same port is served as before, keep-alive and all.
    with server.client() as client:
        first, second = client.get("/healthz"), client.get("/healthz")
        assert first.status_code == second.status_code == 200
        assert first.extensions["network_stream"] is second.extensions["network_stream"]
