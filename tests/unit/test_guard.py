"""The request guard's order (daemon/http/guard.py, README "Browsers cannot drive the API"):
credentials first, then Host, then, only for a request a page could have forged (no
Authorization: Bearer, no tokens configured), Content-Type and Origin."""
from __future__ import annotations

from daemon.http.auth import Scope
from daemon.http.guard import Guard

TOKENS = {"v": Scope.VIEW, "m": Scope.MANAGE}
OWN = b"127.0.0.1:8080"


def status(guard: Guard, method: str, **headers: bytes) -> int | None:
    h = {k.replace("_", "-").lower().encode(): v for k, v in headers.items()}
    h.setdefault(b"host", OWN)
    refused = guard.refusal(method, h)
    return None if refused is None else refused.status


def test_with_tokens_credentials_come_first() -> None:
    # issue 23: a request without valid credentials gets 401, never 415 or 403 first
    g = Guard(lambda *a: None, [], TOKENS)  # type: ignore[arg-type, return-value]
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert status(g, method) == 401
        assert status(g, method, content_type=b"text/plain", origin=b"http://evil.example") == 401
        assert status(g, method, authorization=b"Bearer nope") == 401
        assert status(g, method, authorization=b"Basic bTpt") == 401
        assert status(g, method, host=b"rebind.evil.example") == 401
    # a valid token of either scope passes the guard (the route checks the scope: 403)
    assert status(g, "POST", authorization=b"Bearer m") is None
    assert status(g, "DELETE", authorization=b"Bearer v") is None
    assert status(g, "POST", authorization=b"Bearer m", host=b"rebind.evil.example") == 421
    assert status(g, "GET") is None  # reads: the route answers 401


def test_without_tokens_only_a_bearer_header_lifts_the_browser_rules() -> None:
    g = Guard(lambda *a: None, [])  # type: ignore[arg-type, return-value]
    assert status(g, "POST") == 415
    assert status(g, "POST", content_type=b"application/x-www-form-urlencoded") == 415
    assert status(g, "POST", authorization=b"Basic bTpt") == 415  # browsers resend Basic credentials by themselves
    assert status(g, "POST", content_type=b"application/json", origin=b"http://evil.example") == 403
    assert status(g, "POST", content_type=b"application/json", sec_fetch_site=b"cross-site") == 403
    assert status(g, "POST", content_type=b"application/json") is None
    assert status(g, "POST", authorization=b"Bearer x") is None
    assert status(g, "POST", authorization=b"Bearer x", host=b"rebind.evil.example") == 421
