"""Namespaces: creation, nesting, visibility and collaborators."""

from __future__ import annotations

import datetime as dt
from typing import Any

from connexion.lifecycle import ConnexionResponse
from sqlmodel import col, delete, select

from kiln.core.problems import Problem, not_found
from kiln.domain import access, events, namespaces
from kiln.http import hal
from kiln.http.auth import current_principal
from kiln.http.pagination import paginate
from kiln.store.db import session
from models import Collaborator, Namespace, NamespaceAncestor, User, Visibility

NS = "/api/v1/namespaces"


def represent_namespace(namespace: Namespace, owner: str) -> hal.Body:
    self_href = f"{NS}/{namespace.id}"
    links: dict[str, Any] = {
        "self": hal.link(self_href),
        "root": hal.link(f"{NS}/{namespace.root_id}"),
        "children": hal.link(f"{self_href}/namespaces"),
        "collaborators": hal.link(f"{self_href}/collaborators"),
    }
    if namespace.parent_id is not None:
        links["parent"] = hal.link(f"{NS}/{namespace.parent_id}")
    return {
        "id": namespace.id,
        "name": namespace.name,
        "path": namespace.path,
        "description": namespace.description,
        "visibility": namespace.visibility,
        "parent_id": namespace.parent_id,
        "root_id": namespace.root_id,
        "depth": namespace.depth,
        "owner": {"id": namespace.owner_id, "username": owner},
        "created_at": namespace.created_at,
        "updated_at": namespace.updated_at,
        "_links": links,
    }


def represent_collaborator(user: User, namespace_id: int, since: dt.datetime) -> hal.Body:
    """`user` collaborates in the namespace `namespace_id` (and what is below it) since `since`."""
    return {
        "id": user.id,
        "username": user.username,
        "namespace_id": namespace_id,
        "created_at": since,
        "_links": {"self": hal.link(f"{NS}/{namespace_id}/collaborators/{user.username}")},
    }


def list_namespaces(
    limit: int = 25, after: str | None = None, path: str | None = None, search: str | None = None
) -> ConnexionResponse:
    principal = current_principal()
    query = access.with_owner()
    if path is not None:
        query = query.where(Namespace.path == path, access.readable(principal))
    else:
        query = query.where(access.member(principal))
    if search is not None:
        query = query.where(namespaces.name_contains(search))
    page = paginate(
        query, Namespace.id, limit=limit, after=after, params=access.caller_params(principal)
    )
    items = [represent_namespace(ns, owner) for ns, owner in page.rows]
    return hal.collection("namespaces", items, page)


def create_namespace(body: dict[str, Any]) -> ConnexionResponse:
    namespace, owner = namespaces.create(
        current_principal(),
        name=body["name"],
        description=body.get("description", ""),
        visibility=Visibility(body.get("visibility", Visibility.private)),
        parent_id=body.get("parent_id"),
    )
    return hal.created(represent_namespace(namespace, owner))


def get_namespace(id: int) -> ConnexionResponse:
    namespace, owner, _ = access.find_readable(current_principal(), id)
    return hal.resource(represent_namespace(namespace, owner))


def replace_namespace(id: int, body: dict[str, Any]) -> ConnexionResponse:
    return _change(id, {"description": "", **body})


def update_namespace(id: int, body: dict[str, Any]) -> ConnexionResponse:
    if "description" in body and body["description"] is None:
        body = {**body, "description": ""}  # merge patch: null removes the value
    return _change(id, body)


def delete_namespace(id: int) -> ConnexionResponse:
    namespace, owner, role = access.find_writable(current_principal(), id)
    access.require_owner(role, id, "delete it")
    hal.require_unchanged(represent_namespace(namespace, owner))
    namespaces.delete_tree(id)
    return hal.no_content()


def list_child_namespaces(
    id: int, limit: int = 25, after: str | None = None, search: str | None = None
) -> ConnexionResponse:
    principal = current_principal()
    access.find_readable(principal, id)
    query = access.with_owner().where(Namespace.parent_id == id, access.readable(principal))
    if search is not None:
        query = query.where(namespaces.name_contains(search))
    page = paginate(
        query, Namespace.id, limit=limit, after=after, params=access.caller_params(principal)
    )
    items = [represent_namespace(ns, owner) for ns, owner in page.rows]
    return hal.collection("namespaces", items, page)


def list_collaborators(id: int, limit: int = 25, after: str | None = None) -> ConnexionResponse:
    access.find_readable(current_principal(), id)
    grants = select(Collaborator.user_id).where(
        col(Collaborator.namespace_id) == NamespaceAncestor.ancestor_id,
        NamespaceAncestor.namespace_id == id,
    )
    page = paginate(select(User).where(col(User.id).in_(grants)), User.id, limit=limit, after=after)
    nearest = namespaces.nearest_grants(id, [u.id for u in page.rows])
    items = [represent_collaborator(user, *nearest[user.id]) for user in page.rows]
    return hal.collection("collaborators", items, page)


def remove_collaborator(id: int, username: str) -> ConnexionResponse:
    principal = current_principal()
    _, _, role = access.find_readable(principal, id)
    if role is not access.Role.owner and username != principal.username:
        raise Problem(
            "permission_denied", "Only the owner removes collaborators; you may remove yourself."
        )
    removed = session().exec(
        delete(Collaborator).where(
            col(Collaborator.namespace_id) == id,
            col(Collaborator.user_id).in_(select(User.id).where(User.username == username)),
        )
    )
    if removed.rowcount == 0:
        raise not_found("Collaborator", f"{username} of namespace {id}")
    return hal.no_content()


def _change(namespace_id: int, changes: dict[str, Any]) -> ConnexionResponse:
    """PUT and PATCH: apply name, description and visibility after the checks."""
    namespace, owner, role = access.find_writable(current_principal(), namespace_id)
    namespaces.require_may_change(namespace, changes, role)
    hal.require_unchanged(represent_namespace(namespace, owner))
    namespaces.change(namespace, changes)
    body = represent_namespace(namespace, owner)
    events.emit(namespace_id, "namespace.updated", body)
    return hal.resource(body)
