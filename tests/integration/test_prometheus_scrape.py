"""A real Prometheus scrapes a real daemon running a job (issue 18): the queries an operator's
board and alerts are built from come back through Prometheus' HTTP API, non-empty and
consistent with the job. Prometheus is Debian's `prometheus` binary (installed by
`make test` with promtool); config and TSDB live in the test's tmp directory."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
import yaml

from tests.conftest import free_port, submit_direct, wait_ready, wait_status

pytestmark = pytest.mark.anyio
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
T = TypeVar("T")

ALERTS = Path(__file__).resolve().parents[2] / "deploy/prometheus/alerts.yml"
CHUNKS = 300
WORK_MS = 60  # with 2 partitions x 1 step at a time: ~9 s of work, so the leader's 5 s queue
               # export lands while chunks wait, and many 1 s scrapes see the counters move


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """Starts Prometheus scraping 127.0.0.1:<port> every second; yields a starter returning its URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        if CI:
            pytest.fail("prometheus is missing in CI; `make test` installs the Debian package")
        pytest.skip("prometheus is not installed (Debian package prometheus; `make test` installs it)")
    procs: list[subprocess.Popen[bytes]] = []

    def start(target_port: int) -> str:
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(ALERTS)],  # the shipped alerts, evaluated on live data
            "scrape_configs": [{"job_name": "chunkd", "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}],
        }))
        port = free_port()
        log = open(tmp_path / "prometheus.log", "wb")
        procs.append(subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{port}"
        eventually(lambda: _get(url + "/-/ready") == 200 or None, 60, "Prometheus never became ready",
                   tmp_path / "prometheus.log")
        return url

    yield start
    for p in procs:
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _get(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except OSError:
        return None


def eventually(probe: Callable[[], T | None], timeout: float, message: str, log: Path | None = None) -> T:
    """Polls until probe() returns something other than None; the deadline is generous (a loaded
    2-core machine), the poll is short."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(message + (f"\n{log.read_text()[-3000:]}" if log and log.exists() else ""))
        time.sleep(0.25)


def query(url: str, promql: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}", timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


def values(url: str, promql: str) -> list[float]:
    return [float(s["value"][1]) for s in query(url, promql)]


async def test_prometheus_scrapes_a_daemon_running_a_job(dsn: str, conn: asyncpg.Connection, spawn_daemon,  # type: ignore[no-untyped-def]
                                                         prometheus) -> None:
    port = free_port()
    spawn_daemon(CHUNKD_HTTP_ADDR=f"127.0.0.1:{port}", CHUNKD_PARTITIONS="2", CHUNKD_PARTITION_CONCURRENCY="1")
    wait_ready(f"http://127.0.0.1:{port}", 60)
    prom = prometheus(port)
    eventually(lambda: values(prom, 'up{job="chunkd"}') == [1.0] or None, 60, "the daemon's target never came up")

    iid = await submit_direct(dsn, "chunkd.synthetic", {"chunks": CHUNKS, "work_ms": WORK_MS})
    assert await wait_status(conn, iid, {"COMPLETED", "FAILED"}, 120) == "COMPLETED"

    work = 'exported_job="chunkd.synthetic", step="work"'
    # The completed count Prometheus holds equals the job's chunks (the last scrape after the end).
    eventually(lambda: values(prom, f"sum(chunkd_chunks_completed_total{{{work}}})") == [float(CHUNKS)] or None,
               60, "Prometheus never saw every chunk completed")

    # A rate over the job's window: non-empty and positive, and its integral over the window
    # matches the job (increase() extrapolates, so within a generous band, never 0 or 10x).
    rate = values(prom, f"sum(rate(chunkd_chunks_completed_total{{{work}}}[1m]))")
    assert len(rate) == 1 and rate[0] > 0, rate
    [increase] = values(prom, f"sum(increase(chunkd_chunks_completed_total{{{work}}}[5m]))")
    assert 0.5 * CHUNKS <= increase <= 1.5 * CHUNKS, increase

    # A histogram quantile over the user's step time: non-empty, a number, and at least the
    # simulated work (the step sleeps WORK_MS) but far below a second.
    [p50] = values(prom, "histogram_quantile(0.5, sum by (le) (rate("
                         f"chunkd_step_duration_seconds_bucket{{{work}}}[5m])))")
    assert not math.isnan(p50) and WORK_MS / 1000 <= p50 < 1.0, p50
    [count] = values(prom, f"sum(chunkd_step_duration_seconds_count{{{work}}})")
    assert count == CHUNKS

    # The API latency histogram, fed by Prometheus' own scrapes of the /metrics route.
    [scrape_p95] = eventually(lambda: values(prom, 'histogram_quantile(0.95, sum by (le) (rate('
                                                   'chunkd_http_request_duration_seconds_bucket{route="/metrics"}[1m])))')
                              or None, 60, "no API latency for /metrics")
    assert not math.isnan(scrape_p95) and 0 < scrape_p95 < 10

    # The leader's queue gauges reach Prometheus with one series per partition and state,
    # empty now that the job is done; build info carries the installed version.
    depth = eventually(lambda: query(prom, "chunkd_queue_chunks") or None, 60, "no queue depth series")
    assert {(s["metric"]["partition"], s["metric"]["state"]) for s in depth} == {
        (p, s) for p in ("0", "1") for s in ("READY", "IN_PROGRESS", "ERRORED")}
    eventually(lambda: values(prom, "sum(chunkd_queue_chunks)") == [0.0] or None, 60, "the queue never drained")
    # ...and while the job ran they showed it: a READY backlog (at most the job's chunks),
    # chunks in progress (at most the 2 running steps plus the claimed batch), a head age.
    [ready_peak] = values(prom, 'max(max_over_time(chunkd_queue_chunks{state="READY"}[5m]))')
    assert 0 < ready_peak <= CHUNKS, ready_peak
    [running_peak] = values(prom, 'max(max_over_time(chunkd_queue_chunks{state="IN_PROGRESS"}[5m]))')
    assert 0 < running_peak <= CHUNKS, running_peak
    [age_peak] = values(prom, "max(max_over_time(chunkd_queue_oldest_ready_age_seconds[5m]))")
    assert age_peak > 0, age_peak
    from importlib.metadata import version
    [build] = query(prom, "chunkd_build_info")
    assert build["metric"]["version"] == version("chunkd")
    # The shipped alert rules evaluate on this live data without errors, and none fires
    # (not even pending) for a healthy run.
    def rules_evaluated() -> list[dict[str, Any]] | None:
        with urllib.request.urlopen(prom + "/api/v1/rules", timeout=10) as r:
            rules = [rule for g in json.load(r)["data"]["groups"] for rule in g["rules"]]
        return rules if rules and all(rule["health"] != "unknown" for rule in rules) else None
    rules = eventually(rules_evaluated, 60, "the alert rules were never evaluated")
    assert {r["name"] for r in rules} >= {"ChunkdChunksStuck", "ChunkdNoMaintenanceLeader", "ChunkdNotReady"}
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    assert [(r["name"], r["state"]) for r in rules if r["state"] != "inactive"] == []
