"""msgspec codecs for chunk data: encode once, decode lazily in the executor."""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import msgspec

_encoder = msgspec.msgpack.Encoder()
_json_encoder = msgspec.json.Encoder()


class DataError(ValueError):
    """Chunk data or parameters that cannot be decoded into the declared type."""


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


@lru_cache(maxsize=None)
def _decoder(tp: type) -> msgspec.msgpack.Decoder:
    return msgspec.msgpack.Decoder(tp)


def decode(data: bytes | None, tp: type) -> Any:
    try:
        return _decoder(tp).decode(data if data is not None else b"")
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise DataError(f"chunk data does not decode as {tp.__name__}: {e}") from None


def to_json(value: Any) -> str:
    return _json_encoder.encode(value).decode()


@lru_cache(maxsize=None)
def _json_decoder(tp: type) -> msgspec.json.Decoder:
    return msgspec.json.Decoder(tp)


def params_from_json(text: str | bytes, tp: type) -> Any:
    try:
        return _json_decoder(tp).decode(text)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise DataError(f"parameters do not match {tp.__name__}: {e}") from None
