"""The `soak` workload of `chunkd bench` (issue 26): a steady offered load for `--minutes`
against one `chunkd run` process with the product's defaults plus CHUNKD_RETENTION (2m unless
the environment sets it), so retention purges while the load runs. `--rate` submits/s of
`chunkd.synthetic` instances of `--chunks-per-job` no-op chunks, open loop from one client
process (benchmarks/jobs_workload.Submitter), and every `--sample-every` seconds one row:

  submit round trip p50/p99 over the window, chunk created -> completed p99 (chunks of the
  instances submitted in the window), the pages one instance's chunk lookup reads (the API's
  instance view, which answers every submit: EXPLAIN ANALYZE BUFFERS), the daemon's RSS and open fds, the database's Postgres
  connections, the NOTIFY queue's use, and per chunkd_* table: live and dead tuples, table and
  index bytes (pg_stat_user_tables, pg_relation_size, pg_indexes_size).

What it is for: something that grows with time although the live data does not (a bloating
index, a plan that degrades, a structure in the daemon) shows as a trend down a column.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import msgspec
import psutil

from benchmarks import figures as q
from benchmarks import sql
from benchmarks.daemons import free_port, wait_ready
from benchmarks.jobs_workload import STEP, Submitter
from benchmarks.options import Options

RETENTION = "2m"


class Sampler:
    """Reads one row of figures; `since` marks where the last window ended."""

    def __init__(self, conn: asyncpg.Connection, proc: subprocess.Popen[bytes], sub: Submitter) -> None:
        self.conn, self.proc, self.sub = conn, proc, sub
        self.trips_seen = 0
        self.ids_seen = 0

    async def _lookup_pages(self, instance_id: int) -> int:
        plan = await self.conn.fetchval(sql.SOAK_LOOKUP, instance_id)
        plan = json.loads(plan) if isinstance(plan, str) else plan
        top = plan[0]["Plan"]
        return int(top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0))

    async def sample(self, t: float) -> dict[str, Any]:
        trips = self.sub.round_trips[self.trips_seen:]
        ids = self.sub.ids[self.ids_seen:]
        submit = q.sample_percentiles_ms(trips)
        chunk = q.percentiles_ms(await self.conn.fetchval(sql.SOAK_CHUNK_LATENCY, ids, STEP)) if ids else {}
        lookup = await self._lookup_pages(ids[len(ids) // 2]) if ids else None
        try:
            p = psutil.Process(self.proc.pid)
            rss, fds = p.memory_info().rss, p.num_fds()
        except psutil.NoSuchProcess:
            rss, fds = None, None
        tables = {r["name"]: {"live": r["live"], "dead": r["dead"], "table_bytes": r["table_bytes"],
                              "index_bytes": r["index_bytes"], "autovacuums": r["autovacuums"]}
                  for r in await self.conn.fetch(sql.SOAK_TABLES)}
        row = {"t": round(t, 1), "submits": len(trips),
               "submit_p50_ms": submit["p50"], "submit_p99_ms": submit["p99"],
               "chunk_p99_ms": chunk.get("p99"), "lookup_pages": lookup,
               "rss_mb": round(rss / 2**20, 1) if rss else None, "fds": fds,
               "pg_connections": await self.conn.fetchval(sql.SOAK_CONNECTIONS),
               "notify_queue": await self.conn.fetchval(sql.SOAK_NOTIFY_QUEUE),
               "instances": await self.conn.fetchval(sql.SOAK_INSTANCES),
               "tables": tables,
               "indexes": {r["name"]: r["bytes"] for r in await self.conn.fetch(sql.SOAK_INDEXES)}}
        # only now: a sample cut short (the run ending) leaves its window to the closing one
        self.trips_seen += len(trips)
        self.ids_seen += len(ids)
        return row


async def run(opts: Options, dsn: str, conn: asyncpg.Connection, facts: dict[str, Any]) -> dict[str, Any]:
    """`dsn` is the soak's database (migrated by the daemon)."""
    port = free_port()
    retention = os.environ.get("CHUNKD_RETENTION", RETENTION)
    env = {**os.environ, "CHUNKD_DATABASE_URL": dsn, "CHUNKD_HTTP_ADDR": f"127.0.0.1:{port}",
           "CHUNKD_LOG_LEVEL": os.environ.get("CHUNKD_LOG_LEVEL", "warning"), "CHUNKD_API_TOKENS": "",
           "CHUNKD_RETENTION": retention}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("chunkd")), "run"], env=env)
    samples: list[dict[str, Any]] = []
    sub: Submitter | None = None
    try:
        await anyio.to_thread.run_sync(wait_ready, f"http://127.0.0.1:{port}", [proc])
        body = msgspec.json.encode({"job": "chunkd.synthetic",
                                    "parameters": {"chunks": opts.chunks_per_job, "fanout": 0,
                                                   "work_ms": opts.work_ms}})
        sub = Submitter([port], body)
        sampler = Sampler(conn, proc, sub)
        rate = opts.rate or 15.0
        total = int(opts.minutes * 60 * rate)
        t0 = time.monotonic()
        wall0 = time.time()
        async with anyio.create_task_group() as tg:
            async def schedule() -> None:
                for i in range(total):
                    due = t0 + i / rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        await anyio.sleep(delay)
                    tg.start_soon(sub.submit, wall0 + (due - t0))

            async def watch() -> None:
                n = 1
                while True:
                    await anyio.sleep(max(0.0, t0 + n * opts.sample_every - time.monotonic()))
                    row = await sampler.sample(time.monotonic() - t0)
                    samples.append(row)
                    if opts.progress:
                        print(row_line(row), file=sys.stderr, flush=True)
                    n += 1
                    if proc.poll() is not None:
                        raise RuntimeError("the chunkd daemon exited during the soak")

            tg.start_soon(watch)
            await schedule()
            # the last window's submits answer, then one closing sample
            while len(sub.round_trips) + len(sub.errors) < total and time.monotonic() < t0 + opts.minutes * 60 + 30:
                await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        samples.append(await sampler.sample(time.monotonic() - t0))
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if sub is not None:
            sub.close()
    return {"workload": "soak", "minutes": opts.minutes, "rate": opts.rate or 15.0,
            "chunks_per_job": opts.chunks_per_job, "retention": retention,
            "submitted": len(sub.ids) if sub else 0,
            "http": {"connections_opened": sub.opened if sub else 0, "refused_429": sub.refused if sub else 0,
                     "errors": len(sub.errors) if sub else 0, "first_errors": sub.errors[:3] if sub else []},
            "settings": {"daemon": "chunkd run, product defaults", "CHUNKD_RETENTION": retention,
                         "overridden_by_environment": overrides(), **facts},
            "samples": samples}


