"""Each maintenance duty alone over the in-memory store (issue 25: "tests/unit/ covers the
pipeline and each maintenance duty without Postgres"): the scenarios of
tests/integration/test_duties.py, run once with a PassContext against a MemoryStore on a
clock the test moves, and judged by the state the duty left and the partitions it returns."""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import msgspec
import pytest

from actors.advancer import InstanceAdvancer
from actors.duties import GaugeExporter, LeaseRescuer, NodeReaper, PassContext, Rehomer, Republisher, RetryReleaser
from actors.job import Context, Job, Sink
from actors.reducer import Reducer
from actors.registry import Registry
from metrics import INSTANCES, LEASES_RESCUED, QUEUE_CHUNKS, QUEUE_OLDEST_READY
from storage.codec import encode
from storage.memory import MemoryStore
from storage.states import SETBACK_BY_ATTEMPTS, C, I
from storage.types import ClaimedChunk, LeaderTerm, NotLeader, Setback, Success

pytestmark = pytest.mark.anyio


class Clock:
    """The memory store's now(): moved by the test, never waited for."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class P(msgspec.Struct):
    n: int = 2


class Item(msgspec.Struct, array_like=True):
    i: int


def _jobs() -> tuple[Job, Job, Job]:
    """A gated three-step job, a job whose reduction sums its input, and one whose reduction
    always raises (its retries quick: the Reducer backs off on the real monotonic clock)."""
    gated = Job("test.gated", params=P, gated=True)

    @gated.first_step(emits=Item)
    async def split(params: P, ctx: Context, sink: Sink[Item]) -> None: ...

    @gated.step(consumes=Item, emits=Item)
    async def work(params: P, item: Item, ctx: Context, sink: Sink[Item]) -> None: ...

    @gated.step(consumes=Item)
    async def store(params: P, item: Item, ctx: Context) -> None: ...

    summed = Job("test.summed", params=P)

    @summed.first_step(emits=Item)
    async def spread(params: P, ctx: Context, sink: Sink[Item]) -> None: ...

    @summed.reduce(consumes=Item)
    async def total(params: P, items: AsyncIterator[Item], ctx: Context) -> dict[str, int]:
        return {"sum": sum([x.i async for x in items])}

    broken = Job("test.broken", params=P)

    @broken.first_step(emits=Item)
    async def spread2(params: P, ctx: Context, sink: Sink[Item]) -> None: ...

    @broken.reduce(consumes=Item, max_attempts=2, backoff_base=0.01, backoff_max=0.01)
    def explode(params: P, items: Iterator[Item], ctx: Context) -> Any:
        broken.calls += 1  # type: ignore[attr-defined]
        raise RuntimeError("the reducer broke")

    broken.calls = 0  # type: ignore[attr-defined]
    return gated, summed, broken


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> MemoryStore:
    return MemoryStore(2, clock)


@pytest.fixture
def jobs() -> tuple[Job, Job, Job]:
    return _jobs()


@pytest.fixture
def registry(jobs: tuple[Job, Job, Job]) -> Registry:
    reg = Registry()
    for job in jobs:
        reg.register(job)
    return reg


async def _instance(store: MemoryStore, job: Job | None = None) -> tuple[int, int]:
    """An instance (of `job`, or of a job no registry knows): its id and its first chunk's partition."""
    name, gated, attempts = (job.name, job.gated, job.steps[0].max_attempts) if job else ("test.any", False, 3)
    iid, created, part = await store.create_instance(name, 1, '{"n": 2}', gated, None, b"", attempts)
    assert created and part is not None
    return iid, part


async def _claim(store: MemoryStore, node: int = 1, lease: float = 30) -> list[ClaimedChunk]:
    return [c for p in range(store.partitions) for c in await store.claim(p, 1000, node, lease)]


def _done(c: ClaimedChunk, children: list[bytes] = (), gated: bool = False) -> Success:  # type: ignore[assignment]
    return Success(c.id, c.attempt, c.instance_id, c.step, list(children), gated, 3)


