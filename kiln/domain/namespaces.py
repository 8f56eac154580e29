"""Namespace rules: paths, nesting, visibility and ancestry, for whoever changes namespaces."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, literal
from sqlmodel import col, delete, select, update

from kiln.core.principal import Principal
from kiln.core.problems import Problem
from kiln.domain import access
from kiln.domain.resources import flush_unique
from kiln.store.db import session, utcnow
from models import MAX_DEPTH, Collaborator, Namespace, NamespaceAncestor, User, Visibility


def create(
    principal: Principal,
    *,
    name: str,
    description: str = "",
    visibility: Visibility = Visibility.private,
    parent_id: int | None = None,
) -> tuple[Namespace, str]:
    """A new namespace and its owner's name. A child belongs to its parent's owner."""
    assert principal.user_id is not None
    assert principal.username is not None
    parent = None
    if parent_id is not None:
        parent = access.find_for_writing_into(principal, parent_id)
        if parent.depth >= MAX_DEPTH:
            raise Problem("namespace_too_deep", f"Namespaces nest at most {MAX_DEPTH} deep.")
        _check_not_above(visibility, Visibility(parent.visibility))
        owner_id, path, depth = parent.owner_id, f"{parent.path}/{name}", parent.depth + 1
    else:
        if principal.is_narrowed:
            raise Problem(
                "namespace_forbidden",
                f"This token is narrowed to namespace {principal.namespace_id}.",
            )
        owner_id, path, depth = principal.user_id, f"{principal.username}/{name}", 1
    _ensure_path_free(path)
    namespace = Namespace(
        name=name,
        path=path,
        description=description,
        visibility=visibility.value,
        parent_id=parent_id,
        depth=depth,
        owner_id=owner_id,
    )
    session().add(namespace)
    flush_unique(f"The path {path} is taken.")
    namespace.root_id = parent.root_id if parent is not None else namespace.id
    _record_ancestry(namespace)
    owner = principal.username if owner_id == principal.user_id else _username(owner_id)
    return namespace, owner


# Where a namespace sits and who may see it are its owner's to change (its parent too,
# which nothing changes after creation); collaborators manage what is inside it.
OWNER_ONLY = ("name", "visibility")


def require_may_change(namespace: Namespace, changes: dict[str, Any], role: access.Role) -> None:
    """403 for a collaborator whose changes touch what only the owner changes; the same
    values sent back (a PUT that keeps them) are no change."""
    altered = [f for f in OWNER_ONLY if f in changes and changes[f] != getattr(namespace, f)]
    if altered:
        access.require_owner(role, namespace.id, f"change its {' or '.join(altered)}")


def change(namespace: Namespace, changes: dict[str, Any]) -> None:
    """Apply name, description and visibility, each checked against the tree."""
    if "visibility" in changes:
        visibility = Visibility(changes["visibility"])
        _check_visibility_fits(namespace, visibility)
        namespace.visibility = visibility.value
    if "description" in changes:
        namespace.description = changes["description"]
    if "name" in changes and changes["name"] != namespace.name:
        _rename(namespace, changes["name"])
    namespace.updated_at = utcnow()
    session().flush()


def delete_tree(namespace_id: int) -> None:
    # Children, their children and everything in them go with it (ON DELETE CASCADE).
    session().exec(delete(Namespace).where(col(Namespace.id) == namespace_id))


def nearest_grants(namespace_id: int, user_ids: list[int | None]) -> dict[int, tuple[int, Any]]:
    """For each user, the closest namespace at or above this one that grants access."""
    rows = session().exec(
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


def name_contains(search: str) -> Any:
    return func.lower(Namespace.name).contains(search.lower(), autoescape=True)


def _rename(namespace: Namespace, name: str) -> None:
    old_path = namespace.path
    new_path = old_path.rsplit("/", 1)[0] + "/" + name
    _ensure_path_free(new_path)
    # Every descendant's path starts with ours: rewrite that prefix below us.
    descendants = select(NamespaceAncestor.namespace_id).where(
        NamespaceAncestor.ancestor_id == namespace.id, NamespaceAncestor.distance > 0
    )
    session().exec(
        update(Namespace)
        .where(col(Namespace.id).in_(descendants))
        .values(path=literal(new_path).concat(func.substr(Namespace.path, len(old_path) + 1)))
        .execution_options(synchronize_session=False)
    )
    namespace.name, namespace.path = name, new_path
    flush_unique(f"The path {new_path} is taken.")


def _check_visibility_fits(namespace: Namespace, visibility: Visibility) -> None:
    if namespace.parent_id is not None:
        parent = session().get(Namespace, namespace.parent_id)
        assert parent is not None
        _check_not_above(visibility, Visibility(parent.visibility))
    children = session().exec(
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


def _ensure_path_free(path: str) -> None:
    taken = session().exec(select(Namespace.id).where(Namespace.path == path))
    if taken.first() is not None:
        raise Problem("already_exists", f"The path {path} is taken.")


def _record_ancestry(namespace: Namespace) -> None:
    assert namespace.id is not None
    rows = [NamespaceAncestor(namespace_id=namespace.id, ancestor_id=namespace.id, distance=0)]
    if namespace.parent_id is not None:
        above = session().exec(
            select(NamespaceAncestor).where(NamespaceAncestor.namespace_id == namespace.parent_id)
        )
        rows += [
            NamespaceAncestor(
                namespace_id=namespace.id, ancestor_id=a.ancestor_id, distance=a.distance + 1
            )
            for a in above
        ]
    session().add_all(rows)
    session().flush()


def _username(user_id: int) -> str:
    return (session().exec(select(User.username).where(User.id == user_id))).one()
