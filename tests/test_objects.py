"""Objects and images: streamed uploads, hashes, downloads with Range, limits that leave nothing."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    QCOW2_HEADER,
    Account,
    RunningServer,
    query,
    server_settings,
    wait_until,
)

Maker = Callable[..., Account]


def upload(
    client: httpx.Client, who: Account, data: bytes, path: str = "/api/v1/objects", **params: Any
) -> httpx.Response:
    return client.post(
        path,
        params=params,
        content=data,
        headers={**who.auth, "Content-Type": "application/x-tar"},
    )


def blob_files(server: RunningServer) -> list[Path]:
    root = server.settings.data_dir / "blobs"
    return [p for p in root.rglob("*") if p.is_file()]


def test_raw_upload_records_size_and_hashes(client: httpx.Client, alice: Account) -> None:
    data = os.urandom(300_000)
    response = upload(client, alice, data, name="data.tar")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["size"] == len(data)
    assert body["md5"] == hashlib.md5(data, usedforsecurity=False).hexdigest()
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["type"] == "application/x-tar"
    assert body["namespace_id"] is None
    assert response.headers["location"] == f"/api/v1/objects/{body['id']}"


def test_multipart_upload_takes_the_file_part(client: httpx.Client, alice: Account) -> None:
    data = b"#!/bin/sh\necho hi\n"
    response = client.post(
        "/api/v1/objects",
        files={"file": ("run.sh", data, "text/x-shellscript")},
        data={"ignored": "field"},
        headers=alice.auth,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["name"], body["type"], body["size"]) == ("run.sh", "text/x-shellscript", len(data))
    assert client.get(body["_links"]["content"]["href"], headers=alice.auth).content == data


def test_multipart_without_a_file_part_is_400(client: httpx.Client, alice: Account) -> None:
    response = client.post(
        "/api/v1/objects?name=x",
        data={"other": "value"},
        files={"not-file": b"x"},
        headers=alice.auth,
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["pointer"] == "/file"


def test_a_raw_upload_needs_a_name(client: httpx.Client, alice: Account) -> None:
    response = upload(client, alice, b"x")
    assert response.status_code == 422
    assert response.json()["errors"][0]["parameter"] == "name"


def test_download_with_type_length_etag_and_ranges(client: httpx.Client, alice: Account) -> None:
    data = bytes(range(256)) * 40
    created = upload(client, alice, data, name="ranged.bin").json()
    url = created["_links"]["content"]["href"]
    full = client.get(url, headers=alice.auth)
    assert full.status_code == 200
    assert full.content == data
    assert full.headers["content-type"] == "application/octet-stream"
    assert full.headers["content-disposition"] == 'attachment; filename="ranged.bin"'
    assert full.headers["content-length"] == str(len(data))
    assert full.headers["etag"] == f'"{created["sha256"]}"'
    part = client.get(url, headers={**alice.auth, "Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    tail = client.get(url, headers={**alice.auth, "Range": "bytes=-10"})
    assert tail.content == data[-10:]
    several = client.get(url, headers={**alice.auth, "Range": "bytes=0-1,5-6"})
    assert several.status_code == 200
    assert several.content == data
    past = client.get(url, headers={**alice.auth, "Range": f"bytes={len(data)}-"})
    assert past.status_code == 416
    assert past.json()["code"] == "range_not_satisfiable"
    assert past.headers["content-range"] == f"bytes */{len(data)}"
    for unreadable in ("pages=1-2", "0", "bytes=9-3"):  # ignored, as RFC 9110 allows
        ignored = client.get(url, headers={**alice.auth, "Range": unreadable})
        assert ignored.status_code == 200
        assert ignored.content == data
    cached = client.get(url, headers={**alice.auth, "If-None-Match": full.headers["etag"]})
    assert cached.status_code == 304


def test_names_are_unique_per_owner_or_namespace(client: httpx.Client, alice: Account) -> None:
    assert upload(client, alice, b"1", name="same").status_code == 201
    assert upload(client, alice, b"2", name="same").status_code == 409
    namespace = client.post("/api/v1/namespaces", json={"name": "objs"}, headers=alice.auth).json()
    assert upload(client, alice, b"3", name="same", namespace_id=namespace["id"]).status_code == 201


def test_public_namespace_objects_are_readable_by_anyone(
    client: httpx.Client, alice: Account, bob: Account
) -> None:
    public = client.post(
        "/api/v1/namespaces", json={"name": "pub-objs", "visibility": "public"}, headers=alice.auth
    ).json()
    created = upload(client, alice, b"open data", name="open.txt", namespace_id=public["id"]).json()
    assert client.get(created["_links"]["content"]["href"]).content == b"open data"
    listed = client.get(f"/api/v1/namespaces/{public['id']}/objects").json()
    assert [o["id"] for o in listed["_embedded"]["objects"]] == [created["id"]]
    # Seeing is not changing.
    assert client.delete(f"/api/v1/objects/{created['id']}", headers=bob.auth).status_code == 403
    assert upload(client, bob, b"x", name="mine", namespace_id=public["id"]).status_code == 422


def test_rename_and_delete(client: httpx.Client, server: RunningServer, alice: Account) -> None:
    created = upload(client, alice, b"bytes", name="before").json()
    url = f"/api/v1/objects/{created['id']}"
    renamed = client.patch(url, json={"name": "after"}, headers=alice.auth)
    assert renamed.status_code == 200
    assert renamed.json()["name"] == "after"
    stored = query(
        server.settings.database_url or "",
        "SELECT storage_key FROM objects WHERE id = :i",
        i=created["id"],
    )
    path = server.settings.data_dir / "blobs" / stored[0][0]
    assert path.exists()
    assert client.delete(url, headers=alice.auth).status_code == 204
    assert client.get(url, headers=alice.auth).status_code == 404
    assert not path.exists()


def test_idempotent_upload(client: httpx.Client, alice: Account) -> None:
    headers = {**alice.auth, "Idempotency-Key": "upload-1", "Content-Type": "text/plain"}
    first = client.post("/api/v1/objects?name=once.txt", content=b"one", headers=headers)
    again = client.post("/api/v1/objects?name=once.txt", content=b"one", headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]


@pytest.fixture
def small_server(database_url: str, tmp_path: Path) -> Iterator[RunningServer]:
    settings = server_settings(tmp_path, database_url, max_object_size=100_000)
    with RunningServer(settings) as running:
        yield running


def test_over_the_limit_is_413_and_leaves_nothing(
    small_server: RunningServer, database_url: str, alice: Account
) -> None:
    with small_server.client() as client:
        declared = upload(client, alice, b"x" * 100_001, name="big")
        assert declared.status_code == 413
        assert declared.json()["code"] == "payload_too_large"

        def stream() -> Iterator[bytes]:
            for _ in range(30):
                yield b"y" * 10_000

        chunked = client.post(
            "/api/v1/objects?name=big",
            content=stream(),
            headers={**alice.auth, "Content-Type": "x/y"},
        )
        assert chunked.status_code == 413
    assert blob_files(small_server) == []
    assert query(database_url, "SELECT count(*) FROM objects WHERE name = 'big'")[0][0] == 0


def test_an_interrupted_upload_leaves_nothing(
    small_server: RunningServer, database_url: str, alice: Account
) -> None:
    context = ssl.create_default_context(cafile=small_server.cert)
    with (
        socket.create_connection(("127.0.0.1", small_server.settings.port)) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(
            b"POST /api/v1/objects?name=cut HTTP/1.1\r\nHost: x\r\nContent-Length: 90000\r\n"
            + f"Authorization: Bearer {alice.token}\r\n".encode()
            + b"Content-Type: application/octet-stream\r\n\r\n"
            + b"z" * 40_000
        )
    wait_until(lambda: not blob_files(small_server), what="the partial upload to be removed")
    assert query(database_url, "SELECT count(*) FROM objects WHERE name = 'cut'")[0][0] == 0


def test_images_must_be_qcow2(client: httpx.Client, alice: Account, server: RunningServer) -> None:
    before = len(blob_files(server))
    image = upload(client, alice, QCOW2_HEADER + b"disk", path="/api/v1/images", name="disk.qcow2")
    assert image.status_code == 201, image.text
    assert image.json()["driver"] == "qemu"
    assert client.get(
        image.json()["_links"]["content"]["href"], headers=alice.auth
    ).content.startswith(b"QFI\xfb")
    for junk in (b"\x7fELF not an image", b"QF", b""):
        refused = upload(client, alice, junk, path="/api/v1/images", name="junk.qcow2")
        assert refused.status_code == 422, junk
        assert refused.json()["code"] == "invalid_value"
    assert len(blob_files(server)) == before + 1


def test_object_builds_are_listed(client: httpx.Client, alice: Account) -> None:
    created = upload(client, alice, b"x", name="unused").json()
    builds = client.get(created["_links"]["builds"]["href"], headers=alice.auth)
    assert builds.status_code == 200
    assert builds.json()["_embedded"]["builds"] == []
