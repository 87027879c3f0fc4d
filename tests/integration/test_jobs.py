"""End-to-end job runs on a real Postgres, daemon in-process."""
from __future__ import annotations

import json
import time

import asyncpg
import pytest

from storage.states import C
from tests.conftest import wait_status
from tests.integration.helpers import running_node, submit_job

pytestmark = pytest.mark.anyio


async def counters(conn: asyncpg.Connection, iid: int) -> dict[int, asyncpg.Record]:
    rows = await conn.fetch("SELECT * FROM chunkd_step_counter WHERE instance_id = $1", iid)
    return {r["step"]: r for r in rows}


async def test_gated_three_steps_with_reduction_over_50k_chunks(dsn: str, conn: asyncpg.Connection) -> None:
    n = 50_000
    async with running_node(dsn, CHUNKD_PARTITION_CONCURRENCY="16", CHUNKD_CLAIM_BATCH="250") as node:
        res = await submit_job(node, "test.gated", chunks=n)
        await wait_status(conn, res.instance_id, {"COMPLETED", "FAILED"}, timeout=240)
    row = await conn.fetchrow("SELECT * FROM chunkd_instance WHERE id = $1", res.instance_id)
    assert row["status"] == "COMPLETED", row["error_message"]
    assert json.loads(row["report"]) == {"count": n, "total": sum(i * i for i in range(n))}
    assert row["progress"] == 1.0
    c = await counters(conn, res.instance_id)
    assert (c[0]["created"], c[0]["completed"]) == (1, 1)
    assert (c[1]["created"], c[1]["completed"]) == (n, n)
    assert (c[2]["created"], c[2]["completed"]) == (n, n)  # consumed by the reduction exactly once
    left = await conn.fetchval(f"SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND (state <> {C.COMPLETED:d} OR data IS NOT NULL)",
                               res.instance_id)
    assert left == 0  # every chunk COMPLETED and its data cleared


async def _trace(conn: asyncpg.Connection) -> None:
    await conn.execute("CREATE TABLE test_trace (step int, n int, at timestamptz)")


async def test_gated_job_finishes_a_step_before_the_next_starts(dsn: str, conn: asyncpg.Connection) -> None:
    await _trace(conn)
    async with running_node(dsn) as node:
        res = await submit_job(node, "test.gated4", chunks=2000, straggler_ms=500)
        assert await wait_status(conn, res.instance_id, {"COMPLETED", "FAILED"}, 120) == "COMPLETED"
    last_one = await conn.fetchval("SELECT max(at) FROM test_trace WHERE step = 1")
    first_two = await conn.fetchval("SELECT min(at) FROM test_trace WHERE step = 2")
    assert last_one < first_two
    assert await conn.fetchval("SELECT count(*) FROM test_trace") == 4000


async def test_non_gated_job_interleaves_steps(dsn: str, conn: asyncpg.Connection) -> None:
    await _trace(conn)
    async with running_node(dsn) as node:
        # one straggler in step one: a gated job would hold every step-two chunk behind it
        # (3 s: long enough that a loaded 2-core machine runs most of the rest meanwhile)
        res = await submit_job(node, "test.interleaved4", chunks=2000, straggler_ms=3000)
        assert await wait_status(conn, res.instance_id, {"COMPLETED", "FAILED"}, 120) == "COMPLETED"
    last_one = await conn.fetchval("SELECT max(at) FROM test_trace WHERE step = 1")
    first_two = await conn.fetchval("SELECT min(at) FROM test_trace WHERE step = 2")
    assert first_two < last_one
    before = await conn.fetchval("SELECT count(*) FROM test_trace WHERE step = 2 AND at < $1", last_one)
    assert before > 1000  # most of step two ran while step one was still going
    assert await conn.fetchval("SELECT count(*) FROM test_trace") == 4000


