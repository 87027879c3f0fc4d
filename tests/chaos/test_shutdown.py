"""SIGTERM: stop claiming, finish or release in-flight chunks, flush, exit 0."""
from __future__ import annotations

import time

import anyio
import asyncpg
import pytest

from storage.states import C
from tests.chaos.test_kill import LEDGER, check_exactly_once, submit
from tests.conftest import wait_status

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]


async def _until(conn: asyncpg.Connection, query: str, at_least: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while await conn.fetchval(query) < at_least:
        assert time.monotonic() < deadline, query
        await anyio.sleep(0.02)


async def test_sigterm_finishes_in_flight_work_and_exits_zero(
        dsn: str, conn: asyncpg.Connection, spawn_daemon) -> None:  # type: ignore[no-untyped-def]
    n = 20_000
    await conn.execute(LEDGER)
    iid = await submit(dsn, n, work_ms=20)
    d = spawn_daemon(CHUNKD_SHUTDOWN_GRACE_SECONDS="10")
    await _until(conn, "SELECT count(*) FROM test_ledger", 2000)
    started = time.monotonic()
    assert d.terminate(timeout=15) == 0
    assert time.monotonic() - started < 10
    assert await conn.fetchval(f"SELECT count(*) FROM chunkd_chunk WHERE state = {C.IN_PROGRESS:d}") == 0
    assert await conn.fetchval("SELECT count(*) FROM chunkd_chunk WHERE failures > 0") == 0
    assert await conn.fetchval("SELECT count(*) FROM chunkd_node") == 0
    spawn_daemon()
    await wait_status(conn, iid, {"COMPLETED", "FAILED"}, timeout=120)
    await check_exactly_once(conn, iid, n)


async def test_steps_longer_than_the_grace_are_released_not_failed(
        dsn: str, conn: asyncpg.Connection, spawn_daemon) -> None:  # type: ignore[no-untyped-def]
    await conn.execute(LEDGER)
    iid = await submit(dsn, 50, work_ms=60_000)
    d = spawn_daemon(CHUNKD_SHUTDOWN_GRACE_SECONDS="1", CHUNKD_LOG_LEVEL="info")  # the shutdown's steps, if it fails
    await _until(conn, f"SELECT count(*) FROM chunkd_chunk WHERE state = {C.IN_PROGRESS:d} AND step = 1", 1)
    started = time.monotonic()
    assert d.terminate(timeout=15) == 0
    assert time.monotonic() - started < 5
    rows = await conn.fetch("SELECT state, failures, attempt FROM chunkd_chunk WHERE instance_id = $1 AND step = 1", iid)
    assert rows and all(r["state"] == 2 and r["failures"] == 0 for r in rows)  # READY again, no failure counted
    assert await conn.fetchval("SELECT count(*) FROM test_ledger") == 0


async def test_a_second_signal_exits_at_once(dsn: str, conn: asyncpg.Connection, spawn_daemon) -> None:  # type: ignore[no-untyped-def]
    import signal
    await conn.execute(LEDGER)
    await submit(dsn, 20, work_ms=60_000)
    d = spawn_daemon(CHUNKD_SHUTDOWN_GRACE_SECONDS="60")
    await _until(conn, f"SELECT count(*) FROM chunkd_chunk WHERE state = {C.IN_PROGRESS:d} AND step = 1", 1)
    # Claimed is not started: a SIGTERM before any step runs ends the daemon at once, exit 0
    # (nothing to wait for), which is not what this test is about. The steps last 60 s, so
    # one second after the claim they are surely running, however loaded the machine.
    await anyio.sleep(1.0)
    d.proc.send_signal(signal.SIGTERM)
    await anyio.sleep(0.5)
    started = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    code = d.proc.wait(10)
    assert code != 0 and time.monotonic() - started < 3  # did not wait out the 60 s grace


async def test_sigterm_with_steps_a_thread_runs_exits_within_the_grace_plus_the_bound(
        dsn: str, conn: asyncpg.Connection, spawn_daemon) -> None:  # type: ignore[no-untyped-def]
    """Issue 22 row 6: plain-function steps (run in threads, which nothing can interrupt) that
    sleep 70 s. SIGTERM: the daemon exits 0 within the grace plus SHUTDOWN_BOUND, having
    handed their chunks back (READY, no failure counted); a second daemon runs them, each once."""
    from daemon.wiring.node import SHUTDOWN_BOUND
    from tests.conftest import submit_direct
    n, grace = 10, 3.0
    await conn.execute(LEDGER)
    iid = await submit_direct(dsn, "test.syncsleep", {"chunks": n, "sleep_s": 70})
    d = spawn_daemon(CHUNKD_SHUTDOWN_GRACE_SECONDS=str(grace), CHUNKD_PARTITION_CONCURRENCY="4")
    await _until(conn, f"SELECT count(*) FROM chunkd_chunk WHERE state = {C.IN_PROGRESS:d} AND step = 1", n)
    await anyio.sleep(1.0)  # claimed is not started: give the threads time to be asleep in the steps
    started = time.monotonic()
    assert d.terminate(timeout=grace + SHUTDOWN_BOUND + 30) == 0
    took = time.monotonic() - started
    assert took < grace + SHUTDOWN_BOUND, f"exit took {took:.1f}s"
    rows = await conn.fetch("SELECT state, failures, lease_owner FROM chunkd_chunk WHERE instance_id = $1 AND step = 1",
                            iid)
    assert len(rows) == n
    assert all(r["state"] == C.READY and r["failures"] == 0 and r["lease_owner"] is None for r in rows), rows
    assert await conn.fetchval("SELECT count(*) FROM test_ledger") == 0
    second = spawn_daemon()
    await wait_status(conn, iid, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=120)
    assert await conn.fetchval("SELECT status FROM chunkd_instance WHERE id = $1", iid) == "COMPLETED"
    assert await conn.fetchval("SELECT count(DISTINCT n) FROM test_ledger") == n
    assert await conn.fetchval("SELECT count(*) FROM test_ledger") == n
    assert {r[0] for r in await conn.fetch("SELECT DISTINCT pid FROM test_ledger")} == {second.proc.pid}
    assert second.terminate() == 0


async def test_sigterm_during_a_plain_function_reduction_exits_within_the_grace_plus_the_bound(
        dsn: str, conn: asyncpg.Connection, spawn_daemon) -> None:  # type: ignore[no-untyped-def]
    """The same for a reduction run in a thread: it is abandoned, its transaction rolls back,
    and the instance stays in FINALIZE for the next leader."""
    from daemon.wiring.node import SHUTDOWN_BOUND
    from tests.conftest import submit_direct
    grace = 2.0
    iid = await submit_direct(dsn, "test.syncreduce", {"chunks": 100, "sleep_s": 70})
    d = spawn_daemon(CHUNKD_SHUTDOWN_GRACE_SECONDS=str(grace))
    await wait_status(conn, iid, {"FINALIZE"}, timeout=60)
    await anyio.sleep(1.0)  # the reducer is asleep in its thread
    started = time.monotonic()
    assert d.terminate(timeout=grace + SHUTDOWN_BOUND + 30) == 0
    assert time.monotonic() - started < grace + SHUTDOWN_BOUND
    assert await conn.fetchval("SELECT status FROM chunkd_instance WHERE id = $1", iid) == "FINALIZE"
    assert await conn.fetchval("SELECT count(*) FROM chunkd_node") == 0
