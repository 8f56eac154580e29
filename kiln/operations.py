"""Every operation runs as one unit of work: handlers never open sessions or commit."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from connexion.context import scope as current_scope
from connexion.lifecycle import ConnexionResponse
from connexion.resolver import Resolution, Resolver

from kiln import idempotency, spec
from kiln.asgi import header
from kiln.auth import current_principal

if TYPE_CHECKING:
    from kiln.app import Kiln

Handler = Callable[..., Awaitable[ConnexionResponse]]


def current_app() -> Kiln:
    app: Kiln = current_scope["kiln.app"]
    return app


def unit_of_work(handler: Handler, op: spec.OperationInfo) -> Handler:
    """Run `handler` in one transaction (read-only for GET), committed before the
    response leaves; creates sent with an `Idempotency-Key` run at most once."""
    write = op.method not in ("GET", "HEAD")

    @functools.wraps(handler)
    async def run(*args: Any, **kwargs: Any) -> ConnexionResponse:
        db = current_app().db
        key = _idempotency_key() if op.idempotent_create else None
        user_id = current_principal().user_id
        if key is not None and user_id is not None:
            return await idempotency.run_once(
                db,
                user_id=user_id,
                key=key,
                request_fingerprint=idempotency.fingerprint(
                    op.method, current_scope["path"], kwargs.get("body")
                ),
                operation=lambda: handler(*args, **kwargs),
            )
        async with db.transaction(write=write):
            return await handler(*args, **kwargs)

    return run


def _idempotency_key() -> str | None:
    value = header(current_scope, b"idempotency-key")
    return value.decode("latin-1") if value is not None else None


class UnitOfWorkResolver(Resolver):  # type: ignore[misc]
    """Resolves each operationId to its handler wrapped in `unit_of_work`."""

    def __init__(self) -> None:
        super().__init__()
        self._wrapped: dict[str, Handler] = {}

    def resolve(self, operation: Any) -> Resolution:
        resolution = super().resolve(operation)
        op_id = resolution.operation_id
        if op_id not in self._wrapped:
            self._wrapped[op_id] = unit_of_work(resolution.function, spec.operations()[op_id])
        return Resolution(self._wrapped[op_id], op_id)
