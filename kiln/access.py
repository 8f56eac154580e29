"""Who may see and change which namespace.

A caller sees public namespaces; signed in, internal ones too; and private ones it
owns or collaborates in, directly or through an ancestor. A token narrowed to a
namespace sees that namespace and what is below it, nothing else. Writers are the
owner and collaborators; some acts are the owner's alone.
"""

from __future__ import annotations

from enum import Enum

from sqlalchemy import ColumnElement, and_, exists, false, or_, true
from sqlmodel import col, select
from sqlmodel.sql.expression import Select

from kiln.auth import Principal
from kiln.db import session
from kiln.problems import Problem, not_found
from models import Collaborator, Namespace, NamespaceAncestor, User, Visibility


class Role(Enum):
    owner = "owner"
    collaborator = "collaborator"
    reader = "reader"


def collaborates(user_id: int) -> ColumnElement[bool]:
    """The namespace row in the query is shared with `user_id`, on it or on an ancestor."""
    return exists().where(
        col(NamespaceAncestor.namespace_id) == Namespace.id,
        col(Collaborator.namespace_id) == NamespaceAncestor.ancestor_id,
        col(Collaborator.user_id) == user_id,
    )


def within_narrowing(principal: Principal) -> ColumnElement[bool]:
    if principal.namespace_id is None:
        return true()
    return exists().where(
        col(NamespaceAncestor.namespace_id) == Namespace.id,
        col(NamespaceAncestor.ancestor_id) == principal.namespace_id,
    )


def readable(principal: Principal) -> ColumnElement[bool]:
    if principal.user_id is None:
        return col(Namespace.visibility) == Visibility.public.value
    return and_(
        within_narrowing(principal),
        or_(
            col(Namespace.visibility) != Visibility.private.value,
            col(Namespace.owner_id) == principal.user_id,
            collaborates(principal.user_id),
        ),
    )


def member(principal: Principal) -> ColumnElement[bool]:
    """Namespaces the caller owns or collaborates in."""
    if principal.user_id is None:
        return false()
    return and_(
        within_narrowing(principal),
        or_(col(Namespace.owner_id) == principal.user_id, collaborates(principal.user_id)),
    )


def with_owner() -> Select[Namespace, str]:
    """Namespaces with their owner's name, for representations."""
    return select(Namespace, User.username).join(User, col(User.id) == Namespace.owner_id)


async def find_readable(principal: Principal, namespace_id: int) -> tuple[Namespace, str, Role]:
    """The namespace, its owner's name and the caller's role; 404 if it may not see it."""
    row = (
        await session().exec(
            select(Namespace, User.username, member(principal))
            .join(User, col(User.id) == Namespace.owner_id)
            .where(Namespace.id == namespace_id, readable(principal))
        )
    ).one_or_none()
    if row is None:
        raise not_found("Namespace", namespace_id)
    namespace, owner, is_member = row
    if namespace.owner_id == principal.user_id:
        role = Role.owner
    elif is_member:
        role = Role.collaborator
    else:
        role = Role.reader
    return namespace, owner, role


async def find_writable(principal: Principal, namespace_id: int) -> tuple[Namespace, str, Role]:
    """As `find_readable`, and 403 unless the caller owns or collaborates in it."""
    namespace, owner, role = await find_readable(principal, namespace_id)
    if role is Role.reader:
        raise Problem(
            "permission_denied",
            f"You do not own or collaborate in namespace {namespace_id}.",
        )
    return namespace, owner, role


async def find_for_writing_into(principal: Principal, namespace_id: int) -> Namespace:
    """A namespace a request body names as where to create something:
    404 if the caller cannot see it, 422 if it cannot write into it."""
    namespace, _, role = await find_readable(principal, namespace_id)
    if role is Role.reader:
        raise Problem(
            "namespace_forbidden",
            f"You do not own or collaborate in namespace {namespace_id}.",
        )
    return namespace
