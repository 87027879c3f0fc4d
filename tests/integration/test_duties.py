"""Each maintenance duty alone against a real Postgres (issue 25 row 4): built from only
what it uses, run once with a PassContext, and judged by the rows it moved and the
partitions it returns."""
from __future__ import annotations

import copy

import anyio
import msgspec
import asyncpg
import pytest

from actors.advancer import InstanceAdvancer
from actors.duties import (
    GaugeExporter,
    LeaseRescuer,
    NodeReaper,
    PassContext,
    Rehomer,
    Republisher,
    RetryReleaser,
)
from actors.reducer import Reducer
from daemon.jobs import load_registry
from metrics import INSTANCES, LEASES_RESCUED
from storage.reader import Reader
from storage.states import C
from storage.store import Store
from storage.types import Finish, LeaderTerm, NotLeader, Success

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(dsn: str):  # type: ignore[no-untyped-def]
    s = await Store.open(dsn, partitions=2)
    yield s
    await s.close()


async def _instance(store: Store, chunks: int = 1) -> tuple[int, int]:
    """A chunkd.synthetic instance: its id and its first chunk's partition."""
    iid, created, part = await store.create_instance("chunkd.synthetic", 1, f'{{"chunks": {chunks}}}', False,
                                                     None, b"", 3)
    assert created and part is not None
    return iid, part


async def _term(store: Store) -> LeaderTerm:
    node = await store.register_node("test", 1)
    term = await store.acquire_leadership(node, 30)
    assert term is not None
    return LeaderTerm(node, term)


async def test_lease_rescuer_returns_an_expired_chunk_to_ready(store: Store, conn: asyncpg.Connection) -> None:
    iid, part = await _instance(store)
    node = await store.register_node("test", 1)
    (chunk,) = [c for p in (0, 1) for c in await store.claim(p, 10, node, 30)]
    assert await LeaseRescuer(store).run(PassContext(None)) == set()  # the lease holds: nothing to do
    await conn.execute("UPDATE chunkd_chunk SET lease_until = now() - interval '1 second' WHERE id = $1", chunk.id)
    before = LEASES_RESCUED._value.get()
    assert await LeaseRescuer(store, batch=1).run(PassContext(None)) == {part}
    assert await conn.fetchval("SELECT state FROM chunkd_chunk WHERE id = $1", chunk.id) == C.READY
    assert LEASES_RESCUED._value.get() == before + 1


async def test_retry_releaser_makes_a_due_retry_ready(store: Store, conn: asyncpg.Connection) -> None:
    iid, part = await _instance(store)
    reg = load_registry([])
    await conn.execute(f"UPDATE chunkd_chunk SET state = {C.ERRORED:d}, next_run_at = now() + interval '1 hour' "
                       "WHERE instance_id = $1", iid)
    assert await RetryReleaser(store, reg).run(PassContext(None)) == set()  # not due yet
    await conn.execute("UPDATE chunkd_chunk SET next_run_at = now() - interval '1 second' WHERE instance_id = $1", iid)
    assert await RetryReleaser(store, reg).run(PassContext(None)) == {part}
    assert await conn.fetchval("SELECT state FROM chunkd_chunk WHERE instance_id = $1", iid) == C.READY


async def test_rehomer_moves_ready_chunks_into_served_partitions(store: Store, conn: asyncpg.Connection) -> None:
    iid, _ = await _instance(store)
    await conn.execute("UPDATE chunkd_chunk SET partition = 7 WHERE instance_id = $1", iid)  # a 8-partition writer
    moved = await Rehomer(store).run(PassContext(None))
    now = await conn.fetchval("SELECT partition FROM chunkd_chunk WHERE instance_id = $1", iid)
    assert moved == {now} and now < 2


