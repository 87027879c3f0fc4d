"""chunkd's throughput harness: `chunkd bench` / `python -m benchmarks`.

Workloads (chunks of `chunkd.synthetic`'s no-op `work` step, fanout 0):
  drain  N chunks already READY (seeded with COPY); time the daemon(s) to process them.
  e2e    submit a job whose first step emits N chunks; time submit -> COMPLETED.
  jobs   --jobs N instances of --chunks-per-job M chunks each, submitted through the HTTP API
         of `chunkd run` processes by keep-alive clients (benchmarks/jobs_workload.py).
Runs in its own database (`chunkd_bench` on the server of CHUNKD_DATABASE_URL, or on the
embedded Postgres), dropped and re-created each run; `--database NAME` runs in NAME instead,
created if missing and never dropped (the figures count only this run's instances).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import msgspec
import psutil

from daemon import config as config_mod
from daemon.jobs.synthetic import SyntheticParams, Work
from daemon.node import Node, open_store
from daemon.registry import build_registry
from daemon.submit import submit
from storage import bench as q

BENCH_DB = "chunkd_bench"
STEP = 1  # chunkd.synthetic's `work` step


class Options(msgspec.Struct, kw_only=True):
    workload: str = "drain"
    chunks: int = 100_000
    daemons: int = 1
    partitions: int = 4
    concurrency: int = 16
    batch: int = 500
    completer_batch: int = 1000
    work_ms: float = 0.0
    timeout: float = 600.0
    plot: str | None = None
    as_json: bool = False
    compare: bool = False
    peer_jobs: dict[str, int] = {}
    database: str | None = None
    jobs: int = 1000
    chunks_per_job: int = 10
    clients: int = 16
    rate: float | None = None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chunkd bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=("drain", "e2e", "jobs"), default="drain")
    p.add_argument("--chunks", type=int, default=100_000)
    p.add_argument("--daemons", type=int, default=1, help="1 runs in-process; more run as `chunkd run` subprocesses")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=16, help="CHUNKD_PARTITION_CONCURRENCY")
    p.add_argument("--batch", type=int, default=500, help="CHUNKD_CLAIM_BATCH")
    p.add_argument("--completer-batch", type=int, default=1000, help="CHUNKD_COMPLETER_BATCH")
    p.add_argument("--work-ms", type=float, default=0.0, help="simulated work per chunk")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--database", metavar="NAME",
                   help=f"run in this database (created if missing, never dropped) instead of {BENCH_DB}")
    p.add_argument("--jobs", type=int, default=1000, help="jobs workload: instances to submit")
    p.add_argument("--chunks-per-job", type=int, default=10, help="jobs workload: work chunks per instance")
    p.add_argument("--clients", type=int, default=16, help="jobs workload: keep-alive HTTP clients (closed loop)")
    p.add_argument("--rate", type=float, help="jobs workload: open loop, submits started per second on schedule")
    p.add_argument("--plot", metavar="PNG", help="write a throughput-over-time chart (needs matplotlib)")
    p.add_argument("--json", dest="as_json", action="store_true", help="print one JSON object")
    p.add_argument("--compare", action="store_true",
                   help="also run pgqueuer and procrastinate on the same server (pip install 'chunkd[peers]')")
    p.add_argument("--procrastinate-jobs", type=int, default=10_000,
                   help="jobs for procrastinate in --compare (it drains ~400-900/s here)")
    return p


def _with_db(dsn: str, db: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + db, parts.query, parts.fragment))


async def existing_database(admin_dsn: str, name: str) -> str:
    """`name` on the server of `admin_dsn`, created if missing, never dropped; returns its DSN."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        if not await admin.fetchval("SELECT true FROM pg_database WHERE datname = $1", name):
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return _with_db(admin_dsn, name)


