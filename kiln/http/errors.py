"""Turns every exception, ours or the framework's, into a problem response."""

from __future__ import annotations

import logging

from connexion import AsyncApp
from connexion.exceptions import (
    BadRequestProblem,
    NonConformingResponse,
    OAuthProblem,
    ProblemException,
    UnsupportedMediaTypeProblem,
)
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException

from kiln.core import spec
from kiln.core.problems import PROBLEM_JSON, Problem, render
from kiln.http.asgi import request_info
from kiln.http.auth import REALM

log = logging.getLogger("kiln.errors")

_BY_STATUS = {
    400: "validation_failed",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    501: "not_implemented",
    503: "service_unavailable",
}


def respond(request: ConnexionRequest, problem: Problem) -> ConnexionResponse:
    status, headers, body = render(
        problem, request_id=request_info(request.scope).request_id, instance=request.scope["path"]
    )
    return ConnexionResponse(
        status_code=status,
        mimetype=PROBLEM_JSON,
        content_type=PROBLEM_JSON,
        body=body,
        headers=headers,
    )


async def on_problem(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, Problem)
    return respond(request, exc)


async def on_unauthenticated(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    # connexion raises this when an operation needs credentials and none came.
    return respond(
        request,
        Problem(
            "unauthenticated",
            "This operation needs credentials.",
            headers={"WWW-Authenticate": REALM},
        ),
    )


async def on_framework_problem(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, ProblemException)
    if isinstance(exc, NonConformingResponse):
        log.error("response does not conform to the spec: %s", exc.detail)
        return respond(request, Problem("internal_error", "The response broke the contract."))
    if isinstance(exc, UnsupportedMediaTypeProblem):
        return respond(request, Problem("unsupported_media_type", exc.detail))
    if isinstance(exc, BadRequestProblem):
        return respond(request, Problem("validation_failed", exc.detail))
    code = _BY_STATUS.get(exc.status, "internal_error")
    return respond(request, Problem(code, exc.detail))


async def on_http_exception(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, HTTPException)
    code = _BY_STATUS.get(exc.status_code, "internal_error")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names only the methods of the first route that matched the path.
        headers["Allow"] = ", ".join(spec.allowed_methods(request.scope["path"]))
    detail = {
        404: f"Nothing at {request.scope['path'][:200]}.",
        405: f"{request.scope['method']} is not allowed here.",
    }.get(exc.status_code, exc.detail)
    return respond(request, Problem(code, detail, headers=headers))


async def on_database_error(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, DBAPIError)
    if isinstance(exc, OperationalError) or exc.connection_invalidated:
        log.warning("database unavailable: %s", exc.orig)
        return respond(
            request,
            Problem(
                "service_unavailable", "The database is unavailable.", headers={"Retry-After": "5"}
            ),
        )
    return await on_unexpected(request, exc)


async def on_unexpected(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    log.error("unhandled error in request %s", request_info(request.scope).request_id, exc_info=exc)
    return respond(request, Problem("internal_error", "Kiln failed; the request id finds it."))


def install(app: AsyncApp) -> None:
    app.add_error_handler(Problem, on_problem)
    app.add_error_handler(OAuthProblem, on_unauthenticated)
    app.add_error_handler(ProblemException, on_framework_problem)
    app.add_error_handler(HTTPException, on_http_exception)
    app.add_error_handler(DBAPIError, on_database_error)
    app.add_error_handler(Exception, on_unexpected)
