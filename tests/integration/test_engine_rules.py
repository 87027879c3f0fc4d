"""The batch2 lessons and the engine's own rules, on a real Postgres."""
from __future__ import annotations

import json

import anyio
import asyncpg
import pytest

from actors.doorbell import Doorbell
from actors.maintenance import Maintenance
from channels.postgres import PostgresChannel
from daemon.jobs import load_registry
from storage.reader import Reader
from storage.states import C
from storage.store import Store
from tests import testjobs
from tests.conftest import wait_status
from tests.integration.helpers import running_node, submit_job, test_config

pytestmark = pytest.mark.anyio


async def test_gated_job_whose_step_emitted_nothing_still_completes(dsn: str, conn: asyncpg.Connection) -> None:
    await conn.execute("CREATE TABLE test_trace (step int, n int, at timestamptz)")
    async with running_node(dsn) as node:
        res = await submit_job(node, "test.gated4", chunks=0)
        assert await wait_status(conn, res.instance_id, {"COMPLETED", "FAILED"}, 30) == "COMPLETED"
    assert await conn.fetchval("SELECT progress FROM chunkd_instance WHERE id = $1", res.instance_id) == 1.0


async def test_an_instance_moves_on_as_its_step_closes_not_at_the_next_full_pass(dsn: str,
                                                                                  conn: asyncpg.Connection) -> None:
    """A full maintenance pass comes once a minute here. The completer rings maintenance's
    doorbell when a batch closes a step that moves an instance on, and the leader runs an
    advancing pass at once: a job with a reduction finalizes, reduces and completes, and a
    gated one opens each gate, long before the next full pass. On the old code each waited
    for the next full pass (60 s, past the deadline)."""
    await conn.execute("CREATE TABLE test_trace (step int, n int, at timestamptz)")
    async with running_node(dsn, CHUNKD_MAINTENANCE_INTERVAL="60") as node:
        reduced = await submit_job(node, "chunkd.synthetic", chunks=3)
        gated = await submit_job(node, "test.gated4", chunks=2)
        assert await wait_status(conn, reduced.instance_id, {"COMPLETED", "FAILED"}, 30) == "COMPLETED"
        assert await wait_status(conn, gated.instance_id, {"COMPLETED", "FAILED"}, 30) == "COMPLETED"
    report = json.loads(await conn.fetchval("SELECT report FROM chunkd_instance WHERE id = $1", reduced.instance_id))
    assert report["chunks"] == 3


async def test_a_followers_closed_step_rings_the_leader_on_another_daemon(dsn: str,
                                                                         conn: asyncpg.Connection) -> None:
    """The work runs on a daemon that never leads (CHUNKD_SCHEDULING=false); the leader is a
    maintenance alone, wired as daemon/wiring/node.py wires it (its own store, LISTEN/NOTIFY
    channel and doorbell). Full passes come once a minute: only the follower's ring over
    the channel (chunkd_advance) lets the instance finish in time. On the old code the ring
    stayed on the follower, and the instance waited for the leader's next full pass."""
    cfg = test_config(CHUNKD_MAINTENANCE_INTERVAL="60")
    store = await Store.open(dsn, partitions=cfg.partitions)
    channel = PostgresChannel(dsn, cfg.partitions)
    bell = Doorbell()
    channel.on_leader_rung(bell.ring)
    leader = Maintenance(cfg.actor_settings().maintenance, store, channel, load_registry(cfg.jobs),
                         Reader(dsn, deadlines=store.deadlines), await store.register_node("leader", 1),
                         doorbell=bell)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(channel.run)
            tg.start_soon(leader.run)
            with anyio.fail_after(30):
                while not leader.leader:
                    await anyio.sleep(0.05)
            async with running_node(dsn, CHUNKD_MAINTENANCE_INTERVAL="60", CHUNKD_SCHEDULING="false") as node:
                res = await submit_job(node, "chunkd.synthetic", chunks=3)
                assert await wait_status(conn, res.instance_id, {"COMPLETED", "FAILED"}, 30) == "COMPLETED"
            tg.cancel_scope.cancel()
    finally:
        await channel.close()
        await store.close()


