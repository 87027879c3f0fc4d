"""Every number means what its name says (issue 24 row 3) and an operator hears about
failures (row 4): progress, error counts, cancel reasons, claimed vs running, refused
results, a retried chunk's last error, and the log levels of failures."""
from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.cli.client import ApiClient
from storage.states import C
from tests.conftest import run_cli, wait_status

pytestmark = pytest.mark.anyio


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def total(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in m.items() if n == name and want <= set(ls))


def submit(c: ApiClient, job: str, **params: Any) -> int:
    return c.call("POST", "/api/v1/instances", body={"job": job, "parameters": params})["id"]


async def test_failed_instance_progress_and_errors_are_what_happened(
        conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    api = api_daemon()
    c = ApiClient(api.url)
    iid = submit(c, "test.flaky", chunks=30, bad=29, permanent=True)
    assert await wait_status(conn, iid, {"FAILED", "COMPLETED"}, 60) == "FAILED"
    inst = c.call("GET", f"/api/v1/instances/{iid}")
    steps = inst["steps"]
    completed, created = sum(s["completed"] for s in steps), sum(s["created"] for s in steps)
    assert steps[1]["failed"] == 1 and steps[1]["errors"] == 1
    # progress is the share of chunks that COMPLETED (the job has no reduction, weights 1)
    assert inst["progress"] == pytest.approx(completed / created, abs=1e-3), (inst["progress"], steps)
    assert inst["error_count"] == sum(s["errors"] for s in steps) == 1
    shown = run_cli("show", str(iid), env=api.cli_env()).stdout
    assert f"{100 * completed / created:5.1f}%" in shown, shown
    assert "error (1 step errors): step 'f_work' failed: permanent error" in shown, shown


async def test_cancel_is_a_reason_not_an_error(conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    api = api_daemon()
    c = ApiClient(api.url)
    iid = submit(c, "chunkd.synthetic", chunks=50, work_ms=400)
    await wait_status(conn, iid, {"IN_PROGRESS"}, 30)
    out = c.call("POST", f"/api/v1/instances/{iid}/cancel")
    assert out["status"] == "CANCELLED"
    assert out.get("cancel_reason") == "cancelled by request" and out["error_message"] is None
    shown = run_cli("show", str(iid), env=api.cli_env()).stdout
    assert "cancelled: cancelled by request" in shown and "error (" not in shown, shown


async def test_claimed_and_running_are_told_apart_and_refusals_say_why(
        conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    api = api_daemon(CHUNKD_PARTITIONS="2", CHUNKD_PARTITION_CONCURRENCY="2", CHUNKD_CLAIM_BATCH="20")
    c = ApiClient(api.url)
    iid = submit(c, "chunkd.synthetic", chunks=400, work_ms=1500)
    deadline = time.monotonic() + 30
    while True:
        m = scrape(api.url)
        running = total(m, "chunkd_steps_running")
        if running >= 2 and total(m, "chunkd_chunks_in_flight") > running:
            break
        assert time.monotonic() < deadline, {k: v for k, v in m.items() if "running" in k[0] or "flight" in k[0]}
        await anyio.sleep(0.2)
    # at most partitions x concurrency steps run; more chunks are claimed than run
    assert running <= 2 * 2
    assert {ls for (n, ls) in m if n == "chunkd_steps_running"} == {(("partition", "0"),), (("partition", "1"),)}
    shown = run_cli("show", str(iid), env=api.cli_env()).stdout
    assert "CLAIMED=" in shown and "IN_PROGRESS=" not in shown, shown

    # a force-stop refuses the running steps' late results: counted as cancelled, not as a lost lease
    c.call("POST", f"/api/v1/instances/{iid}/stop", query={"force": "true"})
    deadline = time.monotonic() + 30
    while total(m := scrape(api.url), "chunkd_chunks_refused_total", reason="cancelled") < 1:
        assert time.monotonic() < deadline, {k: v for k, v in m.items() if "refused" in k[0]}
        await anyio.sleep(0.2)
    assert total(m, "chunkd_chunks_refused_total", reason="lease_lost") == 0


async def test_a_retried_chunk_keeps_its_last_error(conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    api = api_daemon()
    c = ApiClient(api.url)
    iid = submit(c, "test.flaky", chunks=3, bad=1, max_fail_attempts=2)
    assert await wait_status(conn, iid, {"FAILED", "COMPLETED"}, 60) == "COMPLETED"
    inst = c.call("GET", f"/api/v1/instances/{iid}")
    assert inst["error_count"] == sum(s["errors"] for s in inst["steps"]) == 1  # also when it ends within a tick
    chunks = c.call("GET", f"/api/v1/instances/{iid}/chunks", query={"step": 1})["chunks"]
    retried = [ch for ch in chunks if ch["attempt"] == 2]
    assert len(retried) == 1 and retried[0]["status"] == "COMPLETED"
    assert retried[0]["error_message"] == "RuntimeError: boom on item 1" and retried[0]["error_attempt"] == 1
    assert all(ch["error_message"] is None for ch in chunks if ch["attempt"] == 1)
    errs = c.call("GET", f"/api/v1/instances/{iid}/chunks", query={"errors": "true"})["chunks"]
    assert [ch["id"] for ch in errs] == [retried[0]["id"]]


def log_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


async def test_failures_are_logged_loud_but_a_storm_is_bounded(
        conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    api = api_daemon(CHUNKD_LOG_LEVEL="warning", CHUNKD_LOG_FORMAT="json")
    c = ApiClient(api.url)
    one = submit(c, "test.flaky", chunks=3, bad=1, permanent=True)
    assert await wait_status(conn, one, {"FAILED", "COMPLETED"}, 60) == "FAILED"
    chunk = await conn.fetchrow("SELECT id, attempt FROM chunkd_chunk WHERE instance_id = $1 AND state = $2", one,
                                int(C.FAILED))
    storm = submit(c, "chunkd.synthetic", chunks=2000, fail_rate=1.0)
    assert await wait_status(conn, storm, {"FAILED", "COMPLETED"}, 120) == "FAILED"
    deadline = time.monotonic() + 20
    while True:  # every failing run of the storm is either a line or counted in a "suppressed" line
        # (read each time: steps still running when the instance failed may land errors after it)
        storm_errors = await conn.fetchval("SELECT sum(errors) FROM chunkd_step_counter WHERE instance_id = $1",
                                           storm)
        lines = log_lines(api.daemon.log_path)
        failed = [ln for ln in lines if ln.get("event") == "instance state change" and ln.get("status") == "FAILED"]
        chunk_lines = [ln for ln in lines if ln.get("event") in ("chunk failed", "chunk errored; it will be retried")]
        stormy = [ln for ln in chunk_lines if ln["instance_id"] == storm]
        suppressed = sum(ln["suppressed"] for ln in lines
                         if ln.get("event") == "chunk failures suppressed" and ln.get("job") == "chunkd.synthetic")
        if {ln.get("instance_id") for ln in failed} >= {one, storm} and len(stormy) + suppressed == storm_errors:
            break
        assert time.monotonic() < deadline, (len(stormy), suppressed, storm_errors, lines[-5:])
        await anyio.sleep(0.2)
    assert storm_errors > 100
    first = next(ln for ln in failed if ln["instance_id"] == one)
    assert first["level"] == "error" and first["job"] == "test.flaky" and first["step"] == "f_work"
    assert (first["chunk_id"], first["attempt"]) == (chunk["id"], chunk["attempt"])
    assert "permanent error" in first["error"]
    mine = [ln for ln in chunk_lines if ln["instance_id"] == one]
    assert mine and mine[0]["level"] == "warning" and mine[0]["chunk_id"] == chunk["id"]
    assert mine[0]["attempt"] == chunk["attempt"] and mine[0]["job"] == "test.flaky"
    # the storm: at most 5 lines per one-second window for the job (windows straddle clock seconds)
    per_second = Counter(ln["timestamp"][:19] for ln in stormy)
    assert max(per_second.values()) <= 10 and len(stormy) < storm_errors / 10, (per_second, storm_errors)
