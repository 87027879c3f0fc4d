"""API bearer tokens with scopes. `manage` implies `view`. Tokens are compared in
constant time and never logged."""
from __future__ import annotations

import enum
import hmac
import ipaddress
from pathlib import Path

from .config import Config, ConfigError


class Scope(str, enum.Enum):
    VIEW = "view"
    MANAGE = "manage"


def parse_tokens(text: str, source: str, *, separator: str = ",") -> dict[str, Scope]:
    """'view:abc,manage:def' (or one per line; a line starting with # is a comment) -> {token: scope}."""
    tokens: dict[str, Scope] = {}
    items = text.splitlines() if separator == "\n" else text.split(separator)
    for n, raw in enumerate(items, 1):
        item = raw.strip()
        # '#' starts a comment only at the start of a line: inside a token it is part of
        # the secret (cutting it there would accept the token's prefix).
        if not item or (separator == "\n" and item.startswith("#")):
            continue
        scope, sep, token = item.partition(":")
        where = f"line {n}" if separator == "\n" else f"entry {n}"
        if not sep or scope.strip() not in ("view", "manage") or not token.strip() or any(c.isspace() for c in token.strip()):
            raise ConfigError(source, f"<{where} hidden>", "expected scope:token with scope view or manage "
                                                         "and a token without spaces")
        tokens[token.strip()] = Scope(scope.strip())
    return tokens


def load_tokens(cfg: Config) -> dict[str, Scope]:
    tokens = parse_tokens(cfg.api_tokens, "CHUNKD_API_TOKENS") if cfg.api_tokens else {}
    if cfg.api_tokens_file:
        try:
            text = Path(cfg.api_tokens_file).read_text()
        except OSError as e:
            raise ConfigError("CHUNKD_API_TOKENS_FILE", cfg.api_tokens_file, f"cannot read it: {e.strerror}") from None
        tokens.update(parse_tokens(text, "CHUNKD_API_TOKENS_FILE", separator="\n"))
    return tokens


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(cfg: Config, tokens: dict[str, Scope]) -> None:
    """Without tokens the API may only listen on loopback (unless explicitly insecure)."""
    if cfg.http_addr is None or tokens or cfg.api_insecure:
        return
    host = cfg.http_addr[0]
    if not is_loopback(host):
        raise ConfigError("CHUNKD_HTTP_ADDR", f"{host}:{cfg.http_addr[1]}",
                          "refusing to serve the API on a non-loopback address without tokens; set "
                          "CHUNKD_API_TOKENS_FILE (or CHUNKD_API_TOKENS), or CHUNKD_API_INSECURE=true")


def scope_of(tokens: dict[str, Scope], presented: str) -> Scope | None:
    """The scope of a presented token, comparing against every known token in constant time."""
    found: Scope | None = None
    p = presented.encode()
    for token, scope in tokens.items():
        if hmac.compare_digest(token.encode(), p):
            found = scope
    return found


def allows(have: Scope, need: Scope) -> bool:
    return have is Scope.MANAGE or need is Scope.VIEW