async def _term(store: MemoryStore) -> LeaderTerm:
    node = await store.register_node("test", 1)
    term = await store.acquire_leadership(node, 30)
    assert term is not None
    return LeaderTerm(node, term)


def _status(store: MemoryStore, iid: int) -> str:
    return str(store.instances[iid].row["status"])


# ------------------------------------------------------------------ the small duties
async def test_lease_rescuer_returns_an_expired_chunk_to_ready(store: MemoryStore, clock: Clock) -> None:
    iid, part = await _instance(store)
    (chunk,) = await _claim(store, lease=30)
    assert await LeaseRescuer(store).run(PassContext(None)) == set()  # the lease holds: nothing to do
    assert store.chunks[chunk.id].state == C.IN_PROGRESS
    clock.now += 31
    before = LEASES_RESCUED._value.get()
    assert await LeaseRescuer(store, batch=1).run(PassContext(None)) == {part}
    assert store.chunks[chunk.id].state == C.READY
    assert LEASES_RESCUED._value.get() == before + 1
    (again,) = await _claim(store)  # claimable again, the lost attempt counted
    assert (again.id, again.attempt, again.failures) == (chunk.id, 2, 1)


async def test_lease_rescuer_fails_a_chunk_at_its_max_attempts(store: MemoryStore, clock: Clock) -> None:
    iid, _ = await _instance(store)
    store.chunks[next(iter(store.chunks))].max_attempts = 1
    (chunk,) = await _claim(store, lease=30)
    clock.now += 31
    assert await LeaseRescuer(store).run(PassContext(None)) == set()  # FAILED: no partition to look at
    assert store.chunks[chunk.id].state == C.FAILED
    assert await store.last_error(iid) == (0, store.chunks[chunk.id].error_message, chunk.id, 1)
    assert "lease expired" in (store.chunks[chunk.id].error_message or "")


async def test_retry_releaser_makes_a_due_retry_ready(store: MemoryStore, clock: Clock, registry: Registry) -> None:
    iid, part = await _instance(store)
    (chunk,) = await _claim(store)
    res = await store.record_outcomes([], [Setback(chunk.id, chunk.attempt, iid, 0, SETBACK_BY_ATTEMPTS, True,
                                                   3600.0, "boom")])
    assert res.setback_states == {chunk.id: int(C.ERRORED)}
    assert await RetryReleaser(store, registry).run(PassContext(None)) == set()  # not due yet
    assert store.chunks[chunk.id].state == C.ERRORED
    clock.now += 3601
    assert await RetryReleaser(store, registry).run(PassContext(None)) == {part}
    assert store.chunks[chunk.id].state == C.READY
    assert [c.id for c in await _claim(store)] == [chunk.id]


async def test_rehomer_moves_ready_chunks_into_served_partitions(store: MemoryStore) -> None:
    iid, _ = await _instance(store)
    (chunk,) = store.chunks.values()
    chunk.partition = 7  # written by a daemon configured with 8 partitions
    assert await _claim(store) == []  # nobody here consumes partition 7
    moved = await Rehomer(store).run(PassContext(None))
    assert moved == {chunk.partition} and chunk.partition < 2
    assert [c.id for c in await _claim(store)] == [chunk.id]
    assert await Rehomer(store).run(PassContext(None)) == set()  # nothing left to move


async def test_node_reaper_forgets_dead_nodes_only(store: MemoryStore, clock: Clock) -> None:
    dead = await store.register_node("dead", 1)
    clock.now += 3600  # the dead one's heartbeat stopped an hour ago
    alive = await store.register_node("alive", 2)
    reaper = NodeReaper(store, forget_after=600)
    assert await reaper.run(PassContext(None)) == set()
    assert set(store.nodes) == {alive} and dead not in store.nodes
    clock.now += 3600  # now the other one is dead too, but the reaper looked just now
    await reaper.run(PassContext(None))  # within a tenth of the age of the last look: not yet
    assert set(store.nodes) == {alive}
    assert await NodeReaper(store, forget_after=600).run(PassContext(None)) == set()  # a fresh reaper is due
    assert store.nodes == {}


