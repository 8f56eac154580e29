"""What a HAL body is made of: links and JSON bytes, whoever writes them."""

from __future__ import annotations

from typing import Any

import orjson

Body = dict[str, Any]


def link(href: str) -> dict[str, str]:
    return {"href": href}


def dumps(body: Any) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_UTC_Z)
