"""Input limits of the API and the CLI, in one place (the README's "Limits" lists them).

Anything over a limit is refused with a 4xx naming the limit, before it can reach the
database (where it would be an error of the server's: a B-tree entry over 2.7 KB, jsonb
nested past the server's stack depth)."""
from __future__ import annotations

from typing import Any

MAX_BODY = 1 << 20            # bytes of a request body
MAX_JSON_DEPTH = 64           # nesting of parameters (objects and arrays)
MAX_IDEMPOTENCY_KEY = 255     # characters
MAX_NAME = 200                # characters of a job name or a schedule id


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of decoded JSON, counted without recursion; stops early past `limit`."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            items = v.values()
        elif isinstance(v, list):
            items = v
        else:
            continue
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        stack.extend((x, d + 1) for x in items)
    return deepest