def overrides() -> dict[str, str]:
    """CHUNKD_* settings this process's environment hands the daemon (then not the defaults)."""
    ours = {"CHUNKD_DATABASE_URL", "CHUNKD_HTTP_ADDR", "CHUNKD_LOG_LEVEL", "CHUNKD_API_TOKENS", "CHUNKD_RETENTION",
            "CHUNKD_HOME"}
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("CHUNKD_") and k not in ours}


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def row_line(r: dict[str, Any]) -> str:
    i = r["tables"].get("chunkd_instance", {})
    c = r["tables"].get("chunkd_chunk", {})
    return (f"t={r['t']}s submit p50/p99={r['submit_p50_ms']}/{r['submit_p99_ms']} ms chunk p99={r['chunk_p99_ms']} lookup pages={r['lookup_pages']} "
            f"rss={r['rss_mb']}MB fds={r['fds']} conns={r['pg_connections']} instances={r['instances']} "
            f"inst live/dead={i.get('live')}/{i.get('dead')} idx={_mb(i.get('index_bytes'))}MB "
            f"chunk live/dead={c.get('live')}/{c.get('dead')}")


def table_rows(report: dict[str, Any]) -> tuple[list[dict[str, str]], list[str]]:
    """One row per sample: the latencies and process figures, then the tables that matter."""
    rows = []
    for r in report["samples"]:
        t = r["tables"]
        row = {"t s": f"{r['t']:.0f}", "submits": str(r["submits"]),
               "submit p50/p99 ms": f"{r['submit_p50_ms']} / {r['submit_p99_ms']}",
               "chunk p99 ms": str(r["chunk_p99_ms"]), "lookup pages": str(r["lookup_pages"]),
               "RSS MB": str(r["rss_mb"]), "fds": str(r["fds"]),
               "pg conns": str(r["pg_connections"]), "instances": str(r["instances"])}
        for name, short in (("chunkd_instance", "instance"), ("chunkd_chunk", "chunk"),
                            ("chunkd_step_counter", "counter")):
            x = t.get(name, {})
            row[f"{short} live/dead"] = f"{x.get('live')}/{x.get('dead')}"
            row[f"{short} tbl+idx MB"] = f"{_mb(x.get('table_bytes'))}+{_mb(x.get('index_bytes'))}"
        rows.append(row)
    return rows, list(rows[0]) if rows else []
