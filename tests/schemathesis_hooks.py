"""Schemathesis hooks (loaded through SCHEMATHESIS_HOOKS by tests/test_schemathesis.py).

The fuzzer revokes and narrows tokens, the one it is using included, so it
authenticates with a token it mints from a password, and mints another whenever
the server answers 401.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import schemathesis

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
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    # Uploads take `*/*`. Schemathesis sends bytes drawn for it with whichever
    # serializer it picks: for `*/*` itself or any `multipart/*` type that is a
    # multipart/form-data body with no parts at all. Bytes for "any type" go out as
    # application/octet-stream instead; real forms are left alone.
    media_type = (case.media_type or "").lower()
    if media_type == "*/*" or (
        media_type.startswith("multipart/") and not isinstance(case.body, dict)
    ):
        case.media_type = "application/octet-stream"
