"""API tokens from the configuration (CHUNKD_API_TOKENS, CHUNKD_API_TOKENS_FILE) and the
start-up check that an API without tokens listens on loopback only."""
from __future__ import annotations

from pathlib import Path

from daemon.http.auth import Scope, is_loopback
from daemon.wiring.config import Config, ConfigError


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


def check_exposure(cfg: Config, tokens: dict[str, Scope]) -> None:
    """Without tokens the API may only listen on loopback (unless explicitly insecure)."""
    if cfg.http_addr is None or tokens or cfg.api_insecure:
        return
    host = cfg.http_addr[0]
    if not is_loopback(host):
        raise ConfigError("CHUNKD_HTTP_ADDR", f"{host}:{cfg.http_addr[1]}",
                          "refusing to serve the API on a non-loopback address without tokens; set "
                          "CHUNKD_API_TOKENS_FILE (or CHUNKD_API_TOKENS), or CHUNKD_API_INSECURE=true")
