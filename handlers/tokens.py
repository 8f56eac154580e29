"""Tokens: the caller's personal capability tokens."""

from __future__ import annotations

import datetime as dt
from typing import Any

from connexion.lifecycle import ConnexionResponse
from sqlmodel import col, delete, select

from kiln.core.principal import Principal
from kiln.core.problems import FieldError, Problem, not_found
from kiln.domain import access
from kiln.domain.accounts import issue_token
from kiln.domain.credentials import expand_scopes
from kiln.http import hal
from kiln.http.auth import current_principal, invalid_credentials
from kiln.http.pagination import paginate
from kiln.store.db import session, utcnow
from models import Token


def represent_token(token: Token) -> hal.Body:
    return {
        "id": token.id,
        "name": token.name,
        "scopes": token.scopes.split(),
        "namespace_id": token.namespace_id,
        "expires_at": token.expires_at,
        "last_used_at": token.last_used_at,
        "created_at": token.created_at,
        "_links": {"self": hal.link(f"/api/v1/tokens/{token.id}")},
    }


def _token_manager() -> Principal:
    """Tokens are managed with the password or with a token that is not narrowed to a
    namespace (and holds the operation's `token:` scope, which connexion checks)."""
    principal = current_principal()
    if principal.is_narrowed:
        raise Problem(
            "token_narrowed",
            f"This token is narrowed to namespace {principal.namespace_id}; "
            "use your password or an unnarrowed token.",
        )
    return principal


def _own_token(principal: Principal, token_id: int) -> Token:
    token = (
        session().exec(
            select(Token).where(Token.id == token_id, Token.user_id == principal.user_id)
        )
    ).one_or_none()
    if token is None:
        raise not_found("Token", token_id)
    return token


def list_tokens(limit: int = 25, after: str | None = None) -> ConnexionResponse:
    principal = _token_manager()
    page = paginate(
        select(Token).where(Token.user_id == principal.user_id),
        Token.id,
        limit=limit,
        after=after,
    )
    return hal.collection("tokens", [represent_token(t) for t in page.rows], page)


def create_token(body: dict[str, Any]) -> ConnexionResponse:
    principal = _token_manager()
    scopes = expand_scopes(body["scopes"])
    beyond = [s for s in scopes if s not in principal.scopes]
    if beyond:
        raise Problem("scope_escalation", f"Your credentials do not hold {', '.join(beyond)}.")
    namespace_id = body.get("namespace_id")
    if namespace_id is not None:
        access.find_readable(principal, namespace_id)
    expires_at = _future_timestamp(body.get("expires_at"), "/expires_at")
    parent = None
    if principal.token_id is not None:
        parent = session().get(Token, principal.token_id)
        if parent is None:  # revoked since this request was authenticated
            raise invalid_credentials("The token is unknown or revoked.")
    assert principal.user_id is not None
    token, secret = issue_token(
        principal.user_id,
        name=body["name"],
        scopes=scopes,
        namespace_id=namespace_id,
        expires_at=expires_at,
        parent=parent,
    )
    return hal.created({**represent_token(token), "token": secret})


def get_token(id: int) -> ConnexionResponse:
    token = _own_token(_token_manager(), id)
    return hal.resource(represent_token(token))


def update_token(id: int, body: dict[str, Any]) -> ConnexionResponse:
    token = _own_token(_token_manager(), id)
    hal.require_unchanged(represent_token(token))
    if "name" in body:
        token.name = body["name"]
    if "scopes" in body:
        scopes = expand_scopes(body["scopes"])
        wider = [s for s in scopes if s not in token.scope_set]
        if wider:
            raise Problem(
                "scope_widening", f"A token's scopes can only shrink; {', '.join(wider)} is new."
            )
        token.scopes = " ".join(scopes)
    session().flush()
    return hal.resource(represent_token(token))


def revoke_token(id: int) -> ConnexionResponse:
    token = _own_token(_token_manager(), id)
    hal.require_unchanged(represent_token(token))
    session().exec(delete(Token).where(col(Token.id) == token.id))
    return hal.no_content()


def _future_timestamp(value: str | None, pointer: str) -> dt.datetime | None:
    if value is None:
        return None
    rejected = Problem(
        "invalid_value",
        "expires_at must be a time in the future.",
        errors=[FieldError("in_past", "expires_at must be in the future.", pointer=pointer)],
    )
    try:
        moment = dt.datetime.fromisoformat(value).astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise rejected from None
    if moment <= utcnow():
        raise rejected
    return moment.replace(microsecond=0)
