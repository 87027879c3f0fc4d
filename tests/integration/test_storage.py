"""Storage statements against a real Postgres: guards, fencing, idempotency."""
from __future__ import annotations

import itertools

import asyncpg
import pytest

from storage import sql
from storage.states import CHUNK_MOVES, C, chunk_allowed_from
from storage.store import Store
from storage.types import Setback, Success, TxOp

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(dsn: str):  # type: ignore[no-untyped-def]
    s = await Store.open(dsn, partitions=2)
    yield s
    await s.close()


async def _instance(store: Store) -> int:
    iid, created, _ = await store.create_instance("chunkd.synthetic", 1, '{"chunks": 1}', False, None, b"", 3)
    assert created
    return iid


async def _chunk_in(conn: asyncpg.Connection, iid: int, state: C) -> int:
    return await conn.fetchval(
        "INSERT INTO chunkd_chunk (instance_id, step, state, partition, max_attempts) VALUES ($1, 1, $2, 0, 3) RETURNING id",
        iid, int(state))


def _guarded_move(to: C) -> str:
    """A move to `to` guarded as storage/sql.py guards its statements: `state IN (...)` spelled
    from chunk_allowed_from, the table of legal moves (the runtime has no generic move)."""
    return (f"UPDATE chunkd_chunk SET state = {int(to)} WHERE id = $1"
            f" AND state IN ({', '.join(map(str, chunk_allowed_from(to)))}) RETURNING id")


async def test_every_move_is_guarded_by_the_table(store: Store, conn: asyncpg.Connection) -> None:
    iid = await _instance(store)
    for a, b in itertools.product(C, C):
        cid = await _chunk_in(conn, iid, a)
        moved = await conn.fetchval(_guarded_move(b), cid) is not None
        assert moved == ((a, b) in CHUNK_MOVES), (a, b)
        assert await conn.fetchval("SELECT state FROM chunkd_chunk WHERE id = $1", cid) == (int(b) if moved else int(a))


async def test_zombie_completion_is_refused_by_the_fencing_token(store: Store, conn: asyncpg.Connection) -> None:
    await conn.execute("CREATE TABLE ledger (chunk_id bigint, attempt int)")
    iid = await _instance(store)
    node = await store.register_node("test", 1)
    (first,) = [c for p in (0, 1) for c in await store.claim(p, 10, node, 30)]
    assert first.attempt == 1
    # the lease runs out (the worker froze); maintenance rescues and another worker claims
    await conn.execute("UPDATE chunkd_chunk SET lease_until = now() - interval '1 second' WHERE id = $1", first.id)
    rescued, failed, _, _ = await store.rescue_expired(100)
    assert (rescued, failed) == (1, 0)
    (second,) = [c for p in (0, 1) for c in await store.claim(p, 10, node, 30)]
    assert second.id == first.id and second.attempt == 2 and not second.suspect

    def done(attempt: int) -> Success:
        return Success(chunk_id=first.id, attempt=attempt, instance_id=iid, step=0, children=[b"\x91\x01"],
                       tx_ops=[TxOp("INSERT INTO ledger VALUES ($1, $2)", (first.id, attempt))])

    zombie = await store.record_outcomes([done(1)], [Setback(first.id, 1, iid, 0, int(C.ERRORED), True, 1.0, "late")])
    assert zombie.completed == 0 and zombie.refused == 2 and zombie.children == 0
    live = await store.record_outcomes([done(2)], [])
    assert live.completed == 1 and live.children == 1
    again = await store.record_outcomes([done(2)], [])  # a retried flush after a lost commit ack
    assert again.completed == 0 and again.refused == 1
    assert await conn.fetch("SELECT chunk_id, attempt FROM ledger") == [(first.id, 2)]
    assert await conn.fetchval("SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND step = 1", iid) == 1
    c = await conn.fetchrow("SELECT created, completed FROM chunkd_step_counter WHERE instance_id = $1 AND step = 0", iid)
    assert tuple(c) == (1, 1)


