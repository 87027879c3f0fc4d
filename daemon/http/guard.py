"""Request guard in front of the API and the dashboard: credentials first, then CSRF and DNS
rebinding.

A web page the operator visits must not drive the daemon, tokens or not; a script with a
token must be able to, the way the seeds call their endpoints (`curl -X POST -H
'Authorization: Bearer …'`, no body, no Content-Type). The rule follows from what a page can
send: a cross-origin page cannot add an `Authorization` header without a CORS preflight,
which this server never grants, so a request carrying `Authorization: Bearer` was not forged
by a page; one without credentials may have been.

- With tokens configured, a state-changing request (POST, PUT, PATCH, DELETE) without a
  valid bearer token is a 401 before anything else is looked at (never a 415 or 403 first);
  the route then checks the token's scope (403). A request with a valid token is then only
  held to the `Host` rule.
- Every request's `Host` must be the daemon's own (loopback, an IP literal, CHUNKD_HTTP_ADDR's
  host or CHUNKD_API_ALLOWED_HOSTS): a DNS-rebinding page sends its own name (421).
- Without tokens (loopback only, or explicitly allowed), a state-changing request with no
  `Authorization: Bearer` header must say `Content-Type: application/json`, which no
  cross-origin form or `text/plain` fetch can send without a preflight (415), and its
  `Origin` / `Sec-Fetch-Site`, when the browser sends them, must be the daemon's own (403).
Probes and the metrics scrape (/healthz, /readyz, /metrics) are read-only and exempt.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from daemon.http.auth import Scope as TokenScope
from daemon.http.auth import is_loopback
from daemon.http.common import ApiError, bearer, bearer_scope, error_response

EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _host_name(host_header: str) -> str:
    """'example:8080' -> 'example'; '[::1]:8080' -> '::1'."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class Guard:
    def __init__(self, app: ASGIApp, own_hosts: Iterable[str], tokens: dict[str, TokenScope] | None = None) -> None:
        self.app = app
        self.own = {h.lower() for h in own_hosts if h and h not in ("0.0.0.0", "::")}
        self.tokens = tokens or {}

    def refusal(self, method: str, headers: dict[bytes, bytes]) -> ApiError | None:
        changing = method in STATE_CHANGING
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        if changing and self.tokens:
            try:
                bearer_scope(self.tokens, authorization)
            except ApiError as e:
                return e
        host = headers.get(b"host", b"").decode("latin-1")
        name = _host_name(host)
        if not (is_loopback(name) or _is_ip(name) or name in self.own):
            return ApiError(421, "misdirected", f"this daemon does not answer to Host {host!r}; add it to "
                                                "CHUNKD_API_ALLOWED_HOSTS if it is a name of this daemon")
        if not changing or bearer(authorization) is not None:
            return None  # a page cannot send Authorization: Bearer cross-origin (no preflight is granted)
        ctype = headers.get(b"content-type", b"").decode("latin-1").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            return ApiError(415, "unsupported_media_type",
                            "a state-changing request without an Authorization: Bearer header needs "
                            "Content-Type: application/json")
        origin = headers.get(b"origin")
        if origin is not None:
            o = urlsplit(origin.decode("latin-1"))
            if o.netloc.lower() != host.strip().lower():
                return ApiError(403, "cross_origin", f"cross-origin request from {origin.decode('latin-1')!r} refused")
        if headers.get(b"sec-fetch-site", b"") == b"cross-site":
            return ApiError(403, "cross_origin", "cross-site request refused")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        refused = self.refusal(scope["method"], dict(scope["headers"]))
        if refused is None:
            await self.app(scope, receive, send)
            return
        await error_response(refused)(scope, receive, send)
