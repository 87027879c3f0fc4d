"""Smoke test of the benchmark harness: the report's fields, present and consistent."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import asyncpg

from tests.conftest import ROOT, daemon_env


def run_bench(dsn: str, *args: str) -> dict:  # type: ignore[type-arg]
    env = daemon_env(dsn)
    res = subprocess.run([str(Path(sys.executable).with_name("chunkd")), "bench", *args, "--json"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


def test_bench_drain_and_e2e_report_consistent_figures(dsn: str) -> None:
    for workload in ("drain", "e2e"):
        r = run_bench(dsn, "--workload", workload, "--chunks", "2000", "--batch", "100")
        assert r["workload"] == workload and r["channel"] == "postgres" and r["daemons"] == 1
        assert r["chunks"] == 2000 and r["completed"] == 2000  # completed = submitted
        assert r["chunks_per_second"] > 0 and r["seconds"] > 0
        assert set(r["latency_ms"]) == {"p50", "p95", "p99"}
        assert 0 <= r["latency_ms"]["p50"] <= r["latency_ms"]["p95"] <= r["latency_ms"]["p99"]
        assert r["statements_per_chunk"] > 0 and r["transactions_per_chunk"] > 0 and r["wal_bytes_per_chunk"] > 0
        assert r["cpu_seconds_per_1000_chunks"]["daemon"] > 0
        assert r["chunk_table_bytes"] > 0 and r["settings"]["synchronous_commit"] in ("on", "off", "local",
                                                                                      "remote_write", "remote_apply")
        assert r["timeline"][-1][1] == 2000
        # what it ran with, beside what `chunkd run` uses out of the box (issue 26)
        used = r["settings"]
        assert used["overrides"] == {"CHUNKD_CLAIM_BATCH": "100"} and used["claim_batch"] == 100
        assert used["effective"]["claim_batch"] == 100 and not used["effective"]["adaptive_claim"]
        assert used["effective"]["adaptive_concurrency"] == 1 == used["product_defaults"]["adaptive_claim"]


def test_bench_with_two_daemon_processes(dsn: str) -> None:
    r = run_bench(dsn, "--chunks", "3000", "--daemons", "2")
    assert r["daemons"] == 2 and r["completed"] == 3000 and r["statements_per_chunk"] is None


def test_bench_jobs_workload_over_http(dsn: str) -> None:
    """Many small jobs through the HTTP API, in the test's own database (--database: not
    dropped, the figures count only this run's instances)."""
    db = dsn.rsplit("/", 1)[1]
    r = run_bench(dsn, "--workload", "jobs", "--jobs", "200", "--chunks-per-job", "10", "--database", db)
    assert r["workload"] == "jobs" and r["database"] == db and r["jobs"] == 200 and r["chunks_per_job"] == 10
    assert r["instances_submitted"] == 200 and r["instances_completed"] == 200
    assert r["chunks"] == 2000 and r["completed"] == 2000 and r["chunks_completed"] == 2000
    assert r["http"]["errors"] == 0 and r["http"]["connections_opened"] <= 16  # keep-alive: one per client
    assert r["instances_per_second"] > 0 and r["chunks_per_second"] > 0 and r["submits_per_second"] > 0
    for key in ("submit_round_trip_ms", "instance_latency_ms", "chunk_latency_ms", "latency_ms"):
        p = r[key]
        assert set(p) == {"p50", "p95", "p99"}, key
        assert 0 <= p["p50"] <= p["p95"] <= p["p99"], (key, p)
    # a chunk's life lies within its instance's: claim->complete <= created->completed <= submit->COMPLETED
    assert r["latency_ms"]["p50"] <= r["chunk_latency_ms"]["p50"] <= r["instance_latency_ms"]["p50"]
    assert r["timeline"][-1][1] == 2000


def test_bench_jobs_open_loop(dsn: str) -> None:
    r = run_bench(dsn, "--workload", "jobs", "--jobs", "40", "--chunks-per-job", "5", "--rate", "100",
                  "--database", dsn.rsplit("/", 1)[1])
    assert r["rate"] == 100 and r["instances_completed"] == 40 and r["completed"] == 200
    assert r["submit_seconds"] >= 0.39  # submit i starts at i / rate: the schedule held
    assert r["settings"]["overrides"] == {} and r["settings"]["effective"] == r["settings"]["product_defaults"]


def test_keepalive_benchmark_reports_both_routes(dsn: str) -> None:
    """`python -m benchmarks.keepalive` (the README's keep-alive row): fields present and sane."""
    name = dsn.rsplit("/", 1)[1] + "_ka"
    try:
        res = subprocess.run([sys.executable, "-m", "benchmarks.keepalive", "--requests", "20", "--database", name],
                             env=daemon_env(dsn), cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        asyncio.run(_drop_database(dsn, name))
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(res.stdout)
    assert r["requests"] == 20
    for route in ("healthz_ms", "instance_ms"):
        assert 0 < r[route]["p50"] <= r[route]["p95"]


async def _drop_database(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def test_bench_soak_samples_each_window(dsn: str) -> None:
    """A short soak in the test's own database: one sample per window, each with its figures."""
    r = run_bench(dsn, "--workload", "soak", "--minutes", "0.1", "--sample-every", "2", "--rate", "10",
                  "--chunks-per-job", "5", "--database", dsn.rsplit("/", 1)[1])
    assert r["workload"] == "soak" and r["retention"] == "2m" and r["http"]["errors"] == 0
    assert r["submitted"] == 60 and len(r["samples"]) >= 3
    assert sum(s["submits"] for s in r["samples"]) == 60
    for s in r["samples"][:-1]:
        assert s["submits"] > 0 and 0 < s["submit_p50_ms"] <= s["submit_p99_ms"]
        assert s["lookup_pages"] > 0 and s["rss_mb"] > 0 and s["fds"] > 0 and s["pg_connections"] > 0
        assert {"chunkd_instance", "chunkd_chunk", "chunkd_step_counter"} <= set(s["tables"])
        assert s["tables"]["chunkd_chunk"]["table_bytes"] > 0 and "chunkd_chunk_instance" in s["indexes"]