async def test_republisher_names_partitions_whose_head_waited_too_long(store: MemoryStore, clock: Clock) -> None:
    iid, part = await _instance(store)
    assert await Republisher(store, 2, after=60).run(PassContext(None)) == set()
    clock.now += 120
    assert await Republisher(store, 2, after=60).run(PassContext(None)) == {part}
    await _claim(store)  # nothing READY any more: nothing to republish
    assert await Republisher(store, 2, after=60).run(PassContext(None)) == set()


async def test_gauge_exporter_counts_instances_and_queues(store: MemoryStore, clock: Clock) -> None:
    await _instance(store)
    await _instance(store)
    iid, _ = await _instance(store)
    assert await store.cancel_instance(iid)
    clock.now += 7
    try:
        assert await GaugeExporter(store, 2).run(PassContext(None)) == set()
        assert INSTANCES.labels("QUEUED")._value.get() == 2
        assert INSTANCES.labels("CANCELLED")._value.get() == 1
        assert INSTANCES.labels("COMPLETED")._value.get() == 0
        ready = {p: QUEUE_CHUNKS.labels(str(p), "READY")._value.get() for p in (0, 1)}
        assert sum(ready.values()) == 2 and QUEUE_CHUNKS.labels("0", "IN_PROGRESS")._value.get() == 0
        assert max(QUEUE_OLDEST_READY.labels(str(p))._value.get() for p in (0, 1)) == 7
    finally:
        GaugeExporter.clear()
    assert INSTANCES.labels("QUEUED")._value.get() == 0  # cleared: not the leader's figures any more


# ------------------------------------------------------------------ the advancer and the reducer
async def _advance(advancer: InstanceAdvancer, ctx: PassContext, store: MemoryStore, iid: int,
                   until: set[str]) -> None:
    """Passes until the instance reaches one of `until` (a reduction runs in the background)."""
    with anyio.fail_after(30):
        while _status(store, iid) not in until:
            await advancer.run(ctx)
            await anyio.sleep(0.01)


async def test_the_advancer_opens_a_gate_only_over_completed_chunks_then_completes(
        store: MemoryStore, registry: Registry, jobs: tuple[Job, Job, Job]) -> None:
    gated = jobs[0]
    iid, _ = await _instance(store, gated)
    term = await _term(store)
    advancer = InstanceAdvancer(store, registry, Reducer(store, None, 1 << 20), interval=0.05)  # type: ignore[arg-type]
    ctx = PassContext(term)
    (first,) = await _claim(store)
    await store.mark_started([iid])  # as the engine does when it claims an instance's first chunk
    assert await advancer.run(ctx) == set() and store.instances[iid].row["current_step"] == 0  # step 0 runs
    await store.record_outcomes([_done(first, [encode(Item(1)), encode(Item(2))], gated=True)], [])
    assert {c.state for c in store.chunks.values() if c.step == 1} == {C.GATE_WAITING}
    opened = await advancer.run(ctx)
    row = store.instances[iid].row
    step1 = [c for c in store.chunks.values() if c.step == 1]
    assert (row["status"], row["current_step"]) == (I.IN_PROGRESS.value, 1)
    assert {c.state for c in step1} == {C.READY} and opened == {c.partition for c in step1}
    # one chunk of step 1 done, the other still READY: the gate of step 2 stays shut
    a = (await store.claim(step1[0].partition, 1, term.node_id, 30))[0]
    await store.record_outcomes([_done(a, [encode(Item(10))], gated=True)], [])
    assert store.chunks[step1[1].id].state == C.READY
    assert await advancer.run(ctx) == set()
    assert store.instances[iid].row["current_step"] == 1
    assert {c.state for c in store.chunks.values() if c.step == 2} == {C.GATE_WAITING}
    (b,) = await _claim(store)
    await store.record_outcomes([_done(b, [encode(Item(20))], gated=True)], [])
    opened = await advancer.run(ctx)
    step2 = [c for c in store.chunks.values() if c.step == 2]
    assert store.instances[iid].row["current_step"] == 2 and {c.state for c in step2} == {C.READY}
    assert opened == {c.partition for c in step2}
    assert _status(store, iid) == I.IN_PROGRESS.value
    for c in await _claim(store):
        await store.record_outcomes([_done(c)], [])
    await advancer.run(ctx)
    row = store.instances[iid].row
    assert (row["status"], row["progress"]) == (I.COMPLETED.value, 1.0)