async def test_claim_sets_lease_and_skips_locked_rows(store: Store, conn: asyncpg.Connection) -> None:
    iid = await _instance(store)
    for _ in range(9):
        await conn.execute(
            "INSERT INTO chunkd_chunk (instance_id, step, state, partition, max_attempts) VALUES ($1, 1, 2, 0, 3)", iid)
    node = await store.register_node("test", 1)
    async with store.pool.acquire() as other, other.transaction():
        locked = await other.fetch(f"SELECT id FROM chunkd_chunk WHERE state = {C.READY:d} AND partition = 0 ORDER BY id LIMIT 3 FOR UPDATE")
        got = await store.claim(0, 100, node, 30)
    assert {c.id for c in got}.isdisjoint({r[0] for r in locked})
    leases = await conn.fetch(f"SELECT lease_owner, lease_until > now() AS live FROM chunkd_chunk WHERE state = {C.IN_PROGRESS:d}")
    assert leases and all(r["lease_owner"] == node and r["live"] for r in leases)


async def test_lease_expiry_past_max_attempts_fails_a_poison_chunk(store: Store, conn: asyncpg.Connection) -> None:
    iid = await _instance(store)
    await conn.execute("UPDATE chunkd_chunk SET max_attempts = 2 WHERE instance_id = $1", iid)
    node = await store.register_node("test", 1)
    for expect_failed in (0, 1):
        claimed = [c for p in (0, 1) for c in await store.claim(p, 10, node, 30, suspect=True)]
        assert len(claimed) == 1
        await store.mark_chunk_started(claimed[0].id, claimed[0].attempt)  # as the executor does once orphaned
        await conn.execute("UPDATE chunkd_chunk SET lease_until = now() - interval '1 second'")
        _, failed, _, _ = await store.rescue_expired(100)
        assert failed == expect_failed
    row = await conn.fetchrow("SELECT state, error_message FROM chunkd_chunk WHERE instance_id = $1", iid)
    assert row["state"] == C.FAILED and "worker died" in row["error_message"]


async def test_migrations_apply_once_when_daemons_start_together(pg_server: str) -> None:
    import uuid

    import anyio

    from storage.migrate import migrate, migration_files, pending
    from tests.conftest import _with_db
    name = f"chunkd_m_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(pg_server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    results: list[list[str]] = []
    try:
        async def one() -> None:
            c = await asyncpg.connect(_with_db(pg_server, name))
            try:
                results.append(await migrate(c))
            finally:
                await c.close()
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
        every = [n for _, n, _ in migration_files()]
        assert sorted(results, key=len) == [[], [], every]  # one applied them all, the others waited
        c = await asyncpg.connect(_with_db(pg_server, name))
        try:
            assert await pending(c) == []
        finally:
            await c.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_a_chunk_orphaned_twice_runs_only_in_the_suspect_slot(store: Store, conn: asyncpg.Connection) -> None:
    iid = await _instance(store)
    node = await store.register_node("test", 1)
    mate = await _chunk_in(conn, iid, C.READY)  # claimed beside it, never started

    async def die() -> None:
        await conn.execute(f"UPDATE chunkd_chunk SET lease_until = now() - interval '1 second' WHERE state = {C.IN_PROGRESS:d}")
        await store.rescue_expired(100)

    async def orphaned(cid: int) -> tuple[int, int]:
        r = await conn.fetchrow("SELECT orphaned, failures FROM chunkd_chunk WHERE id = $1", cid)
        return r["orphaned"], r["failures"]

    claimed = [c for p in (0, 1) for c in await store.claim(p, 10, node, 30)]
    (c,) = [c for c in claimed if c.id != mate]
    await die()  # first death: nobody knows what was running, both count it
    assert await orphaned(c.id) == (1, 1) and await orphaned(mate) == (1, 1)
    claimed = [c for p in (0, 1) for c in await store.claim(p, 10, node, 30)]
    assert {x.id for x in claimed} == {c.id, mate} and all(x.orphaned == 1 and not x.suspect for x in claimed)
    await store.mark_chunk_started(c.id, c.attempt + 1)  # the executor records only the one it starts
    await die()
    assert await orphaned(c.id) == (2, 2) and await orphaned(mate) == (1, 1)  # the waiting one is not blamed
    assert {x.id for p in (0, 1) for x in await store.claim(p, 10, node, 30)} == {mate}  # a suspect stays out
    (s,) = [x for p in (0, 1) for x in await store.claim(p, 10, node, 30, suspect=True)]
    assert s.id == c.id and s.suspect and s.attempt == 3
    # it came back with an ordinary error: no longer suspected of killing workers
    await store.record_outcomes([], [Setback(s.id, s.attempt, iid, 0, int(C.ERRORED), True, 0.0, "boom")])
    assert (await orphaned(s.id))[0] == 0