async def test_error_is_retried_with_backoff_then_fails_the_instance(dsn: str, conn: asyncpg.Connection) -> None:
    async with running_node(dsn) as node:
        started = time.monotonic()
        res = await submit_job(node, "test.flaky", chunks=3, bad=1)
        assert await wait_status(conn, res.instance_id, {"FAILED", "COMPLETED"}, 60) == "FAILED"
        elapsed = time.monotonic() - started
    row = await conn.fetchrow("SELECT * FROM chunkd_instance WHERE id = $1", res.instance_id)
    assert "boom on item 1" in row["error_message"] and "f_work" in row["error_message"]
    bad = await conn.fetchrow(f"SELECT * FROM chunkd_chunk WHERE instance_id = $1 AND step = 1 AND state = {C.FAILED:d}",
                              res.instance_id)
    assert bad["failures"] == 3 and bad["attempt"] == 3
    assert elapsed >= 0.3 + 0.6  # two backoffs (0.3 s, then 0.6 s) before the third attempt
    c = await counters(conn, res.instance_id)
    assert c[1]["errors"] == 3 and c[1]["failed"] == 1 and c[1]["completed"] == 2
    assert row["error_count"] == 3 or row["status"] == "FAILED"


async def test_permanent_error_fails_at_once(dsn: str, conn: asyncpg.Connection) -> None:
    async with running_node(dsn) as node:
        res = await submit_job(node, "test.flaky", chunks=3, bad=0, permanent=True)
        assert await wait_status(conn, res.instance_id, {"FAILED", "COMPLETED"}, 60) == "FAILED"
    bad = await conn.fetchrow(f"SELECT * FROM chunkd_chunk WHERE instance_id = $1 AND step = 1 AND state = {C.FAILED:d}",
                              res.instance_id)
    assert bad["attempt"] == 1 and "permanent error" in bad["error_message"]
    msg = await conn.fetchval("SELECT error_message FROM chunkd_instance WHERE id = $1", res.instance_id)
    assert "item 0 can never work" in msg


async def test_a_retry_that_succeeds_completes(dsn: str, conn: asyncpg.Connection) -> None:
    async with running_node(dsn) as node:
        res = await submit_job(node, "test.flaky", chunks=3, bad=2, max_fail_attempts=2)
        assert await wait_status(conn, res.instance_id, {"FAILED", "COMPLETED"}, 60) == "COMPLETED"
    c = await counters(conn, res.instance_id)
    assert c[1]["errors"] == 1 and c[1]["completed"] == 3


async def test_retry_later_is_not_an_error_and_warnings_roll_up(dsn: str, conn: asyncpg.Connection) -> None:
    async with running_node(dsn) as node:
        res = await submit_job(node, "test.poller", wait=0.2)
        assert await wait_status(conn, res.instance_id, {"FAILED", "COMPLETED"}, 60) == "COMPLETED"
        warnings = await node.engine.store.warnings(res.instance_id)  # type: ignore[union-attr]
    assert warnings == ["ran on attempt 3"]  # max_attempts=1, yet two poll-waits did not fail it
    c = await counters(conn, res.instance_id)
    assert c[1]["errors"] == 0


async def test_idempotency_key_makes_one_instance(dsn: str, conn: asyncpg.Connection) -> None:
    import anyio
    async with running_node(dsn) as node:
        results = []

        async def one() -> None:
            results.append(await submit_job(node, "chunkd.synthetic", key="same-key", chunks=5))
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(one)
    assert len({r.instance_id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert await conn.fetchval("SELECT count(*) FROM chunkd_instance") == 1


async def test_cancel_stops_claims_at_once(dsn: str, conn: asyncpg.Connection) -> None:
    async with running_node(dsn, CHUNKD_PARTITION_CONCURRENCY="2", CHUNKD_CLAIM_BATCH="2") as node:
        res = await submit_job(node, "chunkd.synthetic", chunks=2000, work_ms=50)
        while await conn.fetchval(f"SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND step = 1 AND state = {C.COMPLETED:d}",
                                  res.instance_id) < 5:
            import anyio
            await anyio.sleep(0.05)
        assert await node.engine.store.cancel_instance(res.instance_id)  # type: ignore[union-attr]
        assert await conn.fetchval(f"SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND state IN ({C.GATE_WAITING:d}, {C.READY:d}, {C.POLL_WAITING:d}, {C.ERRORED:d})",
                                   res.instance_id) == 0
        import anyio
        await anyio.sleep(1.0)  # in-flight chunks (at most slots + batch per partition) may finish
        done = await conn.fetchval(f"SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND state = {C.COMPLETED:d} AND step = 1",
                                   res.instance_id)
    assert await conn.fetchval("SELECT status FROM chunkd_instance WHERE id = $1", res.instance_id) == "CANCELLED"
    assert done < 200
    # children of chunks that finished after the cancel were born CANCELLED, never claimable
    assert await conn.fetchval(f"SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND state = {C.READY:d}",
                               res.instance_id) == 0
