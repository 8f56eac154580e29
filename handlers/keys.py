"""Keys: SSH private keys written to builds' `~/.ssh`; stored encrypted, never returned."""

from __future__ import annotations

from typing import Any

from connexion.lifecycle import ConnexionResponse
from sqlmodel import col, delete

from kiln import hal, resources
from kiln.access import caller_params
from kiln.auth import current_principal
from kiln.db import session, utcnow
from kiln.operations import current_app
from kiln.pagination import paginate
from kiln.problems import FieldError, Problem
from kiln.sshkeys import InvalidKey, ParsedKey, parse_private_key
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
    principal = current_principal()
    query = resources.listing(
        SshKey,
        principal,
        members_only=True,
        namespace_id=namespace_id,
        search=search,
        search_column=SshKey.name,
    )
    page = paginate(query, SshKey.id, limit=limit, after=after, params=caller_params(principal))
    return hal.collection("keys", [represent_key(k) for k in page.rows], page.links)


def list_namespace_keys(
    id: int, limit: int = 25, after: str | None = None, search: str | None = None
) -> ConnexionResponse:
    return list_keys(limit=limit, after=after, namespace_id=id, search=search)


def create_key(body: dict[str, Any]) -> ConnexionResponse:
    parsed = _parse(body["key"])
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


def get_key(id: int) -> ConnexionResponse:
    key = resources.find(SshKey, id, current_principal(), members_only=True, noun=NOUN)
    return hal.resource(represent_key(key))


def update_key(id: int, body: dict[str, Any]) -> ConnexionResponse:
    key = resources.find(SshKey, id, current_principal(), members_only=True, noun=NOUN)
    hal.require_unchanged(represent_key(key))
    if "key" in body:
        parsed = _parse(body["key"])
        key.private_key = current_app().secrets.encrypt(body["key"].strip() + "\n")
        key.algorithm, key.fingerprint = parsed.algorithm, parsed.fingerprint
    if "name" in body:
        key.name = body["name"]
    if "config" in body:
        key.config = body["config"] if body["config"] is not None else ""
    key.updated_at = utcnow()
    resources.flush_unique(f"A key {key.name} exists already here.")
    return hal.resource(represent_key(key))


def delete_key(id: int) -> ConnexionResponse:
    key = resources.find(SshKey, id, current_principal(), members_only=True, noun=NOUN)
    hal.require_unchanged(represent_key(key))
    session().exec(delete(SshKey).where(col(SshKey.id) == id))
    return hal.no_content()


def _parse(text: str) -> ParsedKey:
    try:
        return parse_private_key(text)
    except InvalidKey as exc:
        raise Problem(
            "invalid_value",
            "The key is not a usable SSH private key.",
            errors=[FieldError("invalid_key", str(exc), pointer="/key")],
        ) from None
