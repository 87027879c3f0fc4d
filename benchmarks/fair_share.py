"""Fair-share measurement (issue 16): a 100-chunk `chunkd.synthetic` job submitted over HTTP
while a big job's READY backlog drains; submit -> COMPLETED of the small job, N tries, and the
big job's rate meanwhile.

  python -m benchmarks.fair_share [--backlog 1000000] [--small 100] [--tries 10] [--database NAME]

Uses CHUNKD_DATABASE_URL's server; NAME (default chunkd_bench_fair) is dropped and re-created.
One `chunkd run` process with the bench's shape (4 partitions x 16, claim batch 500).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import anyio
import asyncpg

from benchmarks import figures as q
from benchmarks.daemons import free_port, wait_ready
from benchmarks.databases import fresh_database
from benchmarks.seed import seed_backlog
from daemon.jobs.synthetic import SyntheticParams, Work


def _post(url: str, body: dict) -> dict:  # type: ignore[type-arg]
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


async def main(a: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    admin = os.environ.get("CHUNKD_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    dsn = await fresh_database(admin, a.database)
    from storage.migrate import migrate
    conn = await asyncpg.connect(dsn)
    await migrate(conn)
    big = await seed_backlog(conn, "chunkd.synthetic", 1, SyntheticParams(chunks=a.backlog, fanout=0), 1,
                             [Work(i) for i in range(a.backlog)], 4, 5)
    port = free_port()
    env = {**os.environ, "CHUNKD_DATABASE_URL": dsn, "CHUNKD_HTTP_ADDR": f"127.0.0.1:{port}",
           "CHUNKD_PARTITIONS": "4", "CHUNKD_PARTITION_CONCURRENCY": "16", "CHUNKD_CLAIM_BATCH": "500",
           "CHUNKD_COMPLETER_BATCH": "1000", "CHUNKD_LOG_LEVEL": "warning", "CHUNKD_MAINTENANCE_INTERVAL": "0.2",
           "CHUNKD_API_TOKENS": ""}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("chunkd")), "run"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, [proc])
        await anyio.sleep(1.0)  # the drain is under way
        latencies, big_rates = [], []
        for _ in range(a.tries):
            done0, t0 = await q.progress(conn, big, 1), time.monotonic()
            iid = _post(url + "/api/v1/instances", {"job": "chunkd.synthetic",
                                                    "parameters": {"chunks": a.small, "fanout": 0}})["id"]
            while await q.status(conn, iid) != "COMPLETED":
                if time.monotonic() - t0 > a.give_up:
                    break
                await anyio.sleep(0.01)
            dt = time.monotonic() - t0
            latencies.append(round(dt, 3))
            big_rates.append(round((await q.progress(conn, big, 1) - done0) / dt))
            if await q.progress(conn, big, 1) >= a.backlog:
                break  # the backlog ran out: later tries would not measure anything
        return {"backlog": a.backlog, "small_chunks": a.small, "tries": len(latencies),
                "small_submit_to_completed_s": latencies, "within_2s": sum(x <= 2 for x in latencies),
                "big_chunks_per_s_meanwhile": big_rates,
                "big_left_at_end": a.backlog - await q.progress(conn, big, 1)}
    finally:
        proc.terminate()
        proc.wait(30)
        await conn.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m benchmarks.fair_share", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backlog", type=int, default=1_000_000)
    p.add_argument("--small", type=int, default=100)
    p.add_argument("--tries", type=int, default=10)
    p.add_argument("--give-up", type=float, default=60.0, help="seconds before a try is abandoned")
    p.add_argument("--database", default="chunkd_bench_fair")
    print(json.dumps(anyio.run(main, p.parse_args())))
