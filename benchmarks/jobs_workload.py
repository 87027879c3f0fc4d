"""The `jobs` workload of `chunkd bench`: many `chunkd.synthetic` instances (fanout 0, so each
is `--chunks-per-job` no-op work chunks and an empty reduction) submitted through the real HTTP
API of `chunkd run` daemon processes, by keep-alive clients in this process.

Closed loop (default): `--clients` connections each submit the next job as soon as their last
submit answered. Open loop (`--rate R`): submit i starts at t0 + i/R whatever earlier submits
do (a busy connection does not delay it: another one is opened), and latencies count from that
scheduled time, so the latency at an offered load is measured honestly.

Bulk (`--bulk N`): all instances are submitted up front in `POST /api/v1/instances:batch`
requests of N items on one connection, to one daemon run with the product's defaults (no
tuning variable set): the "20,000 instances in flight" case (`--jobs 20000 --chunks-per-job
10 --bulk 1000`). It adds bulk submits/s. Every run reports the maintenance passes' count
and duration (p50 from the daemon's chunkd_maintenance_pass_seconds histogram, interpolated
in its buckets), and the same for the advancing passes between them
(chunkd_maintenance_advance_seconds).

Reports instances/s and chunks/s (sustained 10%..90%), submit round trip, submit -> COMPLETED
and chunk (created -> completed, claim -> complete) percentiles.
"""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import msgspec

from benchmarks import figures as q
from benchmarks.cpu import postgres_cpu, processes_cpu
from benchmarks.daemons import free_port, wait_ready
from benchmarks.options import Options
from benchmarks.settings import settings_report

STEP = 1  # chunkd.synthetic's `work` step
POLL_SHARE = 20  # the progress poll sleeps 20x what its reads took: at most ~5% of a core


