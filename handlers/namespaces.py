"""Namespaces: creation, nesting, visibility and collaborators."""

from __future__ import annotations

from typing import Any

from connexion.lifecycle import ConnexionResponse
from sqlalchemy import func, literal
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, delete, select, update

from kiln import access, hal
from kiln.auth import current_principal
from kiln.db import session, utcnow
from kiln.pagination import paginate
from kiln.problems import Problem, not_found
from models import MAX_DEPTH, Collaborator, Namespace, NamespaceAncestor, User, Visibility

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


async def list_namespaces(
    limit: int = 25, after: str | None = None, path: str | None = None, search: str | None = None
) -> ConnexionResponse:
    principal = current_principal()
    query = access.with_owner()
    if path is not None:
        query = query.where(Namespace.path == path, access.readable(principal))
    else:
        query = query.where(access.member(principal))
    if search is not None:
        query = query.where(_name_contains(search))
    page = await paginate(query, Namespace.id, limit=limit, after=after)
    items = [represent_namespace(ns, owner) for ns, owner in page.rows]
    return hal.collection("namespaces", items, page.links)


async def create_namespace(body: dict[str, Any]) -> ConnexionResponse:
    principal = current_principal()
    assert principal.user_id is not None
    assert principal.username is not None
    visibility = Visibility(body.get("visibility", Visibility.private))
    parent_id = body.get("parent_id")
    if parent_id is not None:
        parent = await access.find_for_writing_into(principal, parent_id)
        if parent.depth >= MAX_DEPTH:
            raise Problem("namespace_too_deep", f"Namespaces nest at most {MAX_DEPTH} deep.")
        _check_not_above(visibility, Visibility(parent.visibility))
        owner_id, path, depth = parent.owner_id, f"{parent.path}/{body['name']}", parent.depth + 1
    else:
        if principal.is_narrowed:
            raise Problem(
                "namespace_forbidden",
                f"This token is narrowed to namespace {principal.namespace_id}.",
            )
        owner_id, path, depth = principal.user_id, f"{principal.username}/{body['name']}", 1
    await _ensure_path_free(path)
    namespace = Namespace(
        name=body["name"],
        path=path,
        description=body.get("description", ""),
        visibility=visibility.value,
        parent_id=parent_id,
        depth=depth,
        owner_id=owner_id,
    )
    session().add(namespace)
    await _flush_unique(path)
    namespace.root_id = parent.root_id if parent_id is not None else namespace.id
    await _record_ancestry(namespace)
    owner = principal.username if owner_id == principal.user_id else await _username(owner_id)
    return hal.created(represent_namespace(namespace, owner))


async def get_namespace(id: int) -> ConnexionResponse:
    namespace, owner, _ = await access.find_readable(current_principal(), id)
    return hal.resource(represent_namespace(namespace, owner))


async def replace_namespace(id: int, body: dict[str, Any]) -> ConnexionResponse:
    return await _change(id, {"description": "", **body})


async def update_namespace(id: int, body: dict[str, Any]) -> ConnexionResponse:
    if "description" in body and body["description"] is None:
        body = {**body, "description": ""}  # merge patch: null removes the value
    return await _change(id, body)


async def delete_namespace(id: int) -> ConnexionResponse:
    namespace, owner, role = await access.find_writable(current_principal(), id)
    if role is not access.Role.owner:
        raise Problem("permission_denied", "Only the owner may delete a namespace.")
    hal.require_unchanged(represent_namespace(namespace, owner))
    # Children, their children and everything in them go with it (ON DELETE CASCADE).
    await session().exec(delete(Namespace).where(col(Namespace.id) == id))
    return hal.no_content()


async def list_child_namespaces(
    id: int, limit: int = 25, after: str | None = None, search: str | None = None
) -> ConnexionResponse:
    principal = current_principal()
    await access.find_readable(principal, id)
    query = access.with_owner().where(Namespace.parent_id == id, access.readable(principal))
    if search is not None:
        query = query.where(_name_contains(search))
    page = await paginate(query, Namespace.id, limit=limit, after=after)
    items = [represent_namespace(ns, owner) for ns, owner in page.rows]
    return hal.collection("namespaces", items, page.links)


async def list_collaborators(
    id: int, limit: int = 25, after: str | None = None
) -> ConnexionResponse:
    await access.find_readable(current_principal(), id)
    grants = select(Collaborator.user_id).where(
        col(Collaborator.namespace_id) == NamespaceAncestor.ancestor_id,
        NamespaceAncestor.namespace_id == id,
    )
    page = await paginate(
        select(User).where(col(User.id).in_(grants)), User.id, limit=limit, after=after
    )
    nearest = await _nearest_grants(id, [u.id for u in page.rows])
    items = []
    for user in page.rows:
        granted_on, since = nearest[user.id]
        items.append(
            {
                "id": user.id,
                "username": user.username,
                "namespace_id": granted_on,
                "created_at": since,
                "_links": {"self": hal.link(f"{NS}/{granted_on}/collaborators/{user.username}")},
            }
        )
    return hal.collection("collaborators", items, page.links)