async def test_node_reaper_forgets_dead_nodes_only(store: Store, conn: asyncpg.Connection) -> None:
    dead = await store.register_node("dead", 1)
    alive = await store.register_node("alive", 2)
    await conn.execute("UPDATE chunkd_node SET heartbeat_at = now() - interval '1 hour' WHERE id = $1", dead)
    reaper = NodeReaper(store, forget_after=600)
    assert await reaper.run(PassContext(None)) == set()
    assert {r[0] for r in await conn.fetch("SELECT id FROM chunkd_node")} == {alive}
    await conn.execute("UPDATE chunkd_node SET heartbeat_at = now() - interval '1 hour' WHERE id = $1", alive)
    await reaper.run(PassContext(None))  # within a tenth of the age of the last look: not yet
    assert await conn.fetchval("SELECT count(*) FROM chunkd_node") == 1


async def test_republisher_names_partitions_whose_head_waited_too_long(store: Store, conn: asyncpg.Connection) -> None:
    iid, part = await _instance(store)
    assert await Republisher(store, 2, after=60).run(PassContext(None)) == set()
    await conn.execute("UPDATE chunkd_chunk SET created_at = now() - interval '2 minutes' WHERE instance_id = $1", iid)
    assert await Republisher(store, 2, after=60).run(PassContext(None)) == {part}


async def test_gauge_exporter_counts_instances_by_status(store: Store) -> None:
    await _instance(store)
    await _instance(store)
    ctx = PassContext(None)
    await GaugeExporter(store, 2).run(ctx)
    assert INSTANCES.labels("QUEUED")._value.get() == 2
    assert INSTANCES.labels("COMPLETED")._value.get() == 0
    GaugeExporter.clear()


async def test_instance_advancer_and_reducer_take_an_instance_to_completed(store: Store, conn: asyncpg.Connection,
                                                                           dsn: str) -> None:
    """Its first chunk done (by hand, as the completer would record it, with no children):
    the advancer moves the instance on, opens the empty work step, FINALIZEs it and the
    Reducer completes it with its report."""
    iid, _ = await _instance(store, chunks=0)
    reg = load_registry([])
    reader = Reader(dsn, max_size=1)
    term = await _term(store)
    reducer = Reducer(store, reader, 1 << 20)
    advancer = InstanceAdvancer(store, reg, reducer, interval=0.05)
    try:
        async with anyio.create_task_group() as tg:
            (chunk,) = [c for p in (0, 1) for c in await store.claim(p, 10, term.node_id, 30)]
            await store.record_outcomes([Success(chunk.id, chunk.attempt, iid, 0, [], [])], [])
            with anyio.fail_after(30):
                while await conn.fetchval("SELECT status FROM chunkd_instance WHERE id = $1", iid) != "COMPLETED":
                    await advancer.run(PassContext(term, spawn=tg.start_soon))
                    await anyio.sleep(0.05)
        report = await conn.fetchval("SELECT report FROM chunkd_instance WHERE id = $1", iid)
        assert '"chunks": 0' in report
    finally:
        await reader.close()


async def test_instance_advancer_writes_nothing_under_a_lost_term(store: Store, conn: asyncpg.Connection) -> None:
    """The run fences of every leader write: a term another node took over refuses them."""
    iid, _ = await _instance(store)
    stale = await _term(store)
    (chunk,) = [c for p in (0, 1) for c in await store.claim(p, 10, stale.node_id, 30)]
    await store.record_outcomes([Success(chunk.id, chunk.attempt, iid, 0, [b"\x91\x01"], True)], [])  # START it
    await conn.execute("UPDATE chunkd_leader SET term = term + 1 WHERE role = 'maintenance'")  # another leader
    advancer = InstanceAdvancer(store, load_registry([]), Reducer(store, None, 1 << 20), interval=0.05)  # type: ignore[arg-type]
    with pytest.raises(NotLeader):
        await advancer.run(PassContext(stale))
    assert await conn.fetchval("SELECT status FROM chunkd_instance WHERE id = $1", iid) == "QUEUED"
    await conn.execute("UPDATE chunkd_leader SET term = term - 1 WHERE role = 'maintenance'")  # the term is back
    await advancer.run(PassContext(stale))
    assert await conn.fetchval("SELECT status FROM chunkd_instance WHERE id = $1", iid) == "IN_PROGRESS"


