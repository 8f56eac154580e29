"""`/openapi.yaml` and `/openapi.json`: the contract as written, `$ref`s and components
kept (generators name their types after them), made once, with a strong ETag.

connexion would serve its resolved copy instead, every `$ref` expanded (5.8 MB), and
dump it again on every request while the event loop waits.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from starlette.types import Scope, Send

from kiln.core import bodies, spec
from kiln.http.asgi import header
from kiln.http.etag import etag_of, none_match


@dataclass(frozen=True)
class Document:
    body: bytes
    media_type: str
    etag: str

    @classmethod
    def of(cls, body: bytes, media_type: str) -> Document:
        return cls(body, media_type, etag_of(body))


@functools.cache
def documents() -> dict[str, Document]:
    """The documents by path, made the first time they are asked for (at start)."""
    return {
        "/openapi.yaml": Document.of(spec.SPEC_PATH.read_bytes(), "application/yaml"),
        "/openapi.json": Document.of(bodies.dumps(spec.load()), "application/json"),
    }


def serves(scope: Scope) -> bool:
    """Whether the request is a GET or HEAD of one of the documents."""
    return (
        scope["type"] == "http"
        and scope["method"] in ("GET", "HEAD")
        and scope["path"] in documents()
    )


async def send_document(scope: Scope, send: Send) -> None:
    document = documents()[scope["path"]]
    headers = [(b"etag", document.etag.encode()), (b"cache-control", b"no-cache")]
    tags = header(scope, b"if-none-match")
    if none_match(tags.decode("latin-1") if tags is not None else None, document.etag):
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    headers += [
        (b"content-type", document.media_type.encode()),
        (b"content-length", str(len(document.body)).encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    body = b"" if scope["method"] == "HEAD" else document.body
    await send({"type": "http.response.body", "body": body})
