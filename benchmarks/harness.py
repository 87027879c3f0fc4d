"""chunkd's throughput harness, run by `chunkd bench` (benchmarks/cli.py parses its options).

Workloads (chunks of `chunkd.synthetic`'s no-op `work` step, fanout 0):
  drain  N chunks already READY (seeded with COPY); time the daemon(s) to process them.
  e2e    submit a job whose first step emits N chunks; time submit -> COMPLETED.
  soak   --minutes N of --rate submits/s of --chunks-per-job chunks against `chunkd run` with
         its defaults and CHUNKD_RETENTION=2m, one sample row every --sample-every s
         (benchmarks/soak.py); in its own database, chunkd_bench_soak.
  jobs   --jobs N instances of --chunks-per-job M chunks each, submitted through the HTTP API
         of `chunkd run` processes by keep-alive clients (benchmarks/jobs_workload.py).
Runs in its own database (`chunkd_bench` on the server of CHUNKD_DATABASE_URL, or on the
embedded Postgres), dropped and re-created each run; `--database NAME` runs in NAME instead,
created if missing and never dropped (the figures count only this run's instances).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import msgspec

from actors.instances import submit
from daemon.jobs import load_registry
from daemon.jobs.synthetic import SyntheticParams, Work
from daemon.wiring import config as config_mod
from daemon.wiring.embedded import resolve_dsn
from daemon.wiring.node import Node, open_store
from benchmarks import figures as q
from benchmarks.cpu import postgres_cpu, processes_cpu
from benchmarks import jobs_workload, soak
from benchmarks.databases import existing_database, fresh_database
from benchmarks.options import BENCH_DB, SOAK_DB, Options, tuning_env
from benchmarks.settings import settings_report
from benchmarks.seed import seed_backlog

STEP = 1  # chunkd.synthetic's `work` step


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# One function on purpose: set-up, timed run and accounting share the measurement's clocks and
# counters; split, the figures would be taken at different moments.
async def run(opts: Options) -> dict[str, Any]:
    tuning = tuning_env(opts)
    daemon_env = {**os.environ, "CHUNKD_LOG_LEVEL": os.environ.get("CHUNKD_LOG_LEVEL", "warning"),
                  "CHUNKD_HTTP_ADDR": "off", **tuning, "CHUNKD_MAINTENANCE_INTERVAL": "0.2"}
    cfg = config_mod.load(daemon_env)
    used = settings_report(daemon_env, tuning)
    admin_dsn = resolve_dsn(cfg)
    if opts.workload == "soak":  # its own database: a soak runs for long beside other benches
        dsn = await (existing_database(admin_dsn, opts.database) if opts.database
                     else fresh_database(admin_dsn, SOAK_DB))
        conn = await asyncpg.connect(dsn)
        try:
            return await soak.run(opts, dsn, conn, await q.server_facts(conn))
        finally:
            await conn.close()
    dsn = await (existing_database(admin_dsn, opts.database) if opts.database else fresh_database(admin_dsn, BENCH_DB))
    registry = load_registry(cfg.jobs)
    store = await open_store(cfg, dsn)
    conn = await asyncpg.connect(dsn)
    statements = [0]

    def count(_: Any) -> None:
        statements[0] += 1

    params = SyntheticParams(chunks=opts.chunks, fanout=0, work_ms=opts.work_ms)
    iid: int | None = None
    if opts.workload == "drain":
        iid = await seed_backlog(conn, "chunkd.synthetic", 1, params, STEP, [Work(i) for i in range(opts.chunks)],
                                 cfg.partitions, 5)
    facts = await q.server_facts(conn)
    if opts.workload == "jobs":
        try:
            return await jobs_workload.run(opts, dsn, conn, facts, tuning)
        finally:
            await conn.close()
            await store.close()
    procs: list[subprocess.Popen[bytes]] = []
    node: Node | None = None
    timeline: list[tuple[float, int]] = []
    pg_cpu0, self_cpu0, xacts0 = postgres_cpu(), _self_cpu(), await q.transactions(conn)
    wal0 = await q.wal_position(conn)
    async with anyio.create_task_group() as tg:
        if opts.daemons == 1:
            node = Node(cfg, registry, dsn, on_query=count)
            tg.start_soon(lambda: node.run(handle_signals=False))  # type: ignore[union-attr]
            await node.ready.wait()
        else:
            env = {**daemon_env, "CHUNKD_DATABASE_URL": dsn, "CHUNKD_LOG_LEVEL": "warning"}
            exe = str(Path(sys.executable).with_name("chunkd"))
            procs = [subprocess.Popen([exe, "run"], env=env) for _ in range(opts.daemons)]
        t0 = time.monotonic()
        if opts.workload == "e2e":
            res = await submit(store, None, registry, "chunkd.synthetic", msgspec.json.encode(params))
            iid = res.instance_id
            from channels.postgres import PostgresChannel
            ch = PostgresChannel(dsn, cfg.partitions)
            await ch.publish(range(cfg.partitions))
            await ch.close()
        assert iid is not None
        deadline = t0 + opts.timeout
        while True:
            done = await q.progress(conn, iid, STEP)
            timeline.append((time.monotonic() - t0, done))
            status = await q.status(conn, iid)
            if done >= opts.chunks and (opts.workload == "drain" or status in ("COMPLETED", "FAILED")):
                break
            if time.monotonic() > deadline:
                break
            await anyio.sleep(0.05)
        elapsed = time.monotonic() - t0
        pg_cpu, self_cpu, xacts = postgres_cpu() - pg_cpu0, _self_cpu() - self_cpu0, await q.transactions(conn) - xacts0
        wal = await q.wal_position(conn) - wal0
        daemon_cpu = processes_cpu(procs) if procs else self_cpu
        if node is not None:
            node.stop()
        for p in procs:
            p.terminate()
    for p in procs:
        p.wait(30)
    completed = timeline[-1][1] if timeline else 0
    latency = await q.latency_ms(conn, iid, STEP)
    table_bytes = await q.chunk_table_bytes(conn)
    await conn.close()
    await store.close()
    per_k = 1000 / completed if completed else None
    report = {
        "workload": opts.workload, "channel": cfg.channel, "daemons": opts.daemons,
        "chunks": opts.chunks, "completed": completed, "seconds": round(elapsed, 3),
        "chunks_per_second": round(q.sustained_rate(timeline, opts.chunks) or (completed / elapsed), 1),
        "chunks_per_second_overall": round(completed / elapsed, 1) if elapsed else None,
        "latency_ms": latency,
        "statements_per_chunk": round(statements[0] / completed, 4) if completed and node is not None else None,
        "transactions_per_chunk": round(xacts / completed, 4) if completed else None,
        "wal_bytes_per_chunk": round(wal / completed) if completed else None,
        "cpu_seconds_per_1000_chunks": {"daemon": round(daemon_cpu * per_k, 4) if per_k else None,
                                        "postgres": round(pg_cpu * per_k, 4) if per_k else None},
        "chunk_table_bytes": table_bytes,
        "settings": {"partitions": cfg.partitions, "concurrency": cfg.partition_concurrency,
                     "claim_batch": cfg.claim_batch, "completer_batch": cfg.completer_batch, "work_ms": opts.work_ms,
                     **used, **facts},
        "timeline": [[round(t, 3), n] for t, n in timeline],
    }
    if opts.compare:
        report["peers"] = await compare(admin_dsn, opts, report)
    if opts.plot:
        plot(report, opts.plot)
    return report


async def compare(admin_dsn: str, opts: Options, ours: dict[str, Any]) -> dict[str, Any]:
    """Each peer in its own process and database, same server, same run, same no-op work."""
    from benchmarks import peers
    ours_rate = ours["chunks_per_second"]
    out: dict[str, Any] = {}
    for name in peers.PEERS:
        peer_dsn = await fresh_database(admin_dsn, f"{BENCH_DB}_{name}")
        jobs = opts.peer_jobs.get(name, opts.chunks)
        res = await anyio.run_process([sys.executable, "-m", "benchmarks.peers", name, peer_dsn, str(jobs)],
                                      check=False)
        try:
            result = json.loads(res.stdout.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            result = {"error": res.stderr.decode()[-500:]}
        if "jobs_per_second" in result:
            theirs = result["jobs_per_second"] if opts.workload == "drain" else result["enqueue_plus_drain_per_second"]
            result["compared"] = "drain" if opts.workload == "drain" else "enqueue_plus_drain"
            result["ratio"] = round(ours_rate / theirs, 2) if theirs else None
        out[name] = result
    return out


def plot(report: dict[str, Any], path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("chunkd bench: --plot needs matplotlib (pip install matplotlib)") from None
    tl = report["timeline"]
    xs = [t for t, _ in tl[1:]]
    ys = [(n1 - n0) / (t1 - t0) if t1 > t0 else 0 for (t0, n0), (t1, n1) in zip(tl, tl[1:])]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(xs, ys, label="chunkd")
    ax.set_xlabel("seconds")
    ax.set_ylabel("chunks/s")
    ax.set_title(f"{report['workload']}: {report['chunks']} chunks, {report['chunks_per_second']:.0f}/s sustained")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


