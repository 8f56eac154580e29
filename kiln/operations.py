"""Every operation runs as one unit of work: handlers never open sessions or commit.

Handlers are synchronous database code; the wrapper runs each one through
`Database.run` in a transaction (read-only for GET), committed before the response
leaves. Creates sent with an `Idempotency-Key` run at most once.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from connexion.lifecycle import ConnexionResponse
from connexion.resolver import Resolution, Resolver

from kiln import idempotency, spec
from kiln.asgi import current_scope, header
from kiln.auth import current_principal

if TYPE_CHECKING:
    from kiln.app import Kiln

Handler = Callable[..., ConnexionResponse]


def current_app() -> Kiln:
    app: Kiln = current_scope()["kiln.app"]
    return app


def unit_of_work(
    handler: Handler, op: spec.OperationInfo
) -> Callable[..., Awaitable[ConnexionResponse]]:
    write = op.method not in ("GET", "HEAD")

    @functools.wraps(handler)
    async def run(*args: Any, **kwargs: Any) -> ConnexionResponse:
        db = current_app().db
        key = _idempotency_key() if op.idempotent_create else None
        user_id = current_principal().user_id

        def work() -> ConnexionResponse:
            if key is not None and user_id is not None:
                return idempotency.run_once(
                    db,
                    user_id=user_id,
                    key=key,
                    request_fingerprint=idempotency.fingerprint(
                        op.method, current_scope()["path"], kwargs.get("body")
                    ),
                    operation=lambda: handler(*args, **kwargs),
                )
            with db.transaction(write=write):
                return handler(*args, **kwargs)

        return await db.run(work)

    return run


def _idempotency_key() -> str | None:
    value = header(current_scope(), b"idempotency-key")
    return value.decode("latin-1") if value is not None else None


class UnitOfWorkResolver(Resolver):  # type: ignore[misc]
    """Resolves each operationId to its handler wrapped in `unit_of_work`."""

    def __init__(self) -> None:
        super().__init__()
        self._wrapped: dict[str, Callable[..., Awaitable[ConnexionResponse]]] = {}

    def resolve(self, operation: Any) -> Resolution:
        resolution = super().resolve(operation)
        op_id = resolution.operation_id
        if inspect.iscoroutinefunction(resolution.function):
            return resolution  # streaming handlers open their own units of work
        if op_id not in self._wrapped:
            self._wrapped[op_id] = unit_of_work(resolution.function, spec.operations()[op_id])
        return Resolution(self._wrapped[op_id], op_id)