async def test_lost_notification_is_republished_by_maintenance(dsn: str, conn: asyncpg.Connection) -> None:
    # consumers poll only every 60 s, so only maintenance's re-publish can wake them
    async with running_node(dsn, CHUNKD_POLL_INTERVAL="60", CHUNKD_REPUBLISH_AFTER="0.3") as node:
        await anyio.sleep(0.5)  # consumers have polled once and are waiting
        iid = await conn.fetchval("""
            INSERT INTO chunkd_instance (job_name, job_version, params, gated)
            VALUES ('chunkd.synthetic', 1, '{"chunks": 3}', false) RETURNING id""")
        await conn.execute("""
            INSERT INTO chunkd_chunk (instance_id, step, state, partition, max_attempts, data)
            VALUES ($1, 0, 2, 1, 3, ''::bytea)""", iid)
        await conn.execute("INSERT INTO chunkd_step_counter (instance_id, step, created) VALUES ($1, 0, 1)", iid)
        assert await wait_status(conn, iid, {"COMPLETED", "FAILED"}, 20) == "COMPLETED"
        assert node.engine is not None


async def test_instance_stuck_in_finalize_can_be_cancelled(dsn: str, conn: asyncpg.Connection) -> None:
    iid = await conn.fetchval("""
        INSERT INTO chunkd_instance (job_name, job_version, params, gated, status)
        VALUES ('nobody.has.this', 1, '{}', true, 'FINALIZE') RETURNING id""")
    async with running_node(dsn) as node:
        assert await node.engine.store.cancel_instance(iid)  # type: ignore[union-attr]
    assert await conn.fetchval("SELECT status FROM chunkd_instance WHERE id = $1", iid) == "CANCELLED"


async def test_job_concurrency_cap_and_completion_handler(dsn: str, conn: asyncpg.Connection) -> None:
    testjobs.RUNNING.update(now=0, max=0)
    testjobs.HANDLED.clear()
    async with running_node(dsn, CHUNKD_PARTITION_CONCURRENCY="8") as node:
        res = await submit_job(node, "test.capped", chunks=40, work_ms=20)
        assert await wait_status(conn, res.instance_id, {"COMPLETED", "FAILED"}, 60) == "COMPLETED"
        await anyio.sleep(0.3)
    assert testjobs.RUNNING["max"] == 2  # 4 partitions x 8 slots, yet never more than the job's cap
    assert (res.instance_id, "completed") in testjobs.HANDLED


async def test_env_overrides_the_job_cap(dsn: str, conn: asyncpg.Connection) -> None:
    testjobs.RUNNING.update(now=0, max=0)
    async with running_node(dsn, CHUNKD_JOB_CONCURRENCY="test.capped=5") as node:
        res = await submit_job(node, "test.capped", chunks=60, work_ms=30)
        assert await wait_status(conn, res.instance_id, {"COMPLETED", "FAILED"}, 60) == "COMPLETED"
    assert testjobs.RUNNING["max"] == 5


async def test_error_handler_runs_when_instance_fails(dsn: str, conn: asyncpg.Connection) -> None:
    testjobs.HANDLED.clear()
    async with running_node(dsn) as node:
        res = await submit_job(node, "test.flaky", chunks=2, bad=0, permanent=True)
        assert await wait_status(conn, res.instance_id, {"COMPLETED", "FAILED"}, 30) == "FAILED"
        await anyio.sleep(0.3)
    assert any(i == res.instance_id and "can never work" in str(m) for i, m in testjobs.HANDLED)


async def test_heartbeat_survives_a_step_that_blocks_the_event_loop(dsn: str, conn: asyncpg.Connection) -> None:
    # lease 2 s, the step blocks the loop for 4 s: the heartbeat thread must keep the lease
    async with running_node(dsn, CHUNKD_LEASE_SECONDS="2", CHUNKD_HEARTBEAT_SECONDS="0.3") as node:
        res = await submit_job(node, "test.blocker", block_s=4)
        assert await wait_status(conn, res.instance_id, {"COMPLETED", "FAILED"}, 60) == "COMPLETED"
    attempts = await conn.fetchval("SELECT max(attempt) FROM chunkd_chunk WHERE instance_id = $1 AND step = 1",
                                   res.instance_id)
    assert attempts == 1  # never rescued, never run twice


async def test_instances_stay_pinned_to_their_version(dsn: str, conn: asyncpg.Connection) -> None:
    async with running_node(dsn) as node:
        old = await submit_job_version(node, 1)
        new = await submit_job_version(node, None)
        for iid in (old, new):
            assert await wait_status(conn, iid, {"COMPLETED", "FAILED"}, 30) == "COMPLETED"
    reports = {iid: json.loads(await conn.fetchval("SELECT report FROM chunkd_instance WHERE id = $1", iid))
               for iid in (old, new)}
    assert reports == {old: {"version": 1}, new: {"version": 2}}


async def submit_job_version(node, version):  # type: ignore[no-untyped-def]
    from actors.instances import submit
    e = node.engine
    return (await submit(e.store, e.channel, e.registry, "test.versioned", "{}", version=version)).instance_id