async def test_the_advancer_finalizes_and_the_reducer_completes_with_its_report(
        store: MemoryStore, registry: Registry, jobs: tuple[Job, Job, Job]) -> None:
    summed = jobs[1]
    iid, _ = await _instance(store, summed)
    term = await _term(store)
    reducer = Reducer(store, None, 1 << 20)  # type: ignore[arg-type]
    advancer = InstanceAdvancer(store, registry, reducer, interval=0.05)
    async with anyio.create_task_group() as tg:
        ctx = PassContext(term, spawn=tg.start_soon)
        (first,) = await _claim(store)
        await store.record_outcomes([_done(first, [encode(Item(i)) for i in (1, 2, 3)], gated=True)], [])
        # the reduction's input waits behind its gate (no worker claims it) until the reducer takes it
        assert {c.state for c in store.chunks.values() if c.step == 1} == {C.GATE_WAITING}
        assert await _claim(store) == []
        await advancer.run(ctx)  # START, and (every work chunk done) FINALIZE in the same pass
        assert _status(store, iid) in {I.FINALIZE.value, I.COMPLETED.value}
        assert await _claim(store) == []
        await _advance(advancer, ctx, store, iid, {I.COMPLETED.value, I.FAILED.value})
    row = store.instances[iid].row
    assert row["status"] == I.COMPLETED.value and msgspec.json.decode(row["report"]) == {"sum": 6}
    assert {c.state for c in store.chunks.values()} == {C.COMPLETED}  # the input consumed once
    assert (await store.step_counts([iid]))[iid][1].completed == 3


async def test_small_reductions_of_one_pass_are_read_and_written_together(
        store: MemoryStore, registry: Registry, jobs: tuple[Job, Job, Job]) -> None:
    """Issue 26: 40 small jobs finalized in one pass: their inputs are read in one call and
    their reports written in a few transactions (a group commit), not one transaction of
    ~10 round trips each; every report is each instance's own."""
    summed = jobs[1]
    ids = [(await _instance(store, summed))[0] for _ in range(40)]
    term = await _term(store)
    calls = {"inputs": 0, "written": 0, "alone": 0}
    inputs, written, alone = store.reduction_inputs, store.complete_reductions, store.reduction

    async def count_inputs(*a: Any) -> Any:
        calls["inputs"] += 1
        return await inputs(*a)

    async def count_written(*a: Any) -> Any:
        calls["written"] += 1
        return await written(*a)

    def count_alone(*a: Any) -> Any:
        calls["alone"] += 1
        return alone(*a)
    store.reduction_inputs, store.complete_reductions, store.reduction = (  # type: ignore[method-assign]
        count_inputs, count_written, count_alone)
    reducer = Reducer(store, None, 1 << 20)  # type: ignore[arg-type]
    advancer = InstanceAdvancer(store, registry, reducer, interval=0.05)
    async with anyio.create_task_group() as tg:
        ctx = PassContext(term, spawn=tg.start_soon)
        for c in await _claim(store):
            await store.record_outcomes([_done(c, [encode(Item(c.instance_id)), encode(Item(1))], gated=True)], [])
        for iid in ids:
            await _advance(advancer, ctx, store, iid, {I.COMPLETED.value, I.FAILED.value})
    assert [msgspec.json.decode(store.instances[i].row["report"]) for i in ids] == [{"sum": i + 1} for i in ids]
    assert calls["alone"] == 0 and calls["inputs"] == 1 and 1 <= calls["written"] <= 4, calls