async def test_an_instance_moves_on_only_over_completed_chunks_of_its_run(store: Store, conn: asyncpg.Connection) -> None:
    """Rule 10 in SQL (issue 22 row 1): a decision to complete, finalize or open a gate is
    refused while any chunk of the earlier steps is not COMPLETED (by the counters written in
    the same transactions), or when the instance is in another run than the one decided for."""
    from storage.states import I
    from storage.types import Finish
    iid = await _instance(store)  # one first-step chunk, READY
    await conn.execute("UPDATE chunkd_instance SET status = 'IN_PROGRESS' WHERE id = $1", iid)
    assert not await store.finish_instance(iid, I.COMPLETED, decided=Finish(iid, 1, 32767))
    assert not await store.finalize([Finish(iid, 1, 1)])
    assert await store.advance_gates([Finish(iid, 1, 1)]) == {}
    await conn.execute(f"UPDATE chunkd_chunk SET state = {int(C.COMPLETED)} WHERE instance_id = $1", iid)
    await conn.execute("UPDATE chunkd_step_counter SET completed = created WHERE instance_id = $1", iid)
    await conn.execute("UPDATE chunkd_instance SET run = 2 WHERE id = $1", iid)  # a stop and a restart came between
    assert not await store.finish_instance(iid, I.COMPLETED, decided=Finish(iid, 1, 32767))
    assert await store.finish_instance(iid, I.COMPLETED, decided=Finish(iid, 2, 32767))


async def test_a_setback_of_an_ended_instance_is_cancelled_and_a_stale_release_is_handed_back(
        store: Store, conn: asyncpg.Connection) -> None:
    """Rule 11 (issue 22 rows 1 and 3): once the instance has ended, a chunk's error is
    recorded CANCELLED (never retried); a release as CANCELLED that finds the instance running
    again (restarted after the stop the daemon heard of) puts the chunk back READY."""
    iid = await _instance(store)
    node = await store.register_node("test", 1)
    (c,) = [c for p in (0, 1) for c in await store.claim(p, 10, node, 30)]
    assert await store.cancel_instance(iid)
    res = await store.record_outcomes([], [Setback(c.id, c.attempt, iid, 0, int(C.ERRORED), True, 0.0, "gave up")])
    assert res.setback_states == {c.id: C.CANCELLED}
    assert await conn.fetchval("SELECT failures FROM chunkd_chunk WHERE id = $1", c.id) == 0
    assert await store.restart_instance(iid, None)
    (again,) = [c for p in (0, 1) for c in await store.claim(p, 10, node, 30)]
    res = await store.record_outcomes([], [Setback(again.id, again.attempt, iid, 0, int(C.CANCELLED), False, 0.0, None)])
    assert res.setback_states == {again.id: C.READY} and res.ready_partitions
    assert await conn.fetchval("SELECT status FROM chunkd_instance WHERE id = $1", iid) == "IN_PROGRESS"
    assert await conn.fetchval("SELECT run FROM chunkd_instance WHERE id = $1", iid) == 2


