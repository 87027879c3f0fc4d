"""Issue 22 row 5: a database hardened by its DBA (statement_timeout = 2s, lock_timeout = 1s,
idle_in_transaction_session_timeout = 5s, set with ALTER DATABASE: real server-side
timeouts). Work that runs into them counts attempts, backs off, says why while it retries,
and ends FAILED naming the server's reason; chunkd's own statements are not affected."""
from __future__ import annotations

import json
import time
import urllib.request

import anyio
import asyncpg
import pytest

from storage.states import C
from tests.conftest import submit_direct, wait_status

pytestmark = pytest.mark.anyio

TABLES = """
CREATE TABLE test_dba_effect (instance_id bigint, n int);
CREATE TABLE test_dba_reduced (instance_id bigint);
CREATE TABLE test_dba_slowcheck (x int);
CREATE TABLE test_dba_locked (x int);
"""


async def harden(conn: asyncpg.Connection) -> None:
    """The DBA's settings, for every later connection to this database (the daemon's included)."""
    db = await conn.fetchval("SELECT current_database()")
    for setting, value in (("statement_timeout", "2s"), ("lock_timeout", "1s"),
                           ("idle_in_transaction_session_timeout", "5s")):
        await conn.execute(f'ALTER DATABASE "{db}" SET {setting} = \'{value}\'')
    await conn.execute(TABLES)


def get_instance(url: str, iid: int) -> dict[str, object]:
    with urllib.request.urlopen(f"{url}/api/v1/instances/{iid}", timeout=10) as r:
        return json.loads(r.read())