async def fresh_database(admin_dsn: str, name: str) -> str:
    """Drop and create `name` on the server of `admin_dsn`; returns its DSN."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return _with_db(admin_dsn, name)


def _postgres_cpu() -> float:
    total = 0.0
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in ("postgres", "postmaster"):
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
    return total


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def sustained_rate(timeline: list[tuple[float, int]], total: int) -> float | None:
    """Chunks/s between 10% and 90% done: warm-up and tail excluded."""
    lo = next((t for t, n in timeline if n >= 0.1 * total), None)
    hi = next((t for t, n in timeline if n >= 0.9 * total), None)
    if lo is None or hi is None or hi <= lo:
        return None
    n_lo = next(n for t, n in timeline if t == lo)
    n_hi = next(n for t, n in timeline if t == hi)
    return (n_hi - n_lo) / (hi - lo)


async def run(opts: Options) -> dict[str, Any]:
    cfg = config_mod.load({**os.environ, "CHUNKD_LOG_LEVEL": os.environ.get("CHUNKD_LOG_LEVEL", "warning"),
                           "CHUNKD_HTTP_ADDR": "off", "CHUNKD_PARTITIONS": str(opts.partitions),
                           "CHUNKD_PARTITION_CONCURRENCY": str(opts.concurrency),
                           "CHUNKD_CLAIM_BATCH": str(opts.batch),
                           "CHUNKD_COMPLETER_BATCH": str(opts.completer_batch),
                           "CHUNKD_MAINTENANCE_INTERVAL": "0.2"})
    from daemon.cli import resolve_dsn
    admin_dsn = resolve_dsn(cfg)
    dsn = await (existing_database(admin_dsn, opts.database) if opts.database else fresh_database(admin_dsn, BENCH_DB))
    registry = build_registry(cfg.jobs)
    store = await open_store(cfg, dsn)
    conn = await asyncpg.connect(dsn)
    statements = [0]

    def count(_: Any) -> None:
        statements[0] += 1

    params = SyntheticParams(chunks=opts.chunks, fanout=0, work_ms=opts.work_ms)
    iid: int | None = None
    if opts.workload == "drain":
        iid = await q.seed_backlog(conn, "chunkd.synthetic", 1, params, STEP, [Work(i) for i in range(opts.chunks)],
                                   opts.partitions, 5)
    facts = await q.server_facts(conn)
    if opts.workload == "jobs":
        from . import jobs_workload
        try:
            return await jobs_workload.run(opts, dsn, conn, facts)
        finally:
            await conn.close()
            await store.close()
    procs: list[subprocess.Popen[bytes]] = []
    node: Node | None = None
    timeline: list[tuple[float, int]] = []
    pg_cpu0, self_cpu0, xacts0 = _postgres_cpu(), _self_cpu(), await q.transactions(conn)
    async with anyio.create_task_group() as tg:
        if opts.daemons == 1:
            node = Node(cfg, registry, dsn, on_query=count)
            tg.start_soon(lambda: node.run(handle_signals=False))  # type: ignore[union-attr]
            await node.ready.wait()
        else:
            env = {**os.environ, "CHUNKD_DATABASE_URL": dsn, "CHUNKD_HTTP_ADDR": "off",
                   "CHUNKD_PARTITIONS": str(opts.partitions), "CHUNKD_PARTITION_CONCURRENCY": str(opts.concurrency),
                   "CHUNKD_CLAIM_BATCH": str(opts.batch), "CHUNKD_COMPLETER_BATCH": str(opts.completer_batch),
                   "CHUNKD_LOG_LEVEL": "warning", "CHUNKD_MAINTENANCE_INTERVAL": "0.2"}
            exe = str(Path(sys.executable).with_name("chunkd"))
            procs = [subprocess.Popen([exe, "run"], env=env) for _ in range(opts.daemons)]
        t0 = time.monotonic()
        if opts.workload == "e2e":
            res = await submit(store, None, registry, "chunkd.synthetic", msgspec.json.encode(params))
            iid = res.instance_id
            from channels.postgres import PostgresChannel
            ch = PostgresChannel(dsn, opts.partitions)
            await ch.publish(range(opts.partitions))
            await ch.close()
        assert iid is not None
        deadline = t0 + opts.timeout
        while True:
            done = await q.progress(conn, iid, STEP)
            timeline.append((time.monotonic() - t0, done))
            status = await conn.fetchval("SELECT status FROM chunkd_instance WHERE id = $1", iid)
            if done >= opts.chunks and (opts.workload == "drain" or status in ("COMPLETED", "FAILED")):
                break
            if time.monotonic() > deadline:
                break
            await anyio.sleep(0.05)
        elapsed = time.monotonic() - t0
        pg_cpu, self_cpu, xacts = _postgres_cpu() - pg_cpu0, _self_cpu() - self_cpu0, await q.transactions(conn) - xacts0
        daemon_cpu = self_cpu
        if procs:
            daemon_cpu = 0.0
            for p in procs:
                try:
                    t = psutil.Process(p.pid).cpu_times()
                    daemon_cpu += t.user + t.system
                except psutil.NoSuchProcess:
                    pass
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
        "chunks_per_second": round(sustained_rate(timeline, opts.chunks) or (completed / elapsed), 1),
        "chunks_per_second_overall": round(completed / elapsed, 1) if elapsed else None,
        "latency_ms": latency,
        "statements_per_chunk": round(statements[0] / completed, 4) if completed and node is not None else None,
        "transactions_per_chunk": round(xacts / completed, 4) if completed else None,
        "cpu_seconds_per_1000_chunks": {"daemon": round(daemon_cpu * per_k, 4) if per_k else None,
                                        "postgres": round(pg_cpu * per_k, 4) if per_k else None},
        "chunk_table_bytes": table_bytes,
        "settings": {"partitions": opts.partitions, "concurrency": opts.concurrency, "claim_batch": opts.batch,
                     "completer_batch": opts.completer_batch, "work_ms": opts.work_ms, **facts},
        "timeline": [[round(t, 3), n] for t, n in timeline],
    }
    if opts.compare:
        report["peers"] = await compare(admin_dsn, opts, report)
    if opts.plot:
        plot(report, opts.plot)
    return report


async def compare(admin_dsn: str, opts: Options, ours: dict[str, Any]) -> dict[str, Any]:
    """Each peer in its own process and database, same server, same run, same no-op work."""
    from . import peers
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


def report_table(report: dict[str, Any], plot_path: str | None) -> str:
    """The human-readable report: one table of figures, one of peers, and the plot's path."""
    from daemon.cli import table
    if report["workload"] == "jobs":
        from .jobs_workload import report_rows
        return table([{"metric": k, "value": "-" if v is None else str(v)} for k, v in report_rows(report)],
                     ["metric", "value"])
    lat = report["latency_ms"]
    cpu = report["cpu_seconds_per_1000_chunks"]
    rows = [
        ("workload", report["workload"]),
        ("chunks completed", f"{report['completed']:,} / {report['chunks']:,}"),
        ("seconds", report["seconds"]),
        ("chunks/s sustained", f"{report['chunks_per_second']:,.0f}"),
        ("chunks/s overall", f"{report['chunks_per_second_overall']:,.0f}"),
        ("claim-to-complete p50 / p95 / p99 ms", f"{lat['p50']} / {lat['p95']} / {lat['p99']}"),
        ("statements per chunk", report["statements_per_chunk"]),
        ("transactions per chunk", report["transactions_per_chunk"]),
        ("CPU s per 1000 chunks: daemon / postgres", f"{cpu['daemon']} / {cpu['postgres']}"),
        ("chunk table MB", f"{report['chunk_table_bytes'] / 1e6:.1f}"),
        ("synchronous_commit", report["settings"]["synchronous_commit"]),
    ]
    out = table([{"metric": k, "value": "-" if v is None else str(v)} for k, v in rows], ["metric", "value"])
    peers = report.get("peers", {})
    if peers:
        out += "\n\n" + table([
            {"peer": name, "version": p.get("version", "-"),
             "drain jobs/s": f"{p['jobs_per_second']:,.0f}" if "error" not in p else p["error"],
             "enqueue+drain /s": f"{p['enqueue_plus_drain_per_second']:,.0f}" if "error" not in p else "-",
             "jobs": p.get("jobs", "-"), "chunkd / peer": f"{p['ratio']}x" if "error" not in p else "-"}
            for name, p in peers.items()], ["peer", "version", "drain jobs/s", "enqueue+drain /s", "jobs", "chunkd / peer"])
    if plot_path:
        out += f"\n\nplot: {os.path.abspath(plot_path)}"
    return out


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.workload == "jobs" and (a.jobs < 1 or a.chunks_per_job < 0 or a.clients < 1 or (a.rate is not None and a.rate <= 0)):
        print("chunkd bench: --jobs and --clients must be >= 1, --chunks-per-job >= 0, --rate > 0", file=sys.stderr)
        return 2
    if a.chunks < 1 or a.daemons < 1 or a.partitions < 1 or a.concurrency < 1 or a.batch < 1:
        print("chunkd bench: --chunks, --daemons, --partitions, --concurrency and --batch must be >= 1", file=sys.stderr)
        return 2
    from daemon.logs import configure
    try:
        env_cfg = config_mod.load({**os.environ, "CHUNKD_LOG_LEVEL": os.environ.get("CHUNKD_LOG_LEVEL", "warning")})
    except config_mod.ConfigError as e:
        print(f"chunkd bench: {e}", file=sys.stderr)
        return 2
    configure(env_cfg.log_level, env_cfg.log_format)
    opts = Options(workload=a.workload, chunks=a.chunks, daemons=a.daemons, partitions=a.partitions,
                   concurrency=a.concurrency, batch=a.batch, completer_batch=a.completer_batch, work_ms=a.work_ms,
                   timeout=a.timeout, plot=a.plot, as_json=a.as_json, compare=a.compare,
                   peer_jobs={"procrastinate": min(a.chunks, a.procrastinate_jobs)},
                   database=a.database, jobs=a.jobs, chunks_per_job=a.chunks_per_job, clients=a.clients, rate=a.rate)
    try:
        report = anyio.run(run, opts)
    except config_mod.ConfigError as e:
        print(f"chunkd bench: {e}", file=sys.stderr)
        return 2
    if opts.as_json:
        print(json.dumps({k: v for k, v in report.items() if k != "timeline"} | {"timeline": report["timeline"]}))
    else:
        print(report_table(report, opts.plot))
    return 0 if report["completed"] >= report["chunks"] else 1
