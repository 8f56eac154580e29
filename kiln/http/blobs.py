"""Objects and images: uploads streamed to storage, downloads served with Range.

Both kinds share this flow; an image must also start with the QCOW2 magic.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connexion.context import receive as current_receive
from connexion.lifecycle import ConnexionResponse
from starlette.responses import FileResponse, MalformedRangeHeader, RangeNotSatisfiable

from kiln.core.config import Settings
from kiln.core.problems import FieldError, Problem
from kiln.domain import resources
from kiln.http import hal, idempotency
from kiln.http.asgi import current_scope, header
from kiln.http.auth import current_principal
from kiln.http.context import current_app
from kiln.http.etag import none_match
from kiln.http.uploads import UploadBody
from kiln.store.db import after_commit, session, utcnow
from kiln.store.storage import TooLarge
from models import Blob

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}$")


@dataclass(frozen=True)
class BlobKind:
    model: type[Blob]
    noun: str
    limit: Callable[[Settings], int]
    represent: Callable[[Any], hal.Body]
    magic: bytes = b""


class RangedFileResponse(FileResponse):
    # One range per request: a request for several gets the whole file (RFC 9110 allows it),
    # so every partial answer is a single `Content-Range` of the blob's own media type.
    max_ranges = 1

    def __init__(self, *args: Any, ignore_range: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ignore_range = ignore_range

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.ignore_range:  # a Range we cannot read is ignored, as RFC 9110 says
            scope = {**scope, "headers": [h for h in scope["headers"] if h[0] != b"range"]}
        await super().__call__(scope, receive, send)


async def upload(
    kind: BlobKind, *, name: str | None, namespace_id: int | None
) -> ConnexionResponse:
    app = current_app()
    db, principal, scope = app.db, current_principal(), current_scope()
    limit = kind.limit(app.settings)
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Problem("payload_too_large", f"The upload is over {limit} bytes.")

    def check_place() -> dict[str, Any]:
        with db.transaction(write=False):
            return resources.placement(principal, namespace_id)

    place = await db.run(check_place)
    content_type = header(scope, b"content-type")
    body = UploadBody(current_receive, content_type.decode("latin-1") if content_type else None)
    await body.open()
    name = name or body.filename
    if name is None or not NAME.fullmatch(name):
        # Only the body can say whether a name is missing, so this is not a schema error.
        raise Problem(
            "invalid_value",
            "Give the name as ?name= (letters, digits, . _ + -) or as the file part's name.",
            errors=[
                FieldError(
                    "required" if name is None else "pattern",
                    "A usable name is needed.",
                    parameter="name",
                    location="query",
                )
            ],
        )

    claim = None
    key = header(scope, b"idempotency-key")
    if key is not None and principal.user_id is not None:
        fingerprint = idempotency.fingerprint(
            "POST",
            scope["path"],
            {
                "query": scope["query_string"].decode(),
                "name": name,
                "type": body.content_type,
                "length": declared and declared.decode(),
            },
        )
        record_id, earlier = await db.run(
            lambda: idempotency.claim(
                db, app.secrets, principal, key.decode("latin-1"), fingerprint
            )
        )
        if earlier is not None:
            return earlier
        claim = record_id

    try:
        stored = await _store(app.storage.upload(limit=limit), body, kind)

        def insert() -> ConnexionResponse:
            with db.transaction():
                blob = kind.model(
                    name=name,
                    content_type=body.content_type,
                    size=stored.size,
                    md5=stored.md5,
                    sha256=stored.sha256,
                    storage_key=stored.key,
                    **place,
                )
                session().add(blob)
                resources.flush_unique(f"{kind.noun} {name} exists already here.")
                response = hal.created(kind.represent(blob))
                if claim is not None:
                    idempotency.remember(app.secrets, claim, response)
                return response

        try:
            return await db.run(insert)
        except BaseException:
            app.storage.delete(stored.key)
            raise
    except BaseException:
        if claim is not None:
            record_id = claim
            await db.run(lambda: idempotency.release(db, record_id))
        raise


async def _store(target: Any, body: UploadBody, kind: BlobKind) -> Any:
    """Stream the body into `target`; nothing stays behind if it stops short."""
    head = b""
    try:
        async for chunk in body:
            if len(head) < len(kind.magic):
                head += chunk[: len(kind.magic)]
                if len(head) >= len(kind.magic) and not head.startswith(kind.magic):
                    raise _not_magic(kind)
            await target.write(chunk)
        if len(head) < len(kind.magic):
            raise _not_magic(kind)
        return await target.commit()
    except TooLarge as exc:
        await target.abort()
        raise Problem("payload_too_large", f"The upload is over {exc.limit} bytes.") from None
    except BaseException:
        await target.abort()
        raise


def _not_magic(kind: BlobKind) -> Problem:
    return Problem(
        "invalid_value",
        f"An {kind.noun.lower()} must be a QCOW2 disk image.",
        errors=[
            FieldError("format", "The upload does not start with the QCOW2 magic.", pointer="")
        ],
    )


async def content(kind: BlobKind, blob_id: int) -> Any:
    """The blob's bytes, with its strong ETag; `Range` gives 206, or 416 past the end."""
    app, principal = current_app(), current_principal()

    def find() -> Blob:
        with app.db.transaction(write=False):
            return resources.find(
                kind.model, blob_id, principal, members_only=False, noun=kind.noun
            )

    blob = await app.db.run(find)
    return serve_file(
        app.storage.local_path(blob.storage_key),
        name=blob.name,
        size=blob.size,
        sha256=blob.sha256,
        noun=kind.noun.lower(),
    )


