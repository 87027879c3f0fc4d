"""Issue 14's faults against real daemons on a real Postgres: a deposed leader cannot
apply a reduction twice, cancel stops the work everywhere, and statements cancelled by
the server are transient."""
from __future__ import annotations

import signal
import time

import anyio
import asyncpg
import pytest

from daemon.cli.client import ApiClient
from storage.states import C
from tests.chaos.channels import postgres_env, wait_for
from tests.conftest import free_port, submit_direct, wait_ready, wait_status

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

TABLES = """
CREATE TABLE test_started (instance_id bigint, n int, at timestamptz);
CREATE TABLE test_reduced (instance_id bigint, node int);
"""


async def leader_pid(conn: asyncpg.Connection) -> int | None:
    return await conn.fetchval("SELECT n.pid FROM chunkd_leader l JOIN chunkd_node n ON n.id = l.node_id "
                               "WHERE l.role = 'maintenance' AND l.lease_until > now()")


async def start_leader_then_follower(conn: asyncpg.Connection, spawn_daemon, **env: str):  # type: ignore[no-untyped-def]
    first = spawn_daemon(**postgres_env(CHUNKD_NODE_ID="first", **env))
    await wait_for(lambda: _is(conn, first.proc.pid), 30, "the first daemon leads")
    second = spawn_daemon(**postgres_env(CHUNKD_NODE_ID="second"))
    return first, second


async def _is(conn: asyncpg.Connection, pid: int) -> bool:
    return await leader_pid(conn) == pid


async def reductions(conn: asyncpg.Connection, iid: int) -> list[int]:
    return [r[0] for r in await conn.fetch("SELECT node FROM test_reduced WHERE instance_id = $1", iid)]


async def test_paused_leader_cannot_apply_its_reduction(dsn: str, conn: asyncpg.Connection, spawn_daemon) -> None:  # type: ignore[no-untyped-def]
    """SIGSTOP the leader mid-reduction past its lease; the other daemon takes over and
    finishes; SIGCONT: the first one's reduction (and its ctx.tx write) is rolled back."""
    await conn.execute(TABLES)
    first, second = await start_leader_then_follower(conn, spawn_daemon)
    iid = await submit_direct(dsn, "test.trust", {"chunks": 20, "reduce_ms": 4000})
    await wait_status(conn, iid, {"FINALIZE"}, 60)
    await anyio.sleep(1.0)  # the reduction is under way on the leader
    assert await leader_pid(conn) == first.proc.pid
    first.proc.send_signal(signal.SIGSTOP)
    try:
        await wait_status(conn, iid, {"COMPLETED", "FAILED"}, 60)  # the follower took over and finished
    finally:
        first.proc.send_signal(signal.SIGCONT)
    assert await reductions(conn, iid) == [second.proc.pid]
    # the first leader wakes with ~3 s of its reduction left: wait it out, then look again
    await wait_for(lambda: _logged(first, "reduction rolled back"), 60, "the deposed leader's reduction rolled back")
    assert await reductions(conn, iid) == [second.proc.pid]
    assert await conn.fetchval("SELECT status FROM chunkd_instance WHERE id = $1", iid) == "COMPLETED"
    assert first.terminate() == 0 and second.terminate() == 0


async def test_blocked_leader_loop_cannot_apply_its_reduction(dsn: str, conn: asyncpg.Connection, spawn_daemon) -> None:  # type: ignore[no-untyped-def]
    """No signal at all: the leader's reduction blocks its event loop for 12 s, past the
    5 s leader lease; the other daemon takes over and finishes; the first one's commit is refused."""
    await conn.execute(TABLES)
    first, second = await start_leader_then_follower(conn, spawn_daemon, BLOCK_HERE="1")
    iid = await submit_direct(dsn, "test.trust", {"chunks": 20, "block_reduce_s": 12, "block_env": "BLOCK_HERE"})
    await wait_status(conn, iid, {"COMPLETED", "FAILED"}, 60)
    assert await reductions(conn, iid) == [second.proc.pid]
    await wait_for(lambda: _logged(first, "reduction rolled back"), 60, "the blocked leader's reduction rolled back")
    assert await reductions(conn, iid) == [second.proc.pid]
    assert await conn.fetchval("SELECT status FROM chunkd_instance WHERE id = $1", iid) == "COMPLETED"
    assert first.terminate() == 0 and second.terminate() == 0