async def remove_collaborator(id: int, username: str) -> ConnexionResponse:
    principal = current_principal()
    _, _, role = await access.find_readable(principal, id)
    if role is not access.Role.owner and username != principal.username:
        raise Problem(
            "permission_denied", "Only the owner removes collaborators; you may remove yourself."
        )
    removed = await session().exec(
        delete(Collaborator).where(
            col(Collaborator.namespace_id) == id,
            col(Collaborator.user_id).in_(select(User.id).where(User.username == username)),
        )
    )
    if removed.rowcount == 0:
        raise not_found("Collaborator", f"{username} of namespace {id}")
    return hal.no_content()


async def _change(namespace_id: int, changes: dict[str, Any]) -> ConnexionResponse:
    """PUT and PATCH: apply name, description and visibility after the checks."""
    namespace, owner, _ = await access.find_writable(current_principal(), namespace_id)
    hal.require_unchanged(represent_namespace(namespace, owner))
    if "visibility" in changes:
        visibility = Visibility(changes["visibility"])
        await _check_visibility_fits(namespace, visibility)
        namespace.visibility = visibility.value
    if "description" in changes:
        namespace.description = changes["description"]
    if "name" in changes and changes["name"] != namespace.name:
        await _rename(namespace, changes["name"])
    namespace.updated_at = utcnow()
    await session().flush()
    return hal.resource(represent_namespace(namespace, owner))


async def _rename(namespace: Namespace, name: str) -> None:
    old_path = namespace.path
    new_path = old_path.rsplit("/", 1)[0] + "/" + name
    await _ensure_path_free(new_path)
    # Every descendant's path starts with ours: rewrite that prefix below us.
    descendants = select(NamespaceAncestor.namespace_id).where(
        NamespaceAncestor.ancestor_id == namespace.id, NamespaceAncestor.distance > 0
    )
    await session().exec(
        update(Namespace)
        .where(col(Namespace.id).in_(descendants))
        .values(path=literal(new_path).concat(func.substr(Namespace.path, len(old_path) + 1)))
        .execution_options(synchronize_session=False)
    )
    namespace.name, namespace.path = name, new_path
    await _flush_unique(new_path)


async def _check_visibility_fits(namespace: Namespace, visibility: Visibility) -> None:
    if namespace.parent_id is not None:
        parent = await session().get(Namespace, namespace.parent_id)
        assert parent is not None
        _check_not_above(visibility, Visibility(parent.visibility))
    children = await session().exec(
        select(Namespace.visibility).where(Namespace.parent_id == namespace.id).distinct()
    )
    widest = max((Visibility(v).rank for v in children), default=-1)
    if widest > visibility.rank:
        raise Problem(
            "visibility_conflict",
            f"A child of namespace {namespace.id} is more visible than {visibility.value}.",
        )


def _check_not_above(visibility: Visibility, parent: Visibility) -> None:
    if visibility.rank > parent.rank:
        raise Problem(
            "visibility_conflict",
            f"A namespace cannot be {visibility.value} inside a {parent.value} one.",
        )


async def _ensure_path_free(path: str) -> None:
    taken = await session().exec(select(Namespace.id).where(Namespace.path == path))
    if taken.first() is not None:
        raise Problem("already_exists", f"The path {path} is taken.")


async def _flush_unique(path: str) -> None:
    """Flush, turning a concurrent taker of the same path into 409."""
    try:
        async with session().begin_nested():
            await session().flush()
    except IntegrityError:
        raise Problem("already_exists", f"The path {path} is taken.") from None


async def _record_ancestry(namespace: Namespace) -> None:
    assert namespace.id is not None
    rows = [NamespaceAncestor(namespace_id=namespace.id, ancestor_id=namespace.id, distance=0)]
    if namespace.parent_id is not None:
        above = await session().exec(
            select(NamespaceAncestor).where(NamespaceAncestor.namespace_id == namespace.parent_id)
        )
        rows += [
            NamespaceAncestor(
                namespace_id=namespace.id, ancestor_id=a.ancestor_id, distance=a.distance + 1
            )
            for a in above
        ]
    session().add_all(rows)
    await session().flush()


async def _username(user_id: int) -> str:
    return (await session().exec(select(User.username).where(User.id == user_id))).one()


async def _nearest_grants(
    namespace_id: int, user_ids: list[int | None]
) -> dict[int, tuple[int, Any]]:
    """For each user, the closest namespace at or above this one that grants access."""
    rows = await session().exec(
        select(Collaborator.user_id, Collaborator.namespace_id, Collaborator.created_at)
        .join(NamespaceAncestor, col(NamespaceAncestor.ancestor_id) == Collaborator.namespace_id)
        .where(
            NamespaceAncestor.namespace_id == namespace_id,
            col(Collaborator.user_id).in_(user_ids),
        )
        .order_by(col(NamespaceAncestor.distance).desc())
    )
    # Farthest first, so the nearest grant is written last and wins.
    return {user_id: (ns_id, since) for user_id, ns_id, since in rows}


def _name_contains(search: str) -> Any:
    return func.lower(Namespace.name).contains(search.lower(), autoescape=True)
