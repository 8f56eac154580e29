"""Schemathesis hooks (loaded through SCHEMATHESIS_HOOKS by tests/test_schemathesis.py).

The fuzzer revokes and narrows tokens, the one it is using included, so it
authenticates with a token it mints from a password, and mints another whenever
the server answers 401.

The contract's links keep a body built from the response (`parent_id` of a child
namespace from the namespace just created) in `x-kiln-request-body`, because
openapi-generator refuses a link's `requestBody` that is not a single expression;
the stateful phase gets it back as the link's `requestBody`.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import schemathesis
from schemathesis.specs.openapi import checks as openapi_checks

from kiln.core import spec


@schemathesis.auth(refresh_interval=30, retry_on=[401])
class MintedToken:
    def get(self, case: Any, context: Any) -> str:
        response = httpx.post(
            os.environ["KILN_FUZZ_URL"] + "/api/v1/tokens",
            auth=(os.environ["KILN_FUZZ_USER"], os.environ["KILN_FUZZ_PASSWORD"]),
            json={"name": "schemathesis", "scopes": sorted(spec.declared_scopes())},
            verify=os.environ["KILN_FUZZ_CA"],
            timeout=30,
        )
        response.raise_for_status()
        token: str = response.json()["token"]
        return token

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@schemathesis.hook
def before_load_schema(context: Any, raw_schema: dict[str, Any]) -> None:
    for link in raw_schema.get("components", {}).get("links", {}).values():
        if "x-kiln-request-body" in link:
            link["requestBody"] = link["x-kiln-request-body"]


@schemathesis.check
def created_resources_stay_available(ctx: Any, response: Any, case: Any) -> bool | None:
    """Schemathesis' ensure_resource_availability, knowing what else removes a resource.

    A variable, build or object created with a top-level POST lives in a namespace.
    Deleting that namespace (or one above it) takes it along, and removing the
    caller's collaborator grant hides it; either makes a later 404 correct, but the
    built-in check only counts a DELETE at or above the resource's own path. So
    before reporting, this asks the server whether the namespace the resource was
    created in is still there for the caller; only if it is does the 404 fail.
    """
    if response.status_code == 404 and _its_namespace_is_gone(ctx, response, case):
        return None
    return openapi_checks.ensure_resource_availability(ctx, response, case)


def _its_namespace_is_gone(ctx: Any, response: Any, case: Any) -> bool:
    parent = ctx.internals.find_parent(case_id=case.id)
    if parent is None:
        return False
    created = ctx.internals.find_response(case_id=parent.id)
    if created is None:
        return False
    try:
        namespace_id = created.json().get("namespace_id")
    except (ValueError, AttributeError):
        return False
    if not isinstance(namespace_id, int):
        return False
    authorization = response.request.headers.get("Authorization")
    probe = httpx.get(
        f"{os.environ['KILN_FUZZ_URL']}/api/v1/namespaces/{namespace_id}",
        headers={"Authorization": authorization} if authorization else {},
        verify=os.environ["KILN_FUZZ_CA"],
        timeout=30,
    )
    return probe.status_code == 404
