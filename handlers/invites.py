"""Invites: a namespace's owner asks a user to collaborate; the user accepts or declines."""

from __future__ import annotations

from typing import Any

from connexion.lifecycle import ConnexionResponse
from sqlalchemy.orm import aliased
from sqlmodel import col, delete, select

from handlers.namespaces import represent_collaborator
from kiln.core.principal import Principal
from kiln.core.problems import FieldError, Problem, not_found
from kiln.domain import access, events
from kiln.domain.accounts import find_user
from kiln.domain.resources import flush_unique
from kiln.http import hal
from kiln.http.auth import current_principal
from kiln.http.pagination import paginate
from kiln.store.db import session
from models import Collaborator, Invite, Namespace, NamespaceAncestor, User

Invitee = aliased(User)
Inviter = aliased(User)


def represent_invite(invite: Invite, path: str, invitee: str, inviter: str) -> hal.Body:
    href = f"/api/v1/invites/{invite.id}"
    return {
        "id": invite.id,
        "namespace_id": invite.namespace_id,
        "namespace_path": path,
        "username": invitee,
        "inviter": inviter,
        "created_at": invite.created_at,
        "_links": {
            "self": hal.link(href),
            "accept": hal.link(f"{href}/accept"),
            "namespace": hal.link(f"/api/v1/namespaces/{invite.namespace_id}"),
        },
    }


def _with_names() -> Any:
    return (
        select(Invite, Namespace.path, Invitee.username, Inviter.username)
        .join(Namespace, col(Namespace.id) == Invite.namespace_id)
        .join(Invitee, col(Invitee.id) == Invite.user_id)
        .join(Inviter, col(Inviter.id) == Invite.inviter_id)
    )


def _received_by(principal: Principal) -> Any:
    """Invites to the caller, within the namespace its token is narrowed to, if any."""
    query = _with_names().where(Invite.user_id == principal.user_id)
    if principal.namespace_id is not None:
        inside = select(NamespaceAncestor.namespace_id).where(
            NamespaceAncestor.ancestor_id == principal.namespace_id
        )
        query = query.where(col(Invite.namespace_id).in_(inside))
    return query


def _find(invite_id: int) -> tuple[Invite, str, str, str, bool]:
    """The invite, its names, and whether the caller is its invitee (else the owner)."""
    principal = current_principal()
    row = session().exec(_with_names().where(Invite.id == invite_id)).one_or_none()
    if row is not None:
        invite = row[0]
        if (
            invite.user_id == principal.user_id
            and session().exec(_received_by(principal).where(Invite.id == invite_id)).first()
        ):
            return (*row, True)
        try:
            _, _, role = access.find_readable(principal, invite.namespace_id)
        except Problem:
            role = None
        if role is access.Role.owner:
            return (*row, False)
    raise not_found("Invite", invite_id)


def create_invite(id: int, body: dict[str, Any]) -> ConnexionResponse:
    principal = current_principal()
    namespace, _, role = access.find_readable(principal, id)
    if role is not access.Role.owner:
        raise Problem("permission_denied", "Only the namespace's owner invites collaborators.")
    user = find_user(body["username"])
    if user is None:
        raise Problem(
            "user_not_found",
            f"No user is called {body['username']}.",
            errors=[FieldError("unknown_user", "No such user.", pointer="/username")],
        )
    if (
        user.id == namespace.owner_id
        or session()
        .exec(
            select(Collaborator).where(
                col(Collaborator.user_id) == user.id,
                col(Collaborator.namespace_id).in_(
                    select(NamespaceAncestor.ancestor_id).where(
                        NamespaceAncestor.namespace_id == id
                    )
                ),
            )
        )
        .first()
    ):
        raise Problem("already_exists", f"{user.username} has access to {namespace.path} already.")
    assert principal.user_id is not None
    assert user.id is not None
    invite = Invite(namespace_id=id, user_id=user.id, inviter_id=principal.user_id)
    session().add(invite)
    flush_unique(f"{user.username} is invited to {namespace.path} already.")
    body = represent_invite(invite, namespace.path, user.username, principal.username or "")
    events.emit(id, "invite.sent", body)
    return hal.created(body)


def list_namespace_invites(id: int, limit: int = 25, after: str | None = None) -> ConnexionResponse:
    _, _, role = access.find_readable(current_principal(), id)
    if role is access.Role.reader:
        raise Problem("permission_denied", f"You do not own or collaborate in namespace {id}.")
    page = paginate(
        _with_names().where(Invite.namespace_id == id), Invite.id, limit=limit, after=after
    )
    return hal.collection("invites", [represent_invite(*row) for row in page.rows], page)


def list_invites(limit: int = 25, after: str | None = None) -> ConnexionResponse:
    page = paginate(_received_by(current_principal()), Invite.id, limit=limit, after=after)
    return hal.collection("invites", [represent_invite(*row) for row in page.rows], page)


def get_invite(id: int) -> ConnexionResponse:
    invite, path, invitee, inviter, _ = _find(id)
    return hal.resource(represent_invite(invite, path, invitee, inviter))


def accept_invite(id: int) -> ConnexionResponse:
    invite, path, invitee, inviter, is_invitee = _find(id)
    if not is_invitee:
        raise Problem("permission_denied", "Only the invited user accepts an invite.")
    accepted = represent_invite(invite, path, invitee, inviter)
    collaborator = Collaborator(namespace_id=invite.namespace_id, user_id=invite.user_id)
    session().add(collaborator)
    session().exec(delete(Invite).where(col(Invite.id) == id))
    session().flush()
    events.emit(invite.namespace_id, "invite.accepted", accepted)
    user = session().get(User, invite.user_id)
    assert user is not None
    return hal.resource(represent_collaborator(user, invite.namespace_id, collaborator.created_at))


def delete_invite(id: int) -> ConnexionResponse:
    invite, path, invitee, inviter, _ = _find(id)
    hal.require_unchanged(represent_invite(invite, path, invitee, inviter))
    session().exec(delete(Invite).where(col(Invite.id) == id))
    return hal.no_content()
