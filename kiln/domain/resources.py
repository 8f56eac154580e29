"""Resources that live with one user or in one namespace: who sees them, who changes
them, where new ones go and how they are listed.

The user's own resources are theirs alone (and invisible to tokens narrowed to a
namespace). A namespace's resources are seen by its members, or, for resources that
are not secret (objects, images), by whoever can see the namespace; only members
change them.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import ColumnElement, false, func, or_
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.sql.expression import SelectOfScalar

from kiln.core import bodies
from kiln.core.principal import Principal
from kiln.core.problems import Problem, not_found
from kiln.domain import access
from kiln.store.db import session
from models import Namespace, Owned, owner_key

T = TypeVar("T", bound=Owned)


def visible(model: type[T], principal: Principal, *, members_only: bool) -> ColumnElement[bool]:
    """Run with `access.caller_params(principal)`."""
    if principal.user_id is None:
        own: ColumnElement[bool] = false()
    else:
        own = false() if principal.is_narrowed else col(model.user_id) == principal.user_id
    namespaces = select(Namespace.id).where(
        access.member(principal) if members_only else access.readable(principal)
    )
    return or_(own, col(model.namespace_id).in_(namespaces))


def find(
    model: type[T], resource_id: int, principal: Principal, *, members_only: bool, noun: str
) -> T:
    """The resource, or 404 when the caller may not see it."""
    query = select(model).where(
        col(model.id) == resource_id,  # type: ignore[attr-defined]
        visible(model, principal, members_only=members_only),
    )
    found = session().exec(query, params=access.caller_params(principal)).one_or_none()
    if found is None:
        raise not_found(noun, resource_id)
    return found


def find_for_change(
    model: type[T], resource_id: int, principal: Principal, *, members_only: bool, noun: str
) -> T:
    """As `find`, and 403 unless the caller may change it."""
    found = find(model, resource_id, principal, members_only=members_only, noun=noun)
    if found.namespace_id is not None and not members_only:
        _, _, role = access.find_readable(principal, found.namespace_id)
        if role is access.Role.reader:
            raise Problem(
                "permission_denied",
                f"You do not own or collaborate in namespace {found.namespace_id}.",
            )
    return found


def placement(principal: Principal, namespace_id: int | None) -> dict[str, Any]:
    """Where a new resource goes: the caller's own, or a namespace it can write into."""
    if namespace_id is None:
        if principal.is_narrowed:
            raise Problem(
                "namespace_forbidden",
                f"This token is narrowed to namespace {principal.namespace_id}; "
                "give that namespace's id.",
            )
        return {
            "user_id": principal.user_id,
            "namespace_id": None,
            "owner_key": owner_key(principal.user_id, None),
        }
    access.find_for_writing_into(principal, namespace_id)
    return {
        "user_id": None,
        "namespace_id": namespace_id,
        "owner_key": owner_key(None, namespace_id),
    }


def listing(
    model: type[T],
    principal: Principal,
    *,
    members_only: bool,
    namespace_id: int | None = None,
    search: str | None = None,
    search_column: Any = None,
) -> SelectOfScalar[T]:
    """What `GET /<plural>` lists: everything the caller may see, or one namespace's."""
    query = select(model).where(visible(model, principal, members_only=members_only))
    if namespace_id is not None:
        _, _, role = access.find_readable(principal, namespace_id)
        if members_only and role is access.Role.reader:
            raise Problem(
                "permission_denied", f"You do not own or collaborate in namespace {namespace_id}."
            )
        query = query.where(col(model.namespace_id) == namespace_id)
    if search is not None:
        query = query.where(func.lower(search_column).contains(search.lower(), autoescape=True))
    return query


def owner_fields(resource: Owned) -> dict[str, Any]:
    """What every owned resource's representation says about where it lives."""
    return {
        "namespace_id": resource.namespace_id,
        "created_at": resource.created_at,
        "updated_at": resource.updated_at,
    }


def owner_links(resource: Owned) -> dict[str, Any]:
    if resource.namespace_id is None:
        return {}
    return {"namespace": bodies.link(f"/api/v1/namespaces/{resource.namespace_id}")}


def flush_unique(conflict: str) -> None:
    """Flush pending changes; a unique name already taken becomes 409."""
    try:
        with session().begin_nested():
            session().flush()
    except IntegrityError:
        raise Problem("already_exists", conflict) from None
