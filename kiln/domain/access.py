"""Who may see and change which namespace.

A caller sees public namespaces; signed in, internal ones too; and private ones it
owns or collaborates in, directly or through an ancestor. A token narrowed to a
namespace sees that namespace and what is below it, nothing else. Writers are the
owner and collaborators; some acts are the owner's alone.

The conditions take the caller as bound parameters, so the statement that looks one
namespace up (run by nearly every operation) is built once per kind of caller.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Integer,
    and_,
    bindparam,
    exists,
    false,
    or_,
    true,
)
from sqlmodel import col, select
from sqlmodel.sql.expression import Select

from kiln.core.principal import Principal
from kiln.core.problems import Problem, not_found
from kiln.store.db import session
from models import Collaborator, Namespace, NamespaceAncestor, User, Visibility

_USER: BindParameter[int] = bindparam("caller_id", type_=Integer)
_NARROWED_TO: BindParameter[int] = bindparam("narrowed_to", type_=Integer)


class Role(Enum):
    owner = "owner"
    collaborator = "collaborator"
    reader = "reader"


class _Kind(Enum):
    anonymous = "anonymous"
    user = "user"
    narrowed = "narrowed"


def _kind(principal: Principal) -> _Kind:
    if principal.user_id is None:
        return _Kind.anonymous
    return _Kind.user if principal.namespace_id is None else _Kind.narrowed


def caller_params(principal: Principal) -> dict[str, Any]:
    """Values for the bound parameters of `readable` and `member`."""
    return {"caller_id": principal.user_id, "narrowed_to": principal.namespace_id}


def collaborates(user_id: int | BindParameter[Any]) -> ColumnElement[bool]:
    """The namespace row in the query is shared with `user_id`, on it or on an ancestor."""
    return exists().where(
        col(NamespaceAncestor.namespace_id) == Namespace.id,
        col(Collaborator.namespace_id) == NamespaceAncestor.ancestor_id,
        col(Collaborator.user_id) == user_id,
    )


def _within_narrowing(kind: _Kind) -> ColumnElement[bool]:
    if kind is not _Kind.narrowed:
        return true()
    return exists().where(
        col(NamespaceAncestor.namespace_id) == Namespace.id,
        col(NamespaceAncestor.ancestor_id) == _NARROWED_TO,
    )


def _readable(kind: _Kind) -> ColumnElement[bool]:
    if kind is _Kind.anonymous:
        return col(Namespace.visibility) == Visibility.public.value
    return and_(
        _within_narrowing(kind),
        or_(
            col(Namespace.visibility) != Visibility.private.value,
            col(Namespace.owner_id) == _USER,
            collaborates(_USER),
        ),
    )


def _member(kind: _Kind) -> ColumnElement[bool]:
    if kind is _Kind.anonymous:
        return false()
    return and_(_within_narrowing(kind), or_(col(Namespace.owner_id) == _USER, collaborates(_USER)))


def readable(principal: Principal) -> ColumnElement[bool]:
    """Namespaces the caller may see; run with `caller_params(principal)`."""
    return _READABLE[_kind(principal)]


def member(principal: Principal) -> ColumnElement[bool]:
    """Namespaces the caller owns or collaborates in; run with `caller_params(principal)`."""
    return _MEMBER[_kind(principal)]


def with_owner() -> Select[Namespace, str]:
    """Namespaces with their owner's name, for representations."""
    return select(Namespace, User.username).join(User, col(User.id) == Namespace.owner_id)


_READABLE = {kind: _readable(kind) for kind in _Kind}
_MEMBER = {kind: _member(kind) for kind in _Kind}
_FIND = {
    kind: select(Namespace, User.username, _MEMBER[kind])
    .join(User, col(User.id) == Namespace.owner_id)
    .where(Namespace.id == bindparam("namespace_id"), _READABLE[kind])
    for kind in _Kind
}


def find_readable(principal: Principal, namespace_id: int) -> tuple[Namespace, str, Role]:
    """The namespace, its owner's name and the caller's role; 404 if it may not see it."""
    row = (
        session()
        .exec(
            _FIND[_kind(principal)],
            params={"namespace_id": namespace_id, **caller_params(principal)},
        )
        .one_or_none()
    )
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


def find_writable(principal: Principal, namespace_id: int) -> tuple[Namespace, str, Role]:
    """As `find_readable`, and 403 unless the caller owns or collaborates in it."""
    namespace, owner, role = find_readable(principal, namespace_id)
    if role is Role.reader:
        raise Problem(
            "permission_denied",
            f"You do not own or collaborate in namespace {namespace_id}.",
        )
    return namespace, owner, role


def require_owner(role: Role, namespace_id: int | None, act: str) -> None:
    """403 unless the caller owns the namespace; `act` is what only the owner may do."""
    if role is not Role.owner:
        raise Problem("permission_denied", f"Only the owner of namespace {namespace_id} may {act}.")


def find_for_writing_into(principal: Principal, namespace_id: int) -> Namespace:
    """A namespace a request body names as where to create something:
    404 if the caller cannot see it, 422 if it cannot write into it."""
    namespace, _, role = find_readable(principal, namespace_id)
    if role is Role.reader:
        raise Problem(
            "namespace_forbidden",
            f"You do not own or collaborate in namespace {namespace_id}.",
        )
    return namespace
