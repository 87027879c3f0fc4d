"""Smoke test of the benchmark harness: the report's fields, present and consistent."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
        assert r["statements_per_chunk"] > 0 and r["transactions_per_chunk"] > 0
        assert r["cpu_seconds_per_1000_chunks"]["daemon"] > 0
        assert r["chunk_table_bytes"] > 0 and r["settings"]["synchronous_commit"] in ("on", "off", "local",
                                                                                      "remote_write", "remote_apply")
        assert r["timeline"][-1][1] == 2000


def test_bench_with_two_daemon_processes(dsn: str) -> None:
    r = run_bench(dsn, "--chunks", "3000", "--daemons", "2")
    assert r["daemons"] == 2 and r["completed"] == 3000 and r["statements_per_chunk"] is None
