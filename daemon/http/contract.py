"""A job's contract as users see it: the JSON Schema of its parameters (msgspec generates it
from the parameter Struct, so it cannot drift from what submit validates)."""
from __future__ import annotations

from typing import Any

import msgspec

from actors.job import Job


def parameters_schema(job: Job) -> dict[str, Any]:
    """The parameter object's schema, inline at the top (no $ref to chase), with any nested
    types under $defs. Checks done in code (e.g. `__post_init__` ranges) are not in it: the
    submit answers those with a 422 naming the field."""
    full = msgspec.json.schema(job.params)
    defs: dict[str, Any] = dict(full.get("$defs", {}))
    ref = full.get("$ref", "")
    name = ref.rsplit("/", 1)[-1]
    if name in defs:
        top = dict(defs.pop(name))
        if defs:
            top["$defs"] = defs
        return top
    return full


def describe_type(schema: dict[str, Any]) -> str:
    """A short human name for a property's type ('integer', 'string | null', 'array of string')."""
    if "anyOf" in schema:
        return " | ".join(describe_type(s) for s in schema["anyOf"])
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    t = schema.get("type", "any")
    if t == "array" and isinstance(schema.get("items"), dict):
        return f"array of {describe_type(schema['items'])}"
    if "enum" in schema:
        return " | ".join(map(str, schema["enum"]))
    return t if isinstance(t, str) else " | ".join(t)
