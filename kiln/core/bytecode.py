"""Imported first by the `kiln` command, so that Python keeps the bytecode of all it
imports after this, even under `PYTHONDONTWRITEBYTECODE` (see `cache.keep_bytecode`)."""

from kiln.core.cache import keep_bytecode

keep_bytecode()