async def test_a_failing_reduction_is_retried_then_fails_the_instance(
        store: MemoryStore, registry: Registry, jobs: tuple[Job, Job, Job]) -> None:
    broken = jobs[2]
    iid, _ = await _instance(store, broken)
    term = await _term(store)
    reducer = Reducer(store, None, 1 << 20)  # type: ignore[arg-type]
    advancer = InstanceAdvancer(store, registry, reducer, interval=0.05)
    async with anyio.create_task_group() as tg:
        ctx = PassContext(term, spawn=tg.start_soon)
        (first,) = await _claim(store)
        await store.record_outcomes([_done(first, [encode(Item(1))], gated=True)], [])
        await advancer.run(ctx)  # START
        with anyio.fail_after(30):
            while store.instances[iid].row["reduction_attempts"] < 1:
                await advancer.run(ctx)
                await anyio.sleep(0.01)
        row = store.instances[iid].row
        # the first failure is counted and shown; the instance waits in FINALIZE for the retry
        assert row["status"] == I.FINALIZE.value
        assert "the reducer broke" in row["last_error"]
        await _advance(advancer, ctx, store, iid, {I.COMPLETED.value, I.FAILED.value})
    row = store.instances[iid].row
    assert row["status"] == I.FAILED.value and row["reduction_attempts"] == 2
    assert broken.calls == 2  # type: ignore[attr-defined]
    assert "reduction step 'explode' failed" in row["error_message"]
    assert "RuntimeError: the reducer broke (attempt 2 of 2)" in row["error_message"]
    assert row["report"] is None


async def test_the_advancer_fails_an_instance_whose_chunk_failed(
        store: MemoryStore, registry: Registry, jobs: tuple[Job, Job, Job]) -> None:
    iid, _ = await _instance(store, jobs[0])
    store.chunks[next(iter(store.chunks))].max_attempts = 1
    term = await _term(store)
    advancer = InstanceAdvancer(store, registry, Reducer(store, None, 1 << 20), interval=0.05)  # type: ignore[arg-type]
    (c,) = await _claim(store)
    await store.mark_started([iid])
    await store.record_outcomes([], [Setback(c.id, c.attempt, iid, 0, SETBACK_BY_ATTEMPTS, True, 0.0, "boom")])
    await advancer.run(PassContext(term))
    row = store.instances[iid].row
    assert row["status"] == I.FAILED.value and row["error_message"] == "step 'split' failed: boom"


async def test_the_advancer_writes_nothing_under_a_lost_term(
        store: MemoryStore, clock: Clock, registry: Registry, jobs: tuple[Job, Job, Job]) -> None:
    """The term fences every leader write: a term another node took over refuses them."""
    iid, _ = await _instance(store, jobs[0])
    stale = await _term(store)
    (chunk,) = await _claim(store, node=stale.node_id)
    await store.record_outcomes([_done(chunk, [encode(Item(1))], gated=True)], [])  # the advancer would START it
    clock.now += 31  # the lease ran out and another node took over
    other = await store.register_node("other", 2)
    assert await store.acquire_leadership(other, 30) == stale.term + 1
    advancer = InstanceAdvancer(store, registry, Reducer(store, None, 1 << 20), interval=0.05)  # type: ignore[arg-type]
    with pytest.raises(NotLeader):
        await advancer.run(PassContext(stale))
    row = store.instances[iid].row
    assert (row["status"], row["current_step"]) == (I.QUEUED.value, 0)
    await advancer.run(PassContext(LeaderTerm(other, stale.term + 1)))  # the new leader's pass applies it
    assert store.instances[iid].row["status"] == I.IN_PROGRESS.value


