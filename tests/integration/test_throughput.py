"""Issue 16: the API answers keep-alive requests without a fixed delay, and instances in one
partition share the claim (a small job does not wait behind a big job's backlog)."""
from __future__ import annotations

import http.client
import time
from urllib.parse import urlsplit


def test_keep_alive_requests_pay_no_fixed_delay(api_daemon) -> None:  # type: ignore[no-untyped-def]
    """Nagle + delayed ACK cost ~40 ms per request after the first on one connection; 20
    requests on ONE connection must take far less than 20 x 40 ms."""
    api = api_daemon()
    u = urlsplit(api.url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        for path in ("/healthz", "/api/v1/instances"):
            c.request("GET", path)  # warm: connection open, route and first query done
            r = c.getresponse()
            assert r.status == 200, r.read()
            r.read()
            sock = c.sock
            started = time.perf_counter()
            for _ in range(20):
                c.request("GET", path)
                r = c.getresponse()
                assert r.status == 200
                r.read()
            total = time.perf_counter() - started
            assert c.sock is sock, "the server closed the keep-alive connection"
            assert total < 0.4, f"20 keep-alive GET {path} took {total * 1000:.0f} ms (a fixed delay per request?)"
    finally:
        c.close()
