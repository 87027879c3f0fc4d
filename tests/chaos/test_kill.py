"""kill -9 at random moments: nothing lost, nothing applied twice."""
from __future__ import annotations

import json
import random
import time

import anyio
import asyncpg
import pytest

from tests.conftest import submit_direct, wait_status

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

LEDGER = "CREATE TABLE test_ledger (chunk_id bigint NOT NULL, attempt int NOT NULL, n int NOT NULL, pid int NOT NULL)"
FAST_LEASES = {"CHUNKD_LEASE_SECONDS": "2", "CHUNKD_HEARTBEAT_SECONDS": "0.5"}


async def submit(dsn: str, chunks: int, work_ms: float) -> int:
    return await submit_direct(dsn, "test.ledger", {"chunks": chunks, "work_ms": work_ms})


async def check_exactly_once(conn: asyncpg.Connection, iid: int, n: int) -> None:
    row = await conn.fetchrow("SELECT status, report, error_message FROM chunkd_instance WHERE id = $1", iid)
    assert row["status"] == "COMPLETED", row["error_message"]
    dupes = await conn.fetch("SELECT chunk_id, count(*) FROM test_ledger GROUP BY chunk_id HAVING count(*) > 1")
    assert dupes == []
    assert await conn.fetchval("SELECT count(*) FROM test_ledger") == n
    assert await conn.fetchval("SELECT count(DISTINCT n) FROM test_ledger") == n
    completed = await conn.fetchval(
        "SELECT completed FROM chunkd_step_counter WHERE instance_id = $1 AND step = 1", iid)
    assert completed == n  # the instance counters equal the ledger
    assert json.loads(row["report"]) == {"count": n, "total": n * (n - 1) // 2}


async def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
        dsn: str, conn: asyncpg.Connection, spawn_daemon) -> None:  # type: ignore[no-untyped-def]
    n = 20_000
    await conn.execute(LEDGER)
    iid = await submit(dsn, n, work_ms=1)
    daemon = spawn_daemon(**FAST_LEASES)
    rng = random.Random()
    kills = 0
    deadline = time.monotonic() + 240
    for threshold in (0.12, 0.3, 0.5, 0.7):
        while await conn.fetchval("SELECT count(*) FROM test_ledger") < threshold * n:
            assert time.monotonic() < deadline, "no progress"
            await anyio.sleep(0.02)
        await anyio.sleep(rng.uniform(0, 0.3))
        daemon.kill()
        kills += 1
        daemon = spawn_daemon(**FAST_LEASES)
    assert kills >= 3
    await wait_status(conn, iid, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=240)
    await check_exactly_once(conn, iid, n)
    rescued = await conn.fetchval("SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND attempt > 1", iid)
    assert rescued > 0  # the kills really hit chunks in flight
    assert daemon.terminate() == 0


async def test_two_daemons_share_the_work_without_double_writes(
        dsn: str, conn: asyncpg.Connection, spawn_daemon) -> None:  # type: ignore[no-untyped-def]
    n = 10_000
    await conn.execute(LEDGER)
    a = spawn_daemon(CHUNKD_NODE_ID="a")
    b = spawn_daemon(CHUNKD_NODE_ID="b")
    iid = await submit(dsn, n, work_ms=2)
    await wait_status(conn, iid, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=240)
    await check_exactly_once(conn, iid, n)
    per_pid = await conn.fetch("SELECT pid, count(*) FROM test_ledger GROUP BY pid")
    assert {r["pid"] for r in per_pid} == {a.proc.pid, b.proc.pid}  # both did work
    assert a.terminate() == 0 and b.terminate() == 0


async def test_database_connections_killed_mid_job_twice(
        pg_server: str, dsn: str, conn: asyncpg.Connection, spawn_daemon) -> None:  # type: ignore[no-untyped-def]
    n = 10_000
    await conn.execute(LEDGER)
    iid = await submit(dsn, n, work_ms=1)
    daemon = spawn_daemon()
    db = dsn.rsplit("/", 1)[1]
    admin = await asyncpg.connect(pg_server)
    try:
        for threshold in (0.2, 0.6):
            while await conn.fetchval("SELECT count(*) FROM test_ledger") < threshold * n:
                await anyio.sleep(0.02)
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = $1 AND application_name = 'chunkd'", db)
    finally:
        await admin.close()
    await wait_status(conn, iid, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=120)
    await check_exactly_once(conn, iid, n)
    assert daemon.proc.poll() is None  # it reconnected rather than crash-looping
    assert daemon.terminate() == 0
