"""Meta: liveness, readiness and the problem-type pages."""

from __future__ import annotations

from connexion.lifecycle import ConnexionResponse

from kiln.core.problems import CATALOGUE, Problem
from kiln.http import hal
from kiln.http.context import current_app


def get_health() -> ConnexionResponse:
    return hal.document({"status": "ok"})


def get_readiness() -> ConnexionResponse:
    try:
        current_app().db.ping()
    except Exception as exc:
        raise Problem(
            "service_unavailable",
            f"The database does not answer ({type(exc).__name__}).",
            headers={"Retry-After": "5"},
        ) from exc
    return hal.document({"status": "ok"})


def get_problem_type(code: str) -> ConnexionResponse:
    # `not-found` is how people (and URL habits) spell `not_found`.
    problem = CATALOGUE.get(code.replace("-", "_"))
    if problem is None:
        raise Problem("not_found", f"No problem type {code}.")
    return hal.document(
        {
            "code": problem.code,
            "title": problem.title,
            "status": problem.status,
            "description": problem.description,
            "_links": {"self": hal.link(problem.type_uri)},
        }
    )