async def test_a_completion_batch_in_any_order_is_fenced_chunk_by_chunk(store: Store) -> None:
    """CHUNK_COMPLETE finds each chunk's token by binary search over the sorted ids: results
    sent in reverse id order, every other one with a stale attempt, are each judged by their own."""
    iid = await _instance(store)
    async with store.pool.acquire() as conn:
        ids = [await _chunk_in(conn, iid, C.IN_PROGRESS) for _ in range(40)]
        await conn.execute("UPDATE chunkd_chunk SET attempt = 2 WHERE id = ANY($1::bigint[])", ids)
    results = [Success(cid, 2 if i % 2 else 1, iid, 1) for i, cid in enumerate(reversed(ids))]
    res = await store.record_outcomes(results, [])
    current = {s.chunk_id for s in results if s.attempt == 2}
    assert (res.completed, res.refused, res.accepted) == (20, 20, current)
    async with store.pool.acquire() as conn:
        done = {r[0] for r in await conn.fetch("SELECT id FROM chunkd_chunk WHERE state = $1", int(C.COMPLETED))}
    assert done == current


async def test_a_claims_first_plans_do_not_scan_the_whole_table(store: Store) -> None:
    """A connection's first five executions of a prepared statement are planned with its
    parameters; CHUNK_CLAIM's limit used to be an expression the planner could not evaluate
    (`$2 - (SELECT count(*) FROM suspect)`), so those plans guessed the batch's size and could
    hash a sequential scan of every chunk into the update (~60 ms per claim at a 100k backlog).
    The limit is the batch itself now, and the picked rows are found by index."""
    iid = await _instance(store)
    async with store.pool.acquire() as conn:
        await conn.execute("INSERT INTO chunkd_chunk (instance_id, step, state, partition, max_attempts, rank) "
                           "SELECT $1, 1, $2, g % 2, 3, g FROM generate_series(1, 200000) g", iid, int(C.READY))
        await conn.execute("ANALYZE chunkd_chunk")
        await conn.execute(f"PREPARE first_claim AS {sql.CHUNK_CLAIM}")
        # EXPLAIN without ANALYZE: the claim is planned as its first execution would be, not run
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN EXECUTE first_claim(0, 500, 1, 30, 0, false, 0)"))
        await conn.execute("DEALLOCATE first_claim")
    assert "Seq Scan on chunkd_chunk" not in plan, plan
    normal = plan[plan.index("CTE normal"):]
    assert "Limit  (cost=" in normal and " rows=500 " in normal.split("\n")[1], plan  # the batch's own size


async def test_a_claim_plan_made_on_an_empty_table_still_finds_the_picked_rows_by_key(store: Store) -> None:
    """A connection caches a generic plan of the claim after five runs. Made while the table
    was empty and never analyzed, the old claim's update joined the picked ids to the table
    through a bitmap scan of every READY chunk *per picked row* (a nested loop: 0.1-1.2 s per
    claim in the 200-chunk benchmark's slow runs, seen with auto_explain), for as long as the
    plan stayed cached. Its state check is now no proof for the READY index's predicate, so
    every plan finds the picked rows by primary key."""
    iid = await _instance(store)
    async with store.pool.acquire() as conn:
        await conn.execute("SET plan_cache_mode = force_generic_plan")  # the plan a busy connection caches
        await conn.execute(f"PREPARE cached_claim AS {sql.CHUNK_CLAIM}")
        for _ in range(6):  # made on the empty, never analyzed table
            await conn.fetch("EXECUTE cached_claim(0, 500, 1, 30, 0, false, 0)")
        await conn.execute("INSERT INTO chunkd_chunk (instance_id, step, state, partition, max_attempts, rank) "
                           "SELECT $1, 1, $2, 0, 3, g FROM generate_series(1, 20000) g", iid, int(C.READY))
        plan = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN (ANALYZE, BUFFERS) EXECUTE cached_claim(0, 500, 1, 30, 0, false, 0)"))
        await conn.execute("DEALLOCATE cached_claim")
        await conn.execute("RESET plan_cache_mode")
    claimed = plan[plan.index("CTE claimed"):plan.index("CTE clock")]
    assert "Index Scan using chunkd_chunk_pkey on chunkd_chunk k" in claimed, plan
    assert "Rows Removed by Join Filter" not in claimed, plan