async def test_a_pass_looks_only_at_the_instances_that_changed(store: Store) -> None:
    """Issue 26: after a full sweep, a pass reads the instances whose counters changed since
    the last one, not every open instance; a full sweep comes again every `full_every`."""
    ids = [(await _instance(store))[0] for _ in range(5)]
    node = await store.register_node("test", 1)
    advancer = InstanceAdvancer(store, load_registry([]), Reducer(store, Reader(store.dsn), 1 << 20), 0.05,
                                full_every=3600)
    looked: list[list[int]] = []
    counts = store.step_counts

    async def spy(instance_ids):  # type: ignore[no-untyped-def]
        looked.append(sorted(instance_ids))
        return await counts(instance_ids)
    store.step_counts = spy  # type: ignore[method-assign]

    async def one_pass() -> list[int]:
        looked.clear()
        await advancer.run(PassContext(None))
        return looked[-1] if looked else []
    assert await one_pass() == sorted(ids)  # the first pass: a full sweep
    assert await one_pass() == []  # nothing changed: nothing read
    claimed = [c for p in (0, 1) for c in await store.claim(p, 10, node, 30)]
    chunk = next(c for c in claimed if c.instance_id == ids[2])
    await store.record_outcomes([Success(chunk.id, chunk.attempt, ids[2], 0, [b"\x91\x00"])], [])
    assert await one_pass() == [ids[2]]  # START (and its follow-up) for the one that moved
    assert (await store.get_instance(ids[2]))["status"] == "IN_PROGRESS"
    assert await one_pass() in ([], [ids[2]])  # at most a second look at what the last pass moved
    assert await one_pass() == []
    advancer.sweep_next()
    assert await one_pass() == sorted(ids)


async def test_a_reduction_decided_on_an_old_read_does_not_run_over_a_consumed_input(store: Store,
                                                                                    conn: asyncpg.Connection) -> None:
    """CI's chaos run: bulk-export COMPLETED with a manifest listing no file. A pass that read
    the instance in FINALIZE decided to reduce it again just as the first reduction completed
    it; the second loaded the input the first had consumed (none), ran the reducer over it,
    and the reducer's file (the manifest) was rewritten empty before its write was refused.
    A reduction now runs only for an instance still in FINALIZE, in its run, after its input
    was read. On the old code the reducer ran a second time."""
    iid, _ = await _instance(store)
    term = await _term(store)
    reg = load_registry([])
    job = reg.get("chunkd.synthetic", 1)
    calls: list[int] = []
    summarize = job.steps[-1].fn

    async def counting(params, items, ctx):  # type: ignore[no-untyped-def]
        calls.append(1)
        return await summarize(params, items, ctx)
    spied = copy.copy(job)
    spied.steps = [*job.steps[:-1], msgspec.structs.replace(job.steps[-1], fn=counting)]
    reader = Reader(store.dsn)
    reducer = Reducer(store, reader, 1 << 20)
    try:
        async with anyio.create_task_group() as tg:
            (chunk,) = [c for p in (0, 1) for c in await store.claim(p, 10, term.node_id, 30)]
            await store.record_outcomes([Success(chunk.id, chunk.attempt, iid, 0, [b"\x91\x00"], [])], [])
            (work,) = [c for p in (0, 1) for c in await store.claim(p, 10, term.node_id, 30)]
            await store.record_outcomes([Success(work.id, work.attempt, iid, 1, [], [])], [])
            await store.mark_started([iid])
            assert await store.finalize([Finish(iid, 1, 2)], term) == {iid}
            row = (await store.active_instances_among([iid]))[0]
            assert row.status == "FINALIZE"
            reducer.start_many([(row, spied, 0)], term, tg.start_soon)
            with anyio.fail_after(30):
                while reducer.reducing:
                    await anyio.sleep(0.01)
            assert calls == [1]
            assert await conn.fetchval("SELECT status FROM chunkd_instance WHERE id = $1", iid) == "COMPLETED"
            reducer.start_many([(row, spied, 0)], term, tg.start_soon)  # the old read: FINALIZE
            with anyio.fail_after(30):
                while reducer.reducing:
                    await anyio.sleep(0.01)
        assert calls == [1]
    finally:
        await reader.close()
