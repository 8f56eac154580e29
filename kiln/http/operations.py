"""Every operation runs as one unit of work: handlers never open sessions or commit.

Synchronous handlers are database code; the wrapper runs each one through
`Database.run` in a transaction (read-only for GET), committed before the response
leaves. Asynchronous handlers (uploads, streams, network checks) do their waiting
first and then hand their database part to `unit()`, which does the same. Creates
sent with an `Idempotency-Key` run at most once.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar

from connexion.lifecycle import ConnexionResponse
from connexion.resolver import Resolution, Resolver

from kiln.core import spec
from kiln.http import idempotency
from kiln.http.asgi import current_scope, header
from kiln.http.auth import current_principal
from kiln.http.context import current_app

T = TypeVar("T")
AsyncHandler = Callable[..., Awaitable[Any]]
_call: ContextVar[tuple[spec.OperationInfo, dict[str, Any]]] = ContextVar("kiln_operation_call")


async def unit(work: Callable[[], ConnexionResponse]) -> ConnexionResponse:
    """Run `work` as the current operation's unit of work."""
    op, kwargs = _call.get()
    app = current_app()
    db = app.db
    scope = current_scope()
    key = header(scope, b"idempotency-key") if op.idempotent_create else None
    caller = current_principal()

    def run() -> ConnexionResponse:
        if key is not None and caller.user_id is not None:
            return idempotency.run_once(
                db,
                app.secrets,
                caller=caller,
                key=key.decode("latin-1"),
                request_fingerprint=idempotency.fingerprint(
                    op.method,
                    scope["path"],
                    {"query": scope["query_string"].decode("latin-1"), "body": kwargs.get("body")},
                ),
                operation=work,
            )
        with db.transaction(write=op.method not in ("GET", "HEAD")):
            return work()

    return await db.run(run)


async def read(work: Callable[[], T]) -> T:
    """Run `work` in a read-only transaction: for async handlers' checks before they wait."""
    db = current_app().db

    def run() -> T:
        with db.transaction(write=False):
            return work()

    return await db.run(run)


def unit_of_work(handler: Callable[..., Any], op: spec.OperationInfo) -> AsyncHandler:
    if inspect.iscoroutinefunction(handler):

        @functools.wraps(handler)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            token = _call.set((op, kwargs))
            try:
                return await handler(*args, **kwargs)
            finally:
                _call.reset(token)

        return run_async

    @functools.wraps(handler)
    async def run(*args: Any, **kwargs: Any) -> ConnexionResponse:
        token = _call.set((op, kwargs))
        try:
            return await unit(lambda: handler(*args, **kwargs))
        finally:
            _call.reset(token)

    return run


class UnitOfWorkResolver(Resolver):  # type: ignore[misc]
    """Resolves each operationId (`submitBuild`) to its handler (`submit_build` in the
    module of the operation's tag, `handlers.builds`: `spec.handler_name`), wrapped in
    `unit_of_work`. The operationId stays the operation's name everywhere else."""

    def __init__(self) -> None:
        super().__init__()
        self._wrapped: dict[str, AsyncHandler] = {}

    def resolve(self, operation: Any) -> Resolution:
        op_id = self.resolve_operation_id(operation)
        if op_id not in self._wrapped:
            op = spec.operations()[op_id]
            handler = self.resolve_function_from_operation_id(op.handler)
            self._wrapped[op_id] = unit_of_work(handler, op)
        return Resolution(self._wrapped[op_id], op_id)
