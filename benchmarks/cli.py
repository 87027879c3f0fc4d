"""`chunkd bench` (`python -m benchmarks`): parses the harness's options and renders its
report. The daemon's CLI does not import this: `chunkd bench` hands its arguments to
`python -m benchmarks` (daemon/cli/commands.py), so benchmarks/ stands on the daemon and
never the other way round."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import anyio

from benchmarks import soak
from benchmarks.harness import __doc__ as HARNESS_DOC
from benchmarks.harness import run
from benchmarks.options import BENCH_DB, Options
from benchmarks.settings import settings_rows
from daemon.cli.render import table
from daemon.wiring import config as config_mod
from daemon.wiring.logs import configure
from daemon.wiring.loop import event_loop_factory


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chunkd bench", description=HARNESS_DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=("drain", "e2e", "jobs", "soak"), default="drain")
    p.add_argument("--chunks", type=int, default=100_000)
    p.add_argument("--daemons", type=int, default=1, help="1 runs in-process; more run as `chunkd run` subprocesses")
    # Unset: what `chunkd run` uses (the environment's CHUNKD_* value, else the product default);
    # the report shows the settings in effect beside the product defaults.
    p.add_argument("--partitions", type=int, help="CHUNKD_PARTITIONS (default: as chunkd run)")
    p.add_argument("--concurrency", type=int,
                   help="CHUNKD_PARTITION_CONCURRENCY (default: as chunkd run, adapted when unset)")
    p.add_argument("--batch", type=int, help="CHUNKD_CLAIM_BATCH (default: as chunkd run, adapted when unset)")
    p.add_argument("--completer-batch", type=int, help="CHUNKD_COMPLETER_BATCH (default: as chunkd run)")
    p.add_argument("--work-ms", type=float, default=0.0, help="simulated work per chunk")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--database", metavar="NAME",
                   help=f"run in this database (created if missing, never dropped) instead of {BENCH_DB}")
    p.add_argument("--jobs", type=int, default=1000, help="jobs workload: instances to submit")
    p.add_argument("--chunks-per-job", type=int,
                   help="jobs and soak workloads: work chunks per instance (default 10; soak: 200)")
    p.add_argument("--clients", type=int, default=16, help="jobs workload: keep-alive HTTP clients (closed loop)")
    p.add_argument("--rate", type=float, help="jobs workload: open loop, submits started per second on schedule (soak: default 15)")
    p.add_argument("--bulk", type=int, default=0, metavar="N",
                   help="jobs workload: submit every job up front in bulk requests of N items, to one daemon with "
                        "the product's defaults; adds the maintenance pass duration")
    p.add_argument("--minutes", type=float, default=7.0, help="soak workload: how long the load is offered")
    p.add_argument("--sample-every", type=float, default=30.0, help="soak workload: seconds per sample row")
    p.add_argument("--progress", action="store_true", help="soak workload: print each sample to stderr as taken")
    p.add_argument("--plot", metavar="PNG", help="write a throughput-over-time chart (needs matplotlib)")
    p.add_argument("--json", dest="as_json", action="store_true", help="print one JSON object")
    p.add_argument("--compare", action="store_true",
                   help="also run pgqueuer and procrastinate on the same server (pip install 'chunkd[peers]')")
    p.add_argument("--procrastinate-jobs", type=int, default=10_000,
                   help="jobs for procrastinate in --compare (it drains ~400-900/s here)")
    return p


def report_rows(report: dict[str, Any]) -> list[tuple[str, Any]]:
    fmt = lambda d: f"{d['p50']} / {d['p95']} / {d['p99']}"  # noqa: E731
    return [
        ("workload", f"jobs: {report['jobs']} x {report['chunks_per_job']} chunks"
                     + (f", open loop at {report['rate']}/s" if report["rate"] else f", {report['clients']} clients")),
        ("instances completed", f"{report['instances_completed']:,} / {report['jobs']:,}"),
        ("chunks completed", f"{report['completed']:,} / {report['chunks']:,}"),
        ("seconds (first submit -> last COMPLETED)", report["seconds"]),
        ("instances/s", report["instances_per_second"]),
        ("submits/s", report["submits_per_second"]),
        ("chunks/s sustained", report["chunks_per_second"]),
        ("submit round trip p50 / p95 / p99 ms", fmt(report["submit_round_trip_ms"])),
        ("submit -> COMPLETED p50 / p95 / p99 ms", fmt(report["instance_latency_ms"])),
        ("chunk created -> completed p50 / p95 / p99 ms", fmt(report["chunk_latency_ms"])),
        ("chunk claim -> complete p50 / p95 / p99 ms", fmt(report["latency_ms"])),
        *([("bulk request", f"{report['bulk']} items")] if report.get("bulk") else []),
        ("maintenance passes / mean / p50 ms",
         "-" if not report["maintenance_pass_ms"] else "{passes} / {mean} / {p50}".format(**report["maintenance_pass_ms"])),
        ("advancing passes / mean / p50 ms",
         "-" if not report.get("advance_pass_ms") else "{passes} / {mean} / {p50}".format(**report["advance_pass_ms"])),
        ("HTTP connections / 429s / errors",
         f"{report['http']['connections_opened']} / {report['http']['refused_429']} / {report['http']['errors']}"),
        ("CPU ms per instance: daemon / postgres",
         "{daemon} / {postgres}".format(**report.get("cpu_ms_per_instance", {"daemon": "-", "postgres": "-"}))),
        ("daemon CPU s per 1000 chunks", report["cpu_seconds_per_1000_chunks"]["daemon"]),
        ("synchronous_commit", report["settings"]["synchronous_commit"]),
        *settings_rows(report["settings"]),
    ]


def report_table(report: dict[str, Any], plot_path: str | None) -> str:
    """The human-readable report: one table of figures, one of peers, and the plot's path."""
    if report["workload"] == "jobs":
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
        ("WAL bytes per chunk", report.get("wal_bytes_per_chunk")),
        ("CPU s per 1000 chunks: daemon / postgres", f"{cpu['daemon']} / {cpu['postgres']}"),
        ("chunk table MB", f"{report['chunk_table_bytes'] / 1e6:.1f}"),
        ("synchronous_commit", report["settings"]["synchronous_commit"]),
        *settings_rows(report["settings"]),
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