async def _logged(daemon, text: str) -> bool:  # type: ignore[no-untyped-def]
    return text in daemon.log_path.read_text()


async def test_cancel_during_reduction_leaves_no_write(dsn: str, conn: asyncpg.Connection, spawn_daemon) -> None:  # type: ignore[no-untyped-def]
    await conn.execute(TABLES)
    port = free_port()
    d = spawn_daemon(**postgres_env(CHUNKD_HTTP_ADDR=f"127.0.0.1:{port}"))
    wait_ready(f"http://127.0.0.1:{port}")
    iid = await submit_direct(dsn, "test.trust", {"chunks": 5, "reduce_ms": 3000})
    await wait_status(conn, iid, {"FINALIZE"}, 60)
    await anyio.sleep(0.5)
    ApiClient(f"http://127.0.0.1:{port}").call("POST", f"/api/v1/instances/{iid}/cancel")
    await wait_for(lambda: _logged(d, "reduction rolled back"), 30, "the reduction rolled back")
    assert await reductions(conn, iid) == []
    ApiClient(f"http://127.0.0.1:{port}").call("POST", f"/api/v1/instances/{iid}/restart")
    assert await wait_status(conn, iid, {"COMPLETED", "FAILED"}, 60) == "COMPLETED"
    assert len(await reductions(conn, iid)) == 1  # written once, by the run after the restart
    assert d.terminate() == 0


@pytest.mark.parametrize("force", [False, True])
async def test_no_chunk_starts_after_cancel(dsn: str, conn: asyncpg.Connection, spawn_daemon, force: bool) -> None:  # type: ignore[no-untyped-def]
    """Two daemons, 1-second steps, claim batch 100: from 1 s after cancel (or force-stop)
    returned, no chunk of the instance starts on any daemon (asserted from the database)."""
    await conn.execute(TABLES)
    port = free_port()
    env = dict(CHUNKD_CLAIM_BATCH="100", CHUNKD_PARTITIONS="2", CHUNKD_PARTITION_CONCURRENCY="8")
    spawn_daemon(**postgres_env(CHUNKD_HTTP_ADDR=f"127.0.0.1:{port}", **env))
    other = spawn_daemon(**postgres_env(**env))
    wait_ready(f"http://127.0.0.1:{port}")
    iid = await submit_direct(dsn, "test.trust", {"chunks": 500, "work_ms": 1000})

    async def both_running() -> bool:
        return await conn.fetchval(f"""SELECT count(DISTINCT lease_owner) FROM chunkd_chunk
                                      WHERE instance_id = $1 AND state = {C.IN_PROGRESS:d} AND step = 1""", iid) == 2
    await wait_for(both_running, 60, "both daemons hold chunks")
    await wait_for(lambda: _started_at_least(conn, iid, 40), 60, "steps running")
    path = f"/api/v1/instances/{iid}/stop?force=true" if force else f"/api/v1/instances/{iid}/cancel"
    ApiClient(f"http://127.0.0.1:{port}").call("POST", path)
    returned = await conn.fetchval("SELECT clock_timestamp()")

    async def settled() -> bool:
        return await conn.fetchval(f"SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND state IN ({C.READY:d}, {C.IN_PROGRESS:d})",
                                   iid) == 0
    await wait_for(settled, 60, "no chunk of the instance READY or IN_PROGRESS")
    await anyio.sleep(2)  # anything that would still start would have started by now
    late = await conn.fetchval("SELECT count(*) FROM test_started WHERE instance_id = $1 "
                               "AND at > $2::timestamptz + interval '1 second'", iid, returned)
    started = await conn.fetchval("SELECT count(*) FROM test_started WHERE instance_id = $1", iid)
    assert late == 0, f"{late} chunks started more than 1 s after cancel returned ({started} started in all)"
    assert started < 500
    states = dict(await conn.fetch("SELECT state, count(*) FROM chunkd_chunk WHERE instance_id = $1 AND step = 1 "
                                   "GROUP BY state", iid))
    assert set(states) <= {C.COMPLETED, C.CANCELLED} and states.get(C.CANCELLED, 0) >= 500 - started  # COMPLETED or CANCELLED only
    counters = await conn.fetchrow("SELECT created, completed, cancelled FROM chunkd_step_counter "
                                   "WHERE instance_id = $1 AND step = 1", iid)
    assert counters["completed"] == states.get(C.COMPLETED, 0) and counters["cancelled"] == states.get(C.CANCELLED, 0)
    assert other.proc.poll() is None