class HttpConn:
    """A minimal HTTP/1.1 keep-alive client (one request at a time): the harness must not
    measure a client library's overhead, and the daemon's own deps have none for asyncio."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        for attempt in (1, 2):  # a keep-alive connection the server closed meanwhile: reopen once
            if self.writer is None:
                await self._open()
            assert self.reader is not None and self.writer is not None
            try:
                self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                                  f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                                  .encode() + body)
                head = await self.reader.readuntil(b"\r\n\r\n")
                break
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt == 2:
                    raise
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        payload = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            self.reader = None


class Submitter:
    def __init__(self, ports: list[int], body: bytes) -> None:
        self.ports, self.body = ports, body
        self.idle: list[HttpConn] = []
        self.opened = 0
        self.ids: list[int] = []
        self.started: list[float] = []   # wall-clock start (scheduled start under --rate) per id
        self.round_trips: list[float] = []
        self.refused = 0                 # 429 answers (load shedding), retried
        self.errors: list[str] = []

    def _conn(self) -> HttpConn:
        if self.idle:
            return self.idle.pop()
        self.opened += 1
        return HttpConn("127.0.0.1", self.ports[self.opened % len(self.ports)])

    async def submit(self, scheduled_wall: float | None = None) -> None:
        conn = self._conn()
        start_wall = scheduled_wall if scheduled_wall is not None else time.time()
        t = time.perf_counter()
        try:
            while True:
                status, headers, payload = await conn.request("POST", "/api/v1/instances", self.body)
                if status != 429:
                    break
                self.refused += 1
                await anyio.sleep(0.01)
        except (OSError, asyncio.IncompleteReadError) as e:
            conn.close()
            self.errors.append(repr(e))
            return
        self.round_trips.append(time.perf_counter() - t)
        self.idle.append(conn)
        if status not in (200, 201):
            self.errors.append(f"HTTP {status}: {payload[:200]!r}")
            return
        self.ids.append(msgspec.json.decode(payload)["id"])
        self.started.append(start_wall)

    async def submit_bulk(self, jobs: int, per_request: int) -> None:
        """All `jobs` in bulk requests of `per_request` items, one after another on one connection."""
        conn = self._conn()
        item = msgspec.json.decode(self.body)
        for lo in range(0, jobs, per_request):
            n = min(per_request, jobs - lo)
            start_wall, t = time.time(), time.perf_counter()
            status, _, payload = await conn.request("POST", "/api/v1/instances:batch",
                                                    msgspec.json.encode({"items": [item] * n}))
            self.round_trips.append(time.perf_counter() - t)
            if status != 200:
                self.errors.append(f"HTTP {status}: {payload[:200]!r}")
                continue
            for r in msgspec.json.decode(payload)["results"]:
                if r.get("id") is not None:
                    self.ids.append(r["id"])
                    self.started.append(start_wall)
        self.idle.append(conn)

    def close(self) -> None:
        for c in self.idle:
            c.close()


# One function on purpose, like harness.run: daemons, clients and accounting share the
# measurement's clocks; split, the figures would be taken at different moments.
async def run(opts: Options, dsn: str, conn: asyncpg.Connection, facts: dict[str, Any],
              tuning: dict[str, str]) -> dict[str, Any]:
    """`dsn` is the benchmark's database (migrated by the daemons); `tuning` the CHUNKD_*
    variables the bench's options set (the rest are the product's defaults)."""
    ports = [free_port() for _ in range(opts.daemons)]
    env_base = {**os.environ, "CHUNKD_DATABASE_URL": dsn, **tuning,
                "CHUNKD_LOG_LEVEL": os.environ.get("CHUNKD_LOG_LEVEL", "warning"),
                # the product's maintenance interval: an instance moves on when its step closes
                # (the completer rings maintenance's doorbell), not at the interval; the bench
                # used to shorten it to 0.2 s, which now costs throughput (more full passes)
                "CHUNKD_API_TOKENS": ""}
    used = settings_report(env_base, tuning)
    eff = used["effective"]
    exe = str(Path(sys.executable).with_name("chunkd"))
    procs = [subprocess.Popen([exe, "run"], env={**env_base, "CHUNKD_HTTP_ADDR": f"127.0.0.1:{p}"})
             for p in ports]
    try:
        for p in ports:
            await anyio.to_thread.run_sync(wait_ready, f"http://127.0.0.1:{p}", procs)
        body = msgspec.json.encode({"job": "chunkd.synthetic",
                                    "parameters": {"chunks": opts.chunks_per_job, "fanout": 0,
                                                   "work_ms": opts.work_ms}})
        sub = Submitter(ports, body)
        total_chunks = opts.jobs * opts.chunks_per_job
        timeline: list[tuple[float, int]] = []
        daemon_cpu0, pg_cpu0 = processes_cpu(procs), postgres_cpu()
        t0 = time.monotonic()
        wall0 = time.time()
        async with anyio.create_task_group() as tg:
            if opts.bulk:
                tg.start_soon(sub.submit_bulk, opts.jobs, opts.bulk)
            elif opts.rate:
                async def schedule() -> None:
                    for i in range(opts.jobs):
                        due = t0 + i / opts.rate
                        delay = due - time.monotonic()
                        if delay > 0:
                            await anyio.sleep(delay)
                        tg.start_soon(sub.submit, wall0 + (due - t0))
                tg.start_soon(schedule)
            else:
                remaining = [opts.jobs]

                async def client() -> None:
                    while remaining[0] > 0:
                        remaining[0] -= 1
                        await sub.submit()
                for _ in range(min(opts.clients, opts.jobs)):
                    tg.start_soon(client)
        submitted_at = time.monotonic() - t0
        deadline = t0 + opts.timeout
        while True:
            asked = time.monotonic()
            done = await q.jobs_progress(conn, sub.ids, STEP)
            timeline.append((time.monotonic() - t0, done))
            ended, completed = await q.jobs_finished(conn, sub.ids)
            if ended >= len(sub.ids) or time.monotonic() > deadline:
                break
            # The harness must not weigh on what it measures: over 20,000 ids these two reads
            # cost Postgres ~60 ms, and read every 50 ms they took half of its CPU (the figures
            # below come from the rows' own timestamps, not from when this loop saw them).
            await anyio.sleep(max(0.05, POLL_SHARE * (time.monotonic() - asked)))
        elapsed = time.monotonic() - t0
        daemon_cpu, pg_cpu = processes_cpu(procs) - daemon_cpu0, postgres_cpu() - pg_cpu0
        passes = await _pass_seconds(ports[0], "chunkd_maintenance_pass_seconds")
        advances = await _pass_seconds(ports[0], "chunkd_maintenance_advance_seconds")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        sub_close = locals().get("sub")
        if sub_close is not None:
            sub_close.close()
    inst_lat, last_finish = await q.instance_latency(conn, sub.ids, sub.started)
    chunks = await q.chunk_latency(conn, sub.ids, STEP)
    # Time and rates over the span from the first submit to the last COMPLETED as the rows
    # say (when the poll loop noticed does not count).
    span = (last_finish - wall0) if last_finish else elapsed
    done_chunks = timeline[-1][1] if timeline else 0
    return {
        "workload": "jobs", "channel": os.environ.get("CHUNKD_CHANNEL", "postgres"), "daemons": opts.daemons,
        "jobs": opts.jobs, "chunks_per_job": opts.chunks_per_job, "clients": opts.clients, "rate": opts.rate,
        "database": opts.database,
        "instances_submitted": len(sub.ids), "instances_completed": completed,
        "chunks": total_chunks, "completed": done_chunks, "chunks_completed": chunks["completed"],
        "seconds": round(span if completed == len(sub.ids) else elapsed, 3), "submit_seconds": round(submitted_at, 3),
        "instances_per_second": round(completed / span, 1) if span > 0 else None,
        "submits_per_second": round(len(sub.ids) / submitted_at, 1) if submitted_at > 0 else None,
        "bulk": opts.bulk, "maintenance_pass_ms": passes, "advance_pass_ms": advances,
        "chunks_per_second": round(chunks["sustained_per_second"] or (done_chunks / elapsed), 1),
        "chunks_per_second_overall": round(done_chunks / span, 1) if span > 0 else None,
        "submit_round_trip_ms": q.sample_percentiles_ms(sub.round_trips),
        "instance_latency_ms": inst_lat,
        "chunk_latency_ms": chunks["created_to_completed_ms"],
        "latency_ms": chunks["claim_to_complete_ms"],
        "http": {"connections_opened": sub.opened, "refused_429": sub.refused, "errors": len(sub.errors),
                 "first_errors": sub.errors[:3]},
        "cpu_seconds_per_1000_chunks": {"daemon": round(daemon_cpu * 1000 / done_chunks, 4) if done_chunks else None,
                                        "postgres": round(pg_cpu * 1000 / done_chunks, 4) if done_chunks else None},
        "cpu_ms_per_instance": {"daemon": round(daemon_cpu * 1000 / completed, 3) if completed else None,
                                "postgres": round(pg_cpu * 1000 / completed, 3) if completed else None},
        "settings": {"partitions": eff["partitions"], "concurrency": eff["partition_concurrency"],
                     "claim_batch": eff["claim_batch"], "completer_batch": eff["completer_batch"],
                     "work_ms": opts.work_ms, **used, **facts},
        "timeline": [[round(t, 3), n] for t, n in timeline],
    }


async def _pass_seconds(port: int, histogram: str) -> dict[str, Any] | None:
    """The daemon's maintenance passes so far (`histogram`: full passes, or advancing passes
    between them): count, mean and p50 (interpolated in the histogram's buckets), in ms;
    None if it led none."""
    conn = HttpConn("127.0.0.1", port)
    try:
        status, _, payload = await conn.request("GET", "/metrics")
    except OSError:
        return None
    finally:
        conn.close()
    if status != 200:
        return None
    buckets: list[tuple[float, float]] = []
    total = count = 0.0
    for line in payload.decode().splitlines():
        if line.startswith(f"{histogram}_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
        elif line.startswith(f"{histogram}_sum"):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{histogram}_count"):
            count = float(line.rsplit(" ", 1)[1])
    if not count:
        return None
    half, lo, below = count / 2, 0.0, 0.0
    p50 = None
    for le, n in sorted(buckets):
        if n >= half:
            p50 = le if le == float("inf") else lo + (le - lo) * (half - below) / max(n - below, 1e-9)
            break
        lo, below = le, n
    return {"passes": int(count), "mean": round(total / count * 1000, 1),
            "p50": None if p50 is None or p50 == float("inf") else round(p50 * 1000, 1)}