def serve_file(path: Path, *, name: str, size: int, sha256: str, noun: str) -> Any:
    """Stored bytes as a download: strong ETag (their SHA-256), `If-None-Match`, and
    one `Range` (206; 416 past the end; a malformed one is ignored)."""
    scope = current_scope()
    etag = f'"{sha256}"'
    if none_match(_header(scope, b"if-none-match"), etag):
        return ConnexionResponse(status_code=304, headers={"ETag": etag})
    requested = _header(scope, b"range")
    malformed = requested is not None and size == 0
    if requested is not None and size > 0:
        try:
            RangedFileResponse._parse_range_header(requested, size)
        except RangeNotSatisfiable:
            raise Problem(
                "range_not_satisfiable",
                f"The {noun} has {size} bytes.",
                headers={"Content-Range": f"bytes */{size}"},
            ) from None
        except MalformedRangeHeader:
            malformed = True
    return RangedFileResponse(
        path,
        media_type="application/octet-stream",
        filename=name,
        headers={"ETag": etag},
        ignore_range=malformed,
    )


def _header(scope: Any, name: bytes) -> str | None:
    value = header(scope, name)
    return value.decode("latin-1") if value is not None else None


def find(kind: BlobKind, blob_id: int) -> Any:
    return resources.find(
        kind.model, blob_id, current_principal(), members_only=False, noun=kind.noun
    )


def rename(kind: BlobKind, blob_id: int, changes: dict[str, Any]) -> Any:
    blob = resources.find_for_change(
        kind.model, blob_id, current_principal(), members_only=False, noun=kind.noun
    )
    hal.require_unchanged(kind.represent(blob))
    if "name" in changes:
        blob.name = changes["name"]
        blob.updated_at = utcnow()
        resources.flush_unique(f"{kind.noun} {blob.name} exists already here.")
    return blob


def delete(kind: BlobKind, blob_id: int) -> None:
    """Forget the blob; its bytes go once the deletion is committed."""
    blob = resources.find_for_change(
        kind.model, blob_id, current_principal(), members_only=False, noun=kind.noun
    )
    hal.require_unchanged(kind.represent(blob))
    session().delete(blob)
    session().flush()
    storage, key = current_app().storage, blob.storage_key
    after_commit(lambda: storage.delete(key))