async def test_two_reports_flushed_together_are_each_answered_once() -> None:
    """Two writers wake to one queue: the first takes both reports, the second finds nothing
    to write (it once raised IndexError: a completed instance then counted a failed
    reduction, lost its on_complete, and could end FAILED)."""
    from actors.reducer import ReportWriter
    from storage.types import Finish, Reduced

    class Store:
        calls = 0

        async def complete_reductions(self, reduced: list[Reduced], leader: object) -> set[int]:
            Store.calls += 1
            await anyio.sleep(0.01)
            return {r.decided.instance_id for r in reduced}
    writer = ReportWriter(Store())  # type: ignore[arg-type]
    got: list[bool] = []
    term = LeaderTerm(1, 1)

    async def join(i: int) -> None:
        got.append(await writer.join((Reduced(Finish(i, 1, 1), 1, "{}"), term)))
    async with anyio.create_task_group() as tg:
        tg.start_soon(join, 1)
        await anyio.sleep(0.001)  # inside the first writer's wait for company
        tg.start_soon(join, 2)
    assert got == [True, True] and Store.calls == 1


async def test_a_reduction_over_the_small_bytes_is_streamed_alone(
        store: MemoryStore, registry: Registry, jobs: tuple[Job, Job, Job], monkeypatch: pytest.MonkeyPatch) -> None:
    import actors.reducer as reducer_module
    monkeypatch.setattr(reducer_module, "SMALL_BYTES", 4)
    summed = jobs[1]
    small, large = [(await _instance(store, summed))[0] for _ in range(2)]
    term = await _term(store)
    alone: list[int] = []
    single = store.reduction

    def count_alone(instance_id: int, *a: Any) -> Any:
        alone.append(instance_id)
        return single(instance_id, *a)
    store.reduction = count_alone  # type: ignore[method-assign]
    advancer = InstanceAdvancer(store, registry, Reducer(store, None, 1 << 20), interval=0.05)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        ctx = PassContext(term, spawn=tg.start_soon)
        for c in await _claim(store):
            items = [Item(1)] if c.instance_id == small else [Item(i) for i in range(1, 6)]
            await store.record_outcomes([_done(c, [encode(x) for x in items], gated=True)], [])
        for iid in (small, large):
            await _advance(advancer, ctx, store, iid, {I.COMPLETED.value, I.FAILED.value})
    assert [msgspec.json.decode(store.instances[i].row["report"]) for i in (small, large)] == [{"sum": 1}, {"sum": 15}]
    assert alone == [large]


async def test_many_groups_of_small_reductions_all_finish(
        store: MemoryStore, registry: Registry, jobs: tuple[Job, Job, Job], monkeypatch: pytest.MonkeyPatch) -> None:
    """More small reductions at once than may be in flight, in many groups: each group takes
    all its slots before the next takes any (groups each holding some slots and waiting for
    more once waited for each other forever: the bench's 20,000 instances sat in FINALIZE)."""
    import actors.reducer as reducer_module
    monkeypatch.setattr(reducer_module, "SMALL_IN_FLIGHT", 50)
    monkeypatch.setattr(reducer_module, "LOAD_GROUP", 20)
    summed = jobs[1]
    ids = [(await _instance(store, summed))[0] for _ in range(300)]
    term = await _term(store)
    advancer = InstanceAdvancer(store, registry, Reducer(store, None, 1 << 20), interval=0.05)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        ctx = PassContext(term, spawn=tg.start_soon)
        for c in await _claim(store):
            await store.record_outcomes([_done(c, [encode(Item(2))], gated=True)], [])
        with anyio.fail_after(30):
            while any(_status(store, i) != I.COMPLETED.value for i in ids):
                await advancer.run(ctx)
                await anyio.sleep(0.01)
