"""The caller: which user, with which scopes, narrowed to which namespace."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    user_id: int | None
    username: str | None
    scopes: frozenset[str]
    token_id: int | None = None
    namespace_id: int | None = None  # the namespace a narrowed token is limited to

    @property
    def is_narrowed(self) -> bool:
        return self.namespace_id is not None


ANONYMOUS = Principal(None, None, frozenset())
