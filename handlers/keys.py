"""Keys: SSH private keys written to builds' `~/.ssh`; stored encrypted, never returned."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from connexion.lifecycle import ConnexionResponse
from sqlmodel import col, delete

from kiln.core.problems import FieldError, Problem
from kiln.domain import resources
from kiln.domain.sshkeys import InvalidKey, ParsedKey, parse_private_key
from kiln.http import hal, pagination
from kiln.http.auth import current_principal
from kiln.http.context import current_app
from kiln.http.operations import read, unit
from kiln.store.db import session, utcnow
from models import SshKey

NOUN = "Key"


def represent_key(key: SshKey) -> hal.Body:
    return {
        "id": key.id,
        "name": key.name,
        "algorithm": key.algorithm,
        "fingerprint": key.fingerprint,
        "config": key.config,
        **resources.owner_fields(key),
        "_links": {"self": hal.link(f"/api/v1/keys/{key.id}"), **resources.owner_links(key)},
    }


def list_keys(
    limit: int = 25,
    after: str | None = None,
    namespace_id: int | None = None,
    search: str | None = None,
) -> ConnexionResponse:
    page = pagination.page_of(
        SshKey,
        current_principal(),
        members_only=True,
        search_column=SshKey.name,
        namespace_id=namespace_id,
        search=search,
        limit=limit,
        after=after,
    )
    return hal.collection("keys", [represent_key(k) for k in page.rows], page)


def list_namespace_keys(
    id: int, limit: int = 25, after: str | None = None, search: str | None = None
) -> ConnexionResponse:
    return list_keys(limit=limit, after=after, namespace_id=id, search=search)


async def create_key(body: dict[str, Any]) -> ConnexionResponse:
    parsed = await _parse(body["key"])

    def create() -> ConnexionResponse:
        key = SshKey(
            name=body["name"],
            private_key=current_app().secrets.encrypt(body["key"].strip() + "\n"),
            config=body.get("config", ""),
            algorithm=parsed.algorithm,
            fingerprint=parsed.fingerprint,
            **resources.placement(current_principal(), body.get("namespace_id")),
        )
        session().add(key)
        resources.flush_unique(f"A key {body['name']} exists already here.")
        return hal.created(represent_key(key))

    return await unit(create)


def get_key(id: int) -> ConnexionResponse:
    key = resources.find(SshKey, id, current_principal(), members_only=True, noun=NOUN)
    return hal.resource(represent_key(key))


async def update_key(id: int, body: dict[str, Any]) -> ConnexionResponse:
    await read(
        lambda: resources.find(SshKey, id, current_principal(), members_only=True, noun=NOUN)
    )
    parsed = await _parse(body["key"]) if "key" in body else None

    def update() -> ConnexionResponse:
        key = resources.find(SshKey, id, current_principal(), members_only=True, noun=NOUN)
        hal.require_unchanged(represent_key(key))
        if parsed is not None:
            key.private_key = current_app().secrets.encrypt(body["key"].strip() + "\n")
            key.algorithm, key.fingerprint = parsed.algorithm, parsed.fingerprint
        if "name" in body:
            key.name = body["name"]
        if "config" in body:
            key.config = body["config"] if body["config"] is not None else ""
        key.updated_at = utcnow()
        resources.flush_unique(f"A key {key.name} exists already here.")
        return hal.resource(represent_key(key))

    return await unit(update)


def delete_key(id: int) -> ConnexionResponse:
    key = resources.find(SshKey, id, current_principal(), members_only=True, noun=NOUN)
    hal.require_unchanged(represent_key(key))
    session().exec(delete(SshKey).where(col(SshKey.id) == id))
    return hal.no_content()


async def _parse(text: str) -> ParsedKey:
    """Parse off the event loop: checking a large RSA key takes seconds of CPU."""
    try:
        return await anyio.to_thread.run_sync(parse_private_key, text)
    except InvalidKey as exc:
        raise Problem(
            "invalid_value",
            "The key is not a usable SSH private key.",
            errors=[FieldError("invalid_key", str(exc), pointer="/key")],
        ) from None
