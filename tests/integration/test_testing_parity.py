"""Issue 25 row 1: a job author's in-memory test and the daemon run a job the same way.
One job (tests/samejobs.py: plain-function steps that block, a chunk that fails once then
succeeds, a plain-function reducer, an oversize chunk) runs through chunkd.testing.run_job
and through a real `chunkd run` on Postgres; their outcomes must be the same."""
from __future__ import annotations

import json
from collections import Counter
from typing import Any

import asyncpg
import pytest

from actors.instances import submit
from chunkd.testing import JobRun, run_job
from daemon.jobs import load_registry
from storage.store import Store
from tests.conftest import wait_status
from tests.samejobs import same

pytestmark = pytest.mark.anyio
MAX_CHUNK = 1 << 20


def _from_memory(run: JobRun) -> dict[str, Any]:
    steps: dict[str, Counter[str]] = {}
    for c in run.calls:
        if c.step == same.steps[-1].name:
            continue  # the reduction: its report is compared
        kind = c.outcome.split(":")[0]
        steps.setdefault(c.step, Counter())[kind] += 1
    return {"status": run.status, "error": run.error, "report": run.report,
            "steps": {s: {"completed": n["ok"], "runs": n["ok"] + n["error"] + n["failed"], "failed": n["failed"]}
                      for s, n in steps.items()}}


async def _from_daemon(dsn: str, spawn_daemon: Any, params: dict[str, Any]) -> dict[str, Any]:
    spawn_daemon(CHUNKD_JOBS="tests.samejobs", CHUNKD_MAX_CHUNK_BYTES=str(MAX_CHUNK))
    store = await Store.open(dsn, partitions=4, min_size=1, max_size=2)
    try:
        res = await submit(store, None, load_registry(["tests.samejobs"]), same.name, json.dumps(params))
    finally:
        await store.close()
    conn = await asyncpg.connect(dsn)
    try:
        status = await wait_status(conn, res.instance_id, {"COMPLETED", "FAILED", "CANCELLED"}, 90)
        row = await conn.fetchrow("SELECT report, error_message FROM chunkd_instance WHERE id = $1", res.instance_id)
        counters = await conn.fetch(
            "SELECT step, completed, failed FROM chunkd_step_counter WHERE instance_id = $1 ORDER BY step",
            res.instance_id)
        # attempts made: a chunk's attempt counts its claims (each ran its step once here)
        runs = dict(await conn.fetch("SELECT step, sum(attempt)::int FROM chunkd_chunk WHERE instance_id = $1 "
                                     "GROUP BY step", res.instance_id))
    finally:
        await conn.close()
    names = [s.name for s in same.steps]
    return {"status": status, "error": row["error_message"],
            "report": None if row["report"] is None else json.loads(row["report"]),
            "steps": {names[c["step"]]: {"completed": c["completed"], "runs": runs.get(c["step"], 0),
                                         "failed": c["failed"]}
                      for c in counters if names[c["step"]] != names[-1]}}


async def test_one_job_run_both_ways_has_one_outcome(dsn: str, spawn_daemon: Any) -> None:
    params = {"n": 4, "fail_once_at": 1, "sleep_ms": 30}
    memory = _from_memory(await run_job(same, params, max_chunk_bytes=MAX_CHUNK))
    daemon = await _from_daemon(dsn, spawn_daemon, params)
    assert daemon == memory
    # and what they agree on is the daemon's way: plain-function steps and the reducer ran in
    # a worker thread (none on the event loop), the failing chunk ran twice
    assert memory["report"] == {"sum": 60, "chunks": 4, "steps_on_loop": 0, "reducer_on_loop": False}
    assert memory["steps"]["work"] == {"completed": 4, "runs": 5, "failed": 0}


async def test_an_oversize_chunk_fails_with_the_same_message_both_ways(dsn: str, spawn_daemon: Any) -> None:
    params = {"n": 2, "big": True, "sleep_ms": 0}
    memory = _from_memory(await run_job(same, params, max_chunk_bytes=MAX_CHUNK, check=False))
    daemon = await _from_daemon(dsn, spawn_daemon, params)
    assert daemon == memory
    assert memory["status"] == "FAILED"
    assert "over the limit of 1,048,576 bytes" in memory["error"]