def soak_table(report: dict[str, Any]) -> str:
    rows, cols = soak.table_rows(report)
    head = (f"soak: {report['minutes']} min, {report['rate']} submits/s x {report['chunks_per_job']} chunks, "
            f"chunkd run with product defaults, CHUNKD_RETENTION={report['retention']}"
            + "".join(f", {k}={v}" for k, v in report.get("settings", {}).get("overridden_by_environment", {}).items())
            + "; "
            f"{report['submitted']:,} submitted, HTTP 429s {report['http']['refused_429']}, "
            f"errors {report['http']['errors']}")
    return head + "\n" + table(rows, cols)


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.chunks_per_job is None:
        a.chunks_per_job = 200 if a.workload == "soak" else 10
    if a.workload == "soak" and a.rate is None:
        a.rate = 15.0
    if a.workload == "jobs" and (a.jobs < 1 or a.chunks_per_job < 0 or a.clients < 1 or (a.rate is not None and a.rate <= 0)):
        print("chunkd bench: --jobs and --clients must be >= 1, --chunks-per-job >= 0, --rate > 0", file=sys.stderr)
        return 2
    if a.workload == "soak" and (a.minutes <= 0 or a.sample_every <= 0 or (a.rate is not None and a.rate <= 0)
                                 or a.chunks_per_job < 0):
        print("chunkd bench: --minutes, --sample-every and --rate must be > 0, --chunks-per-job >= 0", file=sys.stderr)
        return 2
    if a.chunks < 1 or a.daemons < 1 or any(v is not None and v < 1 for v in
                                             (a.partitions, a.concurrency, a.batch, a.completer_batch)):
        print("chunkd bench: --chunks, --daemons, --partitions, --concurrency, --batch and --completer-batch "
              "must be >= 1", file=sys.stderr)
        return 2
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
                   database=a.database, jobs=a.jobs, chunks_per_job=a.chunks_per_job, clients=a.clients, rate=a.rate,
                   bulk=a.bulk, minutes=a.minutes, sample_every=a.sample_every, progress=a.progress)
    try:
        # the drain runs the engine in this process: on the loop the daemon runs on
        report = anyio.run(run, opts, backend_options={"loop_factory": event_loop_factory()})
    except config_mod.ConfigError as e:
        print(f"chunkd bench: {e}", file=sys.stderr)
        return 2
    if opts.workload == "soak":
        print(json.dumps(report) if opts.as_json else soak_table(report))
        return 0 if report["samples"] and not report["http"]["errors"] else 1
    if opts.as_json:
        print(json.dumps({k: v for k, v in report.items() if k != "timeline"} | {"timeline": report["timeline"]}))
    else:
        print(report_table(report, opts.plot))
    return 0 if report["completed"] >= report["chunks"] else 1