async def test_reduction_killed_by_idle_timeout_fails_after_max_attempts(
        dsn: str, conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    """The reduction holds its transaction 7 s; the server ends it at 5 s, every try. The
    instance shows its attempts and the reason while it retries, then FAILS after the
    step's 3 attempts naming the idle-in-transaction timeout. A 3,000-chunk transactional
    job beside it completes exactly once under the same limits."""
    await harden(conn)
    api = api_daemon(CHUNKD_LOG_LEVEL="info")
    stuck = await submit_direct(dsn, "test.dba", {"chunks": 5, "hold_s": 7})
    normal = await submit_direct(dsn, "test.dba", {"chunks": 3000})
    await wait_status(conn, stuck, {"FINALIZE"}, 60)
    # while it retries: attempts and the server's reason on the instance, in the API
    seen: dict[str, object] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen = await anyio.to_thread.run_sync(get_instance, api.url, stuck)
        if seen["status"] == "FINALIZE" and seen.get("reduction_attempts", 0) >= 1:
            break
        await anyio.sleep(0.2)
    assert seen["status"] == "FINALIZE", seen
    assert seen.get("reduction_attempts", 0) >= 1, seen
    assert "idle-in-transaction timeout" in str(seen["last_error"]), seen
    await wait_status(conn, stuck, {"FAILED"}, 90)
    row = await conn.fetchrow("SELECT error_message, reduction_attempts FROM chunkd_instance WHERE id = $1", stuck)
    assert row["reduction_attempts"] == 3
    assert "idle-in-transaction timeout" in row["error_message"] and "attempt 3 of 3" in row["error_message"]
    assert await conn.fetchval("SELECT count(*) FROM test_dba_reduced WHERE instance_id = $1", stuck) == 0
    metrics = await anyio.to_thread.run_sync(lambda: urllib.request.urlopen(f"{api.url}/metrics", timeout=10).read())
    assert b'chunkd_reduction_failures_total{job="test.dba",reason="idle-in-transaction timeout"} 3.0' in metrics

    # the normal job beside it: every chunk's transactional write exactly once, one reduction
    assert await wait_status(conn, normal, {"COMPLETED", "FAILED"}, 240) == "COMPLETED"
    assert await conn.fetchval("SELECT count(*) FROM test_dba_effect WHERE instance_id = $1", normal) == 3000
    assert await conn.fetchval("SELECT count(DISTINCT n) FROM test_dba_effect WHERE instance_id = $1", normal) == 3000
    assert await conn.fetchval("SELECT count(*) FROM test_dba_reduced WHERE instance_id = $1", normal) == 1
    report = json.loads(await conn.fetchval("SELECT report FROM chunkd_instance WHERE id = $1", normal))
    assert report == {"count": 3000, "total": sum(range(3000))}
    assert api.daemon.terminate() == 0


async def test_transactional_step_over_statement_timeout_fails_with_reason(
        dsn: str, conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    """Chunk 0's transactional write runs 3 s, past the 2 s statement_timeout: each attempt
    counts as a failure (found at once, not retried blindly as a database outage), the
    instance says so while it retries, and the chunk, then the instance, end FAILED naming
    the statement timeout; its batch-mates commit exactly once."""
    await harden(conn)
    api = api_daemon(CHUNKD_LOG_LEVEL="info")
    d = api.daemon
    iid = await submit_direct(dsn, "test.dba", {"chunks": 20, "sleep_tx_s": 3})
    retrying: list[str] = []
    deadline = time.monotonic() + 100
    while (status := await conn.fetchval("SELECT status FROM chunkd_instance WHERE id = $1", iid)) != "FAILED":
        assert time.monotonic() < deadline and status != "COMPLETED", status
        if status == "ERRORED":
            seen = await anyio.to_thread.run_sync(get_instance, api.url, iid)
            if seen["status"] == "ERRORED" and seen.get("last_error"):
                retrying.append(str(seen["last_error"]))
        await anyio.sleep(0.1)
    assert retrying and "statement timeout" in retrying[-1], retrying
    chunk = await conn.fetchrow("SELECT failures, error_message FROM chunkd_chunk WHERE instance_id = $1 "
                                f"AND step = 1 AND state = {int(C.FAILED)}", iid)
    assert chunk is not None and chunk["failures"] == 3
    assert "writes failed: statement timeout" in chunk["error_message"]
    msg = await conn.fetchval("SELECT error_message FROM chunkd_instance WHERE id = $1", iid)
    assert "statement timeout" in msg
    rows = [r[0] for r in await conn.fetch("SELECT n FROM test_dba_effect WHERE instance_id = $1", iid)]
    assert sorted(rows) == list(range(1, 20))  # chunk 0's write never committed; the others once
    assert d.terminate() == 0


async def test_schedule_firing_past_statement_timeout_is_counted_and_skipped(
        conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    """A schedule whose job's params_check runs past the statement timeout at firing time:
    each failed attempt is counted (chunkd_schedule_fire_failures, reason named) and backed
    off, and after 5 the occurrence is skipped with an error, never retried for ever."""
    await harden(conn)
    api = api_daemon(CHUNKD_LOG_LEVEL="info")
    body = json.dumps({"id": "slow", "job": "test.dba", "parameters": {"slow_check": True},
                       "every_seconds": 1}).encode()
    req = urllib.request.Request(f"{api.url}/api/v1/schedules", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    await anyio.to_thread.run_sync(lambda: urllib.request.urlopen(req, timeout=10).read())
    await conn.execute("INSERT INTO test_dba_slowcheck VALUES (1)")  # from now on its check takes 3 s

    def skipped() -> bool:
        return "schedule occurrence skipped: it failed to fire too many times" in api.daemon.log_path.read_text()
    deadline = time.monotonic() + 90
    while not skipped():
        assert time.monotonic() < deadline, "the failing occurrence was never given up"
        await anyio.sleep(0.5)
    metrics = await anyio.to_thread.run_sync(lambda: urllib.request.urlopen(f"{api.url}/metrics", timeout=10).read())
    line = [m for m in metrics.decode().splitlines()
            if m.startswith('chunkd_schedule_fire_failures_total{reason="statement timeout",schedule="slow"}')]
    assert line and float(line[0].split()[-1]) >= 5, line
    fired = await conn.fetchval("SELECT count(*) FROM chunkd_instance WHERE job_name = 'test.dba'")
    log = api.daemon.log_path.read_text()
    assert log.count('"event": "firing a schedule failed; retrying after a backoff"') <= 20  # backed off
    assert api.daemon.terminate() == 0
    assert fired <= 2  # at most the occurrences before the table slowed the check


async def test_transactional_step_over_lock_timeout_fails_with_reason(
        dsn: str, conn: asyncpg.Connection, spawn_daemon) -> None:  # type: ignore[no-untyped-def]
    """Chunk 0's transactional write waits for a lock another session holds, past the 1 s
    lock_timeout: its attempts count, and it ends FAILED naming the lock timeout, while the
    rest of the job's writes commit once."""
    await harden(conn)
    async with conn.transaction():
        await conn.execute("LOCK TABLE test_dba_locked IN ACCESS EXCLUSIVE MODE")  # held throughout
        other = await asyncpg.connect(dsn)
        try:
            d = spawn_daemon()
            iid = await submit_direct(dsn, "test.dba", {"chunks": 10, "lock_tx": True})
            assert await wait_status(other, iid, {"FAILED", "COMPLETED"}, 100) == "FAILED"
            chunk = await other.fetchrow("SELECT failures, error_message FROM chunkd_chunk WHERE instance_id = $1 "
                                         f"AND step = 1 AND state = {int(C.FAILED)}", iid)
            rows = sorted(r[0] for r in await other.fetch("SELECT n FROM test_dba_effect WHERE instance_id = $1", iid))
        finally:
            await other.close()
    assert chunk is not None and chunk["failures"] == 3
    assert "writes failed: lock timeout: LockNotAvailableError" in chunk["error_message"], chunk["error_message"]
    assert rows == list(range(1, 10))
    assert d.terminate() == 0
