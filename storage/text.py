"""Making text storable: the one place every string bound for Postgres passes through.

Postgres `text` and `jsonb` cannot hold NUL (U+0000), and a message of unbounded size
can break a batch. Text from a step (an exception raised over binary input, a warning,
a report) is the user's, so it is repaired here, never refused: NUL becomes U+FFFD and
long text is cut with a marker, so one chunk's odd result can never fail its batch.
"""
from __future__ import annotations

from typing import Any

import msgspec

NUL = "\x00"
REPLACEMENT = "\ufffd"
MAX_MESSAGE = 2000      # characters of an error message or a warning
MAX_TRACE = 16_000      # characters of a traceback kept with a chunk's last error
_JSON_NUL = "\\u0000"


def storable(text: str | None, limit: int = MAX_MESSAGE) -> str | None:
    """`text` with NUL replaced and at most `limit` characters (None stays None)."""
    if text is None:
        return None
    if NUL in text:
        text = text.replace(NUL, REPLACEMENT)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(NUL, REPLACEMENT)
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    return value


def storable_json(text: str) -> str:
    """JSON text for a jsonb column: jsonb refuses the escape \\u0000 inside strings.
    Only JSON that contains the escape is decoded and re-encoded (rare, so cheap)."""
    if _JSON_NUL not in text:
        return text
    return msgspec.json.encode(_clean(msgspec.json.decode(text))).decode()