async def test_a_failing_transactional_write_fails_only_its_chunk(dsn: str, conn: asyncpg.Connection) -> None:
    await conn.execute("CREATE TABLE test_unique (k int PRIMARY KEY); INSERT INTO test_unique VALUES (3)")
    async with running_node(dsn, CHUNKD_COMPLETER_FLUSH_MS="20") as node:
        res = await submit_job(node, "test.badwrite", chunks=200)
        assert await wait_status(conn, res.instance_id, {"COMPLETED", "FAILED"}, 30) == "FAILED"
        assert node.engine is not None and not node._stop.is_set()  # the daemon kept going
    bad = await conn.fetchrow("SELECT state, failures, error_message FROM chunkd_chunk WHERE instance_id = $1 "
                              f"AND step = 1 AND state = {C.FAILED:d}", res.instance_id)
    assert bad["failures"] == 2 and "transactional writes failed: UniqueViolationError" in bad["error_message"]
    assert await conn.fetchval("SELECT count(*) FROM test_unique") >= 150  # the other chunks' writes committed
    done = await conn.fetchval(f"SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND step = 1 AND state = {C.COMPLETED:d}",
                               res.instance_id)
    assert done == await conn.fetchval("SELECT count(*) FROM test_unique") - 1


async def test_local_tasks_run_on_every_daemon_even_without_scheduling(dsn: str) -> None:
    testjobs.LOCAL_RUNS.clear()
    async with running_node(dsn, CHUNKD_SCHEDULING="false"):
        await anyio.sleep(1.1)
    assert len(testjobs.LOCAL_RUNS) >= 4


async def test_undecodable_chunk_data_fails_only_that_chunk(dsn: str, conn: asyncpg.Connection) -> None:
    async with running_node(dsn, CHUNKD_POLL_INTERVAL="0.2") as node:
        # an instance whose step 1 has five good chunks and one that does not decode
        iid = await conn.fetchval("""
            INSERT INTO chunkd_instance (job_name, job_version, params, gated, status)
            VALUES ('test.flaky', 1, '{"chunks": 3, "bad": 99}', false, 'IN_PROGRESS') RETURNING id""")
        from storage.codec import encode
        from tests.testjobs import Item
        rows = [(iid, 1, 2, 0, 3, encode(Item(i))) for i in range(5)] + [(iid, 1, 2, 0, 3, b"\xc1garbage")]
        await conn.copy_records_to_table("chunkd_chunk", records=rows,
                                         columns=["instance_id", "step", "state", "partition", "max_attempts", "data"])
        await conn.execute("INSERT INTO chunkd_step_counter (instance_id, step, created, completed) "
                           "VALUES ($1, 0, 1, 1), ($1, 1, 6, 0)", iid)
        await node.engine.channel.publish([0])  # type: ignore[union-attr]
        assert await wait_status(conn, iid, {"COMPLETED", "FAILED"}, 30) == "FAILED"
    states = await conn.fetch("SELECT state, attempt, error_message FROM chunkd_chunk WHERE instance_id = $1 ORDER BY id", iid)
    assert [r["state"] for r in states[:5]].count(7) >= 1
    bad = states[5]
    assert bad["state"] == 6 and bad["attempt"] == 1 and "chunk data does not decode as Item" in bad["error_message"]


async def test_user_sql_leaves_no_session_state_on_the_pool(dsn: str, conn: asyncpg.Connection) -> None:
    """ctx.tx may SET or take session advisory locks: neither outlives the chunk's (or the
    reduction's) transaction on chunkd's connections, which the pool reuses without asyncpg's
    per-release reset (storage/store.py)."""
    async with running_node(dsn) as node:
        res = await submit_job(node, "test.sessionleak", chunks=20)
        assert await wait_status(conn, res.instance_id, {"COMPLETED", "FAILED"}, 30) == "COMPLETED"
        held = await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = ANY($1::oid[])",
                                   [testjobs.SESSION_LOCK_KEY, testjobs.SESSION_LOCK_KEY + 1])
        leaked = await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'chunkd-leaked'")
        assert (held, leaked) == (0, 0)


async def test_a_plain_function_reduction_reads_its_input_through_the_bridge(
        dsn: str, conn: asyncpg.Connection) -> None:
    async with running_node(dsn) as node:
        res = await submit_job(node, "test.syncreduce", chunks=1200)
        assert await wait_status(conn, res.instance_id, {"COMPLETED", "FAILED"}, 60) == "COMPLETED"
    report = await conn.fetchval("SELECT report FROM chunkd_instance WHERE id = $1", res.instance_id)
    assert json.loads(report) == {"count": 1200, "total": 1200 * 1199 // 2}
