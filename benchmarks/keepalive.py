"""Keep-alive request latency (issue 16): sequential requests on one HTTP/1.1 connection to a
`chunkd run` process, `GET /healthz` and `GET /api/v1/instances/{id}` of a finished 50-chunk
instance; p50/p95 after a warm-up.

  python -m benchmarks.keepalive [--requests 300] [--database NAME]

Uses CHUNKD_DATABASE_URL's server; NAME (default chunkd_bench_keepalive) is dropped and re-created.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import anyio

from benchmarks.daemons import free_port, wait_ready
from benchmarks.databases import fresh_database

_WARM_UP = 50


def _timed(c: http.client.HTTPConnection, method: str, path: str, n: int, body: bytes | None = None) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        c.request(method, path, body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        out.append((time.perf_counter() - t) * 1000)
    return out


def _summary(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms[_WARM_UP:])
    return {"p50": round(statistics.median(ms), 2), "p95": round(ms[int(0.95 * (len(ms) - 1))], 2)}


async def main(a: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    admin = os.environ.get("CHUNKD_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    dsn = await fresh_database(admin, a.database)
    port = free_port()
    env = {**os.environ, "CHUNKD_DATABASE_URL": dsn, "CHUNKD_HTTP_ADDR": f"127.0.0.1:{port}",
           "CHUNKD_LOG_LEVEL": "warning", "CHUNKD_API_TOKENS": ""}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("chunkd")), "run"], env=env)
    try:
        wait_ready(f"http://127.0.0.1:{port}", [proc])
        c = http.client.HTTPConnection("127.0.0.1", port)
        c.request("POST", "/api/v1/instances", body=json.dumps({"job": "chunkd.synthetic", "parameters": {"chunks": 50}}),
                  headers={"Content-Type": "application/json"})
        iid = json.loads(c.getresponse().read())["id"]
        deadline = time.monotonic() + 60
        while True:  # a finished instance: the view no longer changes while it is timed
            c.request("GET", f"/api/v1/instances/{iid}")
            if json.loads(c.getresponse().read())["status"] == "COMPLETED" or time.monotonic() > deadline:
                break
            await anyio.sleep(0.1)
        n = a.requests + _WARM_UP
        return {"requests": a.requests, "healthz_ms": _summary(_timed(c, "GET", "/healthz", n)),
                "instance_ms": _summary(_timed(c, "GET", f"/api/v1/instances/{iid}", n))}
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m benchmarks.keepalive", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--database", default="chunkd_bench_keepalive")
    print(json.dumps(anyio.run(main, p.parse_args())))
