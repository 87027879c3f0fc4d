"""Request guard in front of the API and the dashboard: CSRF and DNS rebinding.

A web page the operator visits must not drive the daemon, tokens or not:
- the `Host` must be the daemon's own (loopback, an IP literal, CHUNKD_HTTP_ADDR's host or
  CHUNKD_API_ALLOWED_HOSTS): a DNS-rebinding page sends its own name (421);
- a state-changing request (POST, PUT, PATCH, DELETE) must say `Content-Type:
  application/json`, which no cross-origin form or `text/plain` fetch can send without a
  CORS preflight that this server never grants (415);
- and its `Origin`, when the browser sends one, must be the daemon's own origin (403).
Probes and the metrics scrape (/healthz, /readyz, /metrics) are read-only and exempt.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from daemon.http.auth import is_loopback
from daemon.http.common import ApiError, error_response

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
    def __init__(self, app: ASGIApp, own_hosts: Iterable[str]) -> None:
        self.app = app
        self.own = {h.lower() for h in own_hosts if h and h not in ("0.0.0.0", "::")}

    def refusal(self, method: str, headers: dict[bytes, bytes]) -> tuple[int, str, str] | None:
        host = headers.get(b"host", b"").decode("latin-1")
        name = _host_name(host)
        if not (is_loopback(name) or _is_ip(name) or name in self.own):
            return 421, "misdirected", (f"this daemon does not answer to Host {host!r}; add it to "
                                        "CHUNKD_API_ALLOWED_HOSTS if it is a name of this daemon")
        if method not in STATE_CHANGING:
            return None
        ctype = headers.get(b"content-type", b"").decode("latin-1").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            return 415, "unsupported_media_type", "state-changing requests need Content-Type: application/json"
        origin = headers.get(b"origin")
        if origin is not None:
            o = urlsplit(origin.decode("latin-1"))
            if o.netloc.lower() != host.strip().lower():
                return 403, "cross_origin", f"cross-origin request from {origin.decode('latin-1')!r} refused"
        if headers.get(b"sec-fetch-site", b"") == b"cross-site":
            return 403, "cross_origin", "cross-site request refused"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        refused = self.refusal(scope["method"], dict(scope["headers"]))
        if refused is None:
            await self.app(scope, receive, send)
            return
        status, code, message = refused
        await error_response(ApiError(status, code, message))(scope, receive, send)
