"""Variables: values builds see in their environment; masked ones stay secret."""

from __future__ import annotations

from typing import Any

from connexion.lifecycle import ConnexionResponse
from sqlmodel import col, delete

from kiln.core.problems import FieldError, Problem
from kiln.domain import resources
from kiln.domain.masking import MASK
from kiln.http import hal, pagination
from kiln.http.auth import current_principal
from kiln.http.context import current_app
from kiln.store.db import session, utcnow
from models import Variable

MIN_MASKED_LENGTH = 6
NOUN = "Variable"


def shown_value(masked: bool, stored: str) -> str:
    """What the API shows of a variable's (encrypted) value: never a masked one."""
    return MASK.decode() if masked else current_app().secrets.decrypt(stored)


def represent_variable(variable: Variable) -> hal.Body:
    return {
        "id": variable.id,
        "key": variable.key,
        "value": shown_value(variable.masked, variable.value),
        "masked": variable.masked,
        **resources.owner_fields(variable),
        "_links": {
            "self": hal.link(f"/api/v1/variables/{variable.id}"),
            **resources.owner_links(variable),
        },
    }


def list_variables(
    limit: int = 25,
    after: str | None = None,
    namespace_id: int | None = None,
    search: str | None = None,
) -> ConnexionResponse:
    page = pagination.page_of(
        Variable,
        current_principal(),
        members_only=True,
        search_column=Variable.key,
        namespace_id=namespace_id,
        search=search,
        limit=limit,
        after=after,
    )
    return hal.collection("variables", [represent_variable(v) for v in page.rows], page)


def list_namespace_variables(
    id: int, limit: int = 25, after: str | None = None, search: str | None = None
) -> ConnexionResponse:
    return list_variables(limit=limit, after=after, namespace_id=id, search=search)


def create_variable(body: dict[str, Any]) -> ConnexionResponse:
    masked = body.get("masked", False)
    _check_maskable(masked, body["value"])
    variable = Variable(
        key=body["key"],
        value=current_app().secrets.encrypt(body["value"]),
        masked=masked,
        **resources.placement(current_principal(), body.get("namespace_id")),
    )
    session().add(variable)
    resources.flush_unique(f"A variable {body['key']} exists already here.")
    return hal.created(represent_variable(variable))


def get_variable(id: int) -> ConnexionResponse:
    variable = resources.find(Variable, id, current_principal(), members_only=True, noun=NOUN)
    return hal.resource(represent_variable(variable))


def update_variable(id: int, body: dict[str, Any]) -> ConnexionResponse:
    variable = resources.find(Variable, id, current_principal(), members_only=True, noun=NOUN)
    hal.require_unchanged(represent_variable(variable))
    masked = body.get("masked", variable.masked)
    if variable.masked and not masked and "value" not in body:
        raise Problem(
            "invalid_value",
            "A masked variable is unmasked only together with a new value.",
            errors=[FieldError("required", "value is required to unmask.", pointer="/value")],
        )
    if "value" in body:
        _check_maskable(masked, body["value"])
        variable.value = current_app().secrets.encrypt(body["value"])
    elif masked and not variable.masked:
        _check_maskable(masked, current_app().secrets.decrypt(variable.value))
    variable.masked = masked
    if "key" in body:
        variable.key = body["key"]
    variable.updated_at = utcnow()
    resources.flush_unique(f"A variable {variable.key} exists already here.")
    return hal.resource(represent_variable(variable))


def delete_variable(id: int) -> ConnexionResponse:
    variable = resources.find(Variable, id, current_principal(), members_only=True, noun=NOUN)
    hal.require_unchanged(represent_variable(variable))
    session().exec(delete(Variable).where(col(Variable.id) == id))
    return hal.no_content()


def _check_maskable(masked: bool, value: str) -> None:
    if masked and len(value) < MIN_MASKED_LENGTH:
        raise Problem(
            "invalid_value",
            f"A masked value needs at least {MIN_MASKED_LENGTH} characters.",
            errors=[FieldError("too_short", "value is too short to mask.", pointer="/value")],
        )