async def _started_at_least(conn: asyncpg.Connection, iid: int, n: int) -> bool:
    return await conn.fetchval("SELECT count(*) FROM test_started WHERE instance_id = $1", iid) >= n


async def test_cancelled_statements_are_transient(dsn: str, conn: asyncpg.Connection, spawn_daemon) -> None:  # type: ignore[no-untyped-def]
    """pg_cancel_backend on every running statement of chunkd, again and again (as a
    statement_timeout would, SQLSTATE 57014): both daemons stay up and the job completes
    exactly once."""
    await conn.execute(TABLES)
    a = spawn_daemon(**postgres_env())
    b = spawn_daemon(**postgres_env())
    n = 20_000
    iid = await submit_direct(dsn, "test.trust", {"chunks": n})
    await wait_for(lambda: _started_at_least(conn, iid, 200), 60, "work under way")
    cancelled = 0
    until = time.monotonic() + 15
    while time.monotonic() < until and await conn.fetchval(
            "SELECT status FROM chunkd_instance WHERE id = $1", iid) not in ("COMPLETED", "FAILED"):
        cancelled += await conn.fetchval(
            "SELECT count(*) FILTER (WHERE pg_cancel_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'active' "
            "AND application_name = 'chunkd'")
        await anyio.sleep(0.005)
    assert cancelled > 50, cancelled
    assert await wait_status(conn, iid, {"COMPLETED", "FAILED"}, 120) == "COMPLETED"
    assert a.proc.poll() is None and b.proc.poll() is None, "a daemon exited"
    report = await conn.fetchval("SELECT report->>'count' FROM chunkd_instance WHERE id = $1", iid)
    assert int(report) == n
    assert await conn.fetchval(f"SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND step = 1 AND state = {C.COMPLETED:d}",
                               iid) == n
    assert a.terminate() == 0 and b.terminate() == 0


async def test_cancel_interrupts_running_async_steps(dsn: str, conn: asyncpg.Connection, spawn_daemon) -> None:  # type: ignore[no-untyped-def]
    """Steps awaiting for a minute are interrupted at that await when the instance is
    cancelled: their chunks end CANCELLED within seconds, and the same executors then run
    the next job to completion (the interruption did not take a worker down with it)."""
    await conn.execute(TABLES)
    port = free_port()
    d = spawn_daemon(**postgres_env(CHUNKD_HTTP_ADDR=f"127.0.0.1:{port}", CHUNKD_PARTITIONS="1",
                                    CHUNKD_PARTITION_CONCURRENCY="4"))
    wait_ready(f"http://127.0.0.1:{port}")
    iid = await submit_direct(dsn, "test.trust", {"chunks": 4, "work_ms": 60_000})
    await wait_for(lambda: _started_at_least(conn, iid, 4), 60, "four steps running")
    ApiClient(f"http://127.0.0.1:{port}").call("POST", f"/api/v1/instances/{iid}/cancel")

    async def interrupted() -> bool:
        return await conn.fetchval("SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND step = 1 "
                                   f"AND state = {C.CANCELLED:d}", iid) == 4
    await wait_for(interrupted, 30, "the four running chunks CANCELLED long before their minute is up")
    assert "the step was cancelled" in (await conn.fetchval(
        "SELECT error_message FROM chunkd_chunk WHERE instance_id = $1 AND step = 1 LIMIT 1", iid) or "")
    after = await submit_direct(dsn, "test.trust", {"chunks": 8})
    assert await wait_status(conn, after, {"COMPLETED", "FAILED"}, 60) == "COMPLETED"
    assert d.terminate() == 0
