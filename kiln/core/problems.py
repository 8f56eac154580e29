"""Every error Kiln answers with: RFC 9457 problem details with a stable `code`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

PROBLEM_JSON = "application/problem+json"


@dataclass(frozen=True)
class ProblemType:
    code: str
    status: int
    title: str
    description: str

    @property
    def type_uri(self) -> str:
        return f"/problems/{self.code}"


# code, status, title, description
_TYPES = [
    ("validation_failed", 400, "Request failed validation",
     "The request does not match the schema; `errors[]` lists every failing field."),
    ("malformed_json", 400, "Malformed JSON", "The request body is not parsable JSON."),
    ("invalid_encoding", 400, "Invalid encoding", "The request body is not valid UTF-8."),
    ("unauthenticated", 401, "Authentication required",
     "The operation needs credentials and none came."),
    ("invalid_credentials", 401, "Invalid credentials",
     "The credentials are unknown, malformed, expired or revoked."),
    ("insufficient_scope", 403, "Insufficient scope",
     "The credentials are valid but lack the scope the operation needs."),
    ("permission_denied", 403, "Permission denied",
     "The caller can see the resource but may not do this to it."),
    ("token_narrowed", 403, "Token narrowed to a namespace",
     "A token narrowed to a namespace cannot manage tokens."),
    ("scope_escalation", 403, "Scope escalation",
     "A credential cannot grant scopes it does not hold."),
    ("https_required", 403, "HTTPS required", "Kiln answers only over HTTPS."),
    ("not_found", 404, "Not found", "No such resource, or one the caller may not see."),
    ("method_not_allowed", 405, "Method not allowed",
     "The path exists but not with this method; `Allow` lists those it takes."),
    ("not_acceptable", 406, "Not acceptable",
     "The operation cannot produce any media type the `Accept` header allows."),
    ("already_exists", 409, "Already exists", "A unique name or path is already taken."),
    ("build_finished", 409, "Build finished", "The build has finished; it cannot be killed."),
    ("idempotency_in_flight", 409, "Idempotent request in flight",
     "A request with this `Idempotency-Key` is still running; retry later."),
    ("precondition_failed", 412, "Precondition failed",
     "`If-Match` does not match the resource's current `ETag`."),
    ("payload_too_large", 413, "Payload too large",
     "The request body is over the limit; nothing was stored."),
    ("unsupported_media_type", 415, "Unsupported media type",
     "The request body's `Content-Type` is not one the operation takes."),
    ("range_not_satisfiable", 416, "Range not satisfiable",
     "The `Range` starts past the end; `Content-Range` gives the size."),
    ("namespace_forbidden", 422, "Namespace forbidden",
     "The caller does not own or collaborate in the namespace it writes into."),
    ("namespace_too_deep", 422, "Namespace too deep", "Namespaces nest at most 20 deep."),
    ("visibility_conflict", 422, "Visibility conflict",
     "A namespace cannot be more visible than its parent, nor less visible than its children."),
    ("user_not_found", 422, "User not found", "No user has the name the request gives."),
    ("scope_widening", 422, "Scope widening", "A token's scopes can be narrowed, never widened."),
    ("invalid_cursor", 422, "Invalid cursor", "The `after` cursor was not issued by this server."),
    ("invalid_value", 422, "Invalid value",
     "A field matches the schema but its value cannot be used; `errors[]` says which."),
    ("manifest_refused", 422, "Manifest refused",
     "The manifest is well-formed but names something that cannot be used; `errors[]` says what."),
    ("idempotency_key_reused", 422, "Idempotency key reused",
     "This `Idempotency-Key` was used with a different request."),
    ("rate_limited", 429, "Rate limited",
     "Too many requests for this credential; wait `Retry-After` seconds."),
    ("headers_too_large", 431, "Request headers too large",
     "The request line and headers are over the server's limit; the connection is closed."),
    ("internal_error", 500, "Internal error",
     "A bug in Kiln. The `request_id` finds it in the logs."),
    ("not_implemented", 501, "Not implemented", "This server does not provide the feature."),
    ("driver_not_enabled", 501, "Driver not enabled",
     "Kiln knows the manifest's driver, but this deployment does not run it."),
    ("service_unavailable", 503, "Service unavailable",
     "The database is unreachable or the server is shutting down; retry after `Retry-After`."),
]  # fmt: skip

CATALOGUE = {code: ProblemType(code, status, title, text) for code, status, title, text in _TYPES}


@dataclass(frozen=True)
class FieldError:
    """One failing field: a JSON pointer into the body, or a named parameter."""

    code: str
    detail: str
    pointer: str | None = None
    parameter: str | None = None
    location: str | None = None

    def as_json(self) -> dict[str, str]:
        # Details may quote what the client sent; the contract bounds every field.
        out = {"code": self.code[:64], "detail": _clip(self.detail, 1000)}
        if self.pointer is not None:
            out["pointer"] = _clip(self.pointer, 1024)
        if self.parameter is not None:
            out["parameter"] = _clip(self.parameter, 100)
        if self.location is not None:
            out["in"] = self.location
        return out


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Problem(Exception):
    """Raise one anywhere below a handler; the error handler renders it."""

    def __init__(
        self,
        code: str,
        detail: str | None = None,
        *,
        errors: Sequence[FieldError] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.type = CATALOGUE[code]
        self.detail = detail
        self.errors = list(errors)
        self.headers = dict(headers or {})
        super().__init__(f"{code}: {detail}")

    @property
    def status(self) -> int:
        return self.type.status


def not_found(what: str, ident: object) -> Problem:
    return Problem("not_found", f"{what} {ident} not found.")


def validation_failed(errors: Sequence[FieldError]) -> Problem:
    noun = "field is" if len(errors) == 1 else "fields are"
    return Problem("validation_failed", f"{len(errors)} {noun} invalid.", errors=errors)


def render(
    problem: Problem, *, request_id: str, instance: str
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of a problem response."""
    body: dict[str, Any] = {
        "type": problem.type.type_uri,
        "title": problem.type.title,
        "status": problem.status,
        "code": problem.type.code,
        "request_id": request_id,
        "instance": instance[:2048],
    }
    if problem.detail:
        body["detail"] = _clip(problem.detail, 2000)
    if problem.errors:
        body["errors"] = [e.as_json() for e in problem.errors[:200]]
    headers = {"Content-Type": PROBLEM_JSON, **problem.headers}
    return problem.status, headers, orjson.dumps(body)
