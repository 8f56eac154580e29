"""Build manifests: YAML text, read safely (no aliases, so no expansion bombs)."""

from __future__ import annotations

from typing import Any

import yaml

from kiln.problems import FieldError, validation_failed

MAX_BYTES = 64 * 1024


class _NoAliasLoader(yaml.SafeLoader):
    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.YAMLError(f"aliases are not allowed (line {event.start_mark.line + 1})")
        return super().compose_node(parent, index)


def load(text: str, pointer: str = "/manifest") -> dict[str, Any]:
    """The manifest as a mapping, or 400 with a pointer to what is wrong."""

    def refuse(detail: str) -> Exception:
        return validation_failed([FieldError("invalid", detail, pointer=pointer)])

    if len(text.encode()) > MAX_BYTES:
        raise refuse(f"The manifest is over {MAX_BYTES} bytes.")
    try:
        document = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise refuse(f"The manifest is not YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(document, dict):
        raise refuse("The manifest must be a YAML mapping.")
    return document
