"""The pipeline (actors/pipeline.py) without Postgres: its consumers, executors and completer
over the in-memory store and channel, with mailboxes of its own sizing."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

import anyio
import msgspec
import pytest

from actors.engine import Engine, JobSlots
from actors.job import Context, Job, Sink
from actors.pipeline import Pipeline, PipelineSettings
from actors.registry import Registry
from actors.supervisor import Supervisor
from channels.memory import MemoryChannel
from chunkd.testing import settings
from storage.memory import MemoryStore
from storage.states import C

pytestmark = pytest.mark.anyio


class P(msgspec.Struct):
    n: int = 50


class Item(msgspec.Struct, array_like=True):
    i: int


fan = Job("test.fan", params=P)


@fan.first_step(emits=Item)
async def spread(params: P, ctx: Context, sink: Sink[Item]) -> None:
    for i in range(params.n):
        sink.emit(Item(i))


@fan.step(consumes=Item)
def touch(params: P, chunk: Item, ctx: Context) -> None:  # a plain function: runs in a worker thread
    time.sleep(0.001)


def _pipeline(partitions: int, concurrency: int, batch: int) -> tuple[Pipeline, MemoryStore]:
    store = MemoryStore(partitions)
    registry = Registry()
    registry.register(fan)
    cfg = msgspec.structs.replace(settings(), claim=msgspec.structs.replace(
        settings().claim, partitions=partitions, partition_concurrency=concurrency, claim_batch=batch,
        poll_interval=0.05))
    engine = Engine(cfg, store, MemoryChannel(partitions), registry, 1, "")  # type: ignore[arg-type]
    ps = PipelineSettings(partitions=partitions, partition_concurrency=concurrency, claim_batch=batch,
                          completer_batch=10, shutdown_grace_seconds=5.0)
    return Pipeline(ps, engine, Supervisor()), store


def test_the_mailbox_holds_what_a_consumer_may_send_without_waiting() -> None:
    ps = PipelineSettings(partitions=2, partition_concurrency=4, claim_batch=100, completer_batch=500,
                          shutdown_grace_seconds=1.0)
    assert ps.mailbox_size == 104 and ps.completer_mailbox_size == 2000


async def test_the_pipeline_runs_every_chunk_and_stops_cleanly() -> None:
    pipeline, store = _pipeline(partitions=2, concurrency=2, batch=3)  # small: the send_nowait bound is tight
    await store.create_instance("test.fan", 1, '{"n": 50}', False, None, b"", 3)
    stop, ready = anyio.Event(), anyio.Event()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(pipeline.run, stop, ready, lambda cap: cap)
            await ready.wait()
            while sum(c.state == C.COMPLETED for c in store.chunks.values()) < 51:
                await anyio.sleep(0.01)
            stop.set()
    assert pipeline.stopping and pipeline.grace_ends_at is not None
    assert (await store.step_counts([1]))[1][1].completed == 50
    assert pipeline.mailbox_depths() == (0, 0)
    assert sum(pipeline.engine.inflight.running) == 0


async def test_starvation_is_only_a_kafka_matter() -> None:
    pipeline, _ = _pipeline(partitions=1, concurrency=1, batch=1)
    pipeline.engine.starved = True
    await pipeline.check_starved(assigned=0)   # the memory channel owns every partition
    assert not pipeline.starved


class SlowServer(MemoryStore):
    """A claim the server goes on executing (and commits) after its client stopped waiting,
    as Postgres does with a statement whose cancel request arrives late."""

    def __init__(self, partitions: int, server: anyio.abc.TaskGroup) -> None:
        super().__init__(partitions)
        self.server, self.executing = server, 0

    async def claim(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        answer: list = []
        done = anyio.Event()

        async def execute() -> None:
            self.executing += 1
            await anyio.sleep(0.3)
            answer.append(await MemoryStore.claim(self, *args, **kwargs))
            self.executing -= 1
            done.set()
        self.server.start_soon(execute)
        await done.wait()
        return answer[0]


async def test_a_stop_waits_for_the_claims_in_flight_so_nothing_stays_held() -> None:
    """CI saw chunks left IN_PROGRESS by a daemon that exited 0 after a SIGTERM
    (test_steps_longer_than_the_grace_are_released_not_failed): a claim cancelled in flight
    committed after the shutdown had handed back what the node held. Fails on the old code:
    the pipeline returned while the claim still executed, and its chunks stayed held."""
    with anyio.fail_after(30):
        async with anyio.create_task_group() as server:
            pipeline, _ = _pipeline(partitions=2, concurrency=2, batch=3)
            store = SlowServer(2, server)
            pipeline.engine.store = store  # type: ignore[assignment]
            await store.create_instance("test.fan", 1, '{"n": 50}', False, None, b"", 3)
            stop, ready = anyio.Event(), anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(pipeline.run, stop, ready, lambda cap: cap)
                await ready.wait()
                while not any(c.state == C.COMPLETED for c in store.chunks.values()) or not store.executing:
                    await anyio.sleep(0.01)  # the first step ran; a claim of its children is executing
                stop.set()
            # The stop waited for the claim's answer: what the node holds is settled when
            # Node hands it back (Store.release_owned) right after the pipeline returns.
            assert store.executing == 0


async def test_a_suspects_end_wakes_whoever_waits_to_claim_the_next() -> None:
    """Suspects run one at a time per process; after a crash that orphaned hundreds of running
    chunks the next one must be claimed when the last is done (CI: a reindex after two kill -9s
    sat for minutes on 270 suspects, one per poll interval)."""
    from actors.engine import InFlight
    from storage.types import ClaimedChunk
    inflight = InFlight(1, 4)
    assert inflight.take_suspect_slot()
    inflight.claimed(0, [ClaimedChunk(7, 1, 1, 3, 2, b"", orphaned=2)])
    inflight.suspect_claimed((7, 3))
    assert not inflight.take_suspect_slot()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(inflight.suspect_done)
            await anyio.sleep(0)
            inflight.forget([(7, 3)])  # its result committed
    assert inflight.take_suspect_slot()


stubborn = Job("test.stubborn", params=P)
_first_attempt_goes_on = threading.Event()


@stubborn.first_step(emits=Item)
async def one(params: P, ctx: Context, sink: Sink[Item]) -> None:
    sink.emit(Item(0))


@stubborn.step(consumes=Item)
def ignore_the_stop(params: P, item: Item, ctx: Context) -> None:
    """A plain-function step that does not look at ctx.cancelled: its first attempt runs on
    after a force-stop, past the restart, until the test lets it return."""
    if ctx.attempt == 1:
        _first_attempt_goes_on.wait(20)


async def test_a_chunk_claimed_again_while_its_old_attempt_still_runs_stays_held_and_the_partition_claims_on() -> None:
    """CI (test_force_stop_then_immediate_restart_completes_every_chunk): an instance stayed
    IN_PROGRESS for 3 minutes while both daemons were up and silent. A force-stop and an
    immediate restart handed a running chunk back READY while its old attempt still ran here;
    this daemon claimed it again, and the in-flight table, keyed by chunk id alone, let the old
    attempt's refused result forget the new claim: its lease was no longer extended, and the
    partition's count of what it holds never came down again. A few of those and the partition
    held "more than its room" forever: it never claimed again. On the old code the second
    round's new claim never comes."""
    from actors.control import restart, stop
    pipeline, store = _pipeline(partitions=1, concurrency=1, batch=1)
    pipeline.engine.registry.register(stubborn)
    engine, inflight = pipeline.engine, pipeline.engine.inflight

    async def until(done: Callable[[], object], what: str) -> None:
        with anyio.move_on_after(10):
            while not done():
                await anyio.sleep(0.01)
        assert done(), what

    stop_pipeline, ready = anyio.Event(), anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pipeline.run, stop_pipeline, ready, lambda cap: cap)
            await ready.wait()
            for round in range(3):
                _first_attempt_goes_on.clear()
                iid, _, _ = await store.create_instance("test.stubborn", 1, "{}", False, None, b"", 3)
                await until(lambda: (c := _work_chunk(store, iid)) and c.state == C.IN_PROGRESS,
                            f"round {round}: the partition no longer claims")
                chunk = _work_chunk(store, iid)
                assert await stop(engine, iid, force=True)   # attempt 1 runs on regardless
                assert await restart(engine, engine.registry, await store.get_instance(iid))  # type: ignore[arg-type]
                await until(lambda: chunk.state == C.IN_PROGRESS and chunk.attempt == 2,
                            f"round {round}: the restarted chunk is not claimed again here")
                _first_attempt_goes_on.set()  # attempt 1 returns; its result is refused
                await until(lambda: chunk.state == C.COMPLETED or (
                    engine.completer_send.statistics().current_buffer_used == 0 and chunk.id not in inflight.held()),
                    f"round {round}: attempt 1's result never came")
                assert chunk.state == C.COMPLETED or chunk.id in inflight.held(), \
                    f"round {round}: attempt 2 waits to run, and this daemon no longer holds it (no lease kept)"
                await until(lambda: chunk.state == C.COMPLETED, f"round {round}: attempt 2 never completed")
            stop_pipeline.set()
    finally:
        _first_attempt_goes_on.set()
    assert sum(inflight.running) == 0 and inflight.held() == []


def _work_chunk(store: MemoryStore, instance_id: int):  # type: ignore[no-untyped-def]
    return next((c for c in store.chunks.values() if c.instance_id == instance_id and c.step == 1), None)


async def test_an_internal_error_on_one_chunk_leaves_the_jobs_parked_chunks_running(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A job at its concurrency cap parks the chunks over it, and the worker holding its slot
    runs them after its own. When that worker met an error of ours (not the step's) on one of
    them, it died: the parked ones stayed held (their leases extended for ever) and nobody ran
    them, and the chunk it failed on stayed held too (the worker let go of the first chunk it
    ran instead). Now that chunk's attempt counts as a failed one and the worker goes on. On
    the old code the instance never completes: the chunks parked behind it stay IN_PROGRESS."""
    import actors.executor as executor
    pipeline, store = _pipeline(partitions=1, concurrency=4, batch=10)
    pipeline.engine.slots = JobSlots({"test.fan": 1})   # CHUNKD_JOB_CONCURRENCY=test.fan=1
    real, broken, runs = executor.run_chunk, set(), [0]

    async def once_broken(engine, chunk, partition, slot):  # type: ignore[no-untyped-def]
        if chunk.step == 1:
            runs[0] += 1
            if runs[0] == 3:   # a parked chunk, run by the worker holding the job's one slot
                broken.add(chunk.id)
                raise RuntimeError("a bug of ours")
        return await real(engine, chunk, partition, slot)
    monkeypatch.setattr(executor, "run_chunk", once_broken)
    iid, _, _ = await store.create_instance("test.fan", 1, '{"n": 12}', False, None, b"", 3)
    stop, ready = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.run, stop, ready, lambda cap: cap)
        await ready.wait()
        with anyio.move_on_after(15):
            while sum(c.state == C.COMPLETED for c in store.chunks.values() if c.instance_id == iid) < 12 \
                    or any(c.state == C.IN_PROGRESS for c in store.chunks.values()):
                await anyio.sleep(0.01)
        stop.set()
    (failed,) = broken
    states = sorted(C(c.state).name for c in store.chunks.values() if c.instance_id == iid and c.id != failed)
    assert states == ["COMPLETED"] * 12, states
    c = store.chunks[failed]   # retried after its backoff (maintenance's; not running here)
    assert (C(c.state).name, c.failures) == ("ERRORED", 1) and "a bug of ours" in (c.error_message or "")
    assert pipeline.engine.inflight.held() == []   # (a daemon would have extended their leases for ever)


async def test_two_attempts_of_a_chunk_in_one_flush_count_one_completion() -> None:
    """A chunk handed back by a restart and claimed again here while its old attempt's success
    was still on its way: both successes can meet in one flush. The store takes the newer one
    and refuses the other; chunkd_chunks_completed counted both."""
    from actors.completer import Completer, flush
    from actors.engine import Outcome
    from metrics import CHUNKS_COMPLETED
    from storage.types import Success
    pipeline, store = _pipeline(partitions=1, concurrency=1, batch=1)
    iid, _, _ = await store.create_instance("test.fan", 1, '{"n": 1}', False, None, b"", 3)
    (old,) = await store.claim(0, 1, 1, 60.0)
    assert await store.force_stop_instance(iid)
    assert await store.restart_instance(iid, None) is not None
    (new,) = await store.claim(0, 1, 1, 60.0)
    assert (old.id, old.attempt + 1) == (new.id, new.attempt)
    engine = pipeline.engine
    engine.inflight.claimed(0, [old, new])
    send, recv = anyio.create_memory_object_stream[Outcome](10)
    completer = Completer(engine.settings.completer, recv, store, engine.channel, engine.inflight)
    counted = CHUNKS_COMPLETED.labels("test.fan", "spread")
    before = counted._value.get()
    await flush(completer, [Outcome(Success(c.id, c.attempt, iid, 0, [], False, 3, [], []), "test.fan", "spread", 0)
                            for c in (old, new)])
    assert counted._value.get() - before == 1
    assert engine.inflight.held() == []


async def test_a_bug_of_ours_while_a_batch_is_bisected_lets_go_of_the_whole_batch() -> None:
    """A batch that breaks its transaction is bisected; if writing its first half then hits a
    bug of ours, that half is let go of (handed back by the heartbeat) and the error raised, but
    the second half was never written nor let go of: held for ever, leases extended for ever,
    its partition's count up for good. On the old code the second half stays held."""
    import asyncpg

    from actors.completer import Completer, flush
    from actors.engine import Outcome
    from storage.types import Success

    class Broken(MemoryStore):
        async def record_outcomes(self, successes, setbacks):  # type: ignore[no-untyped-def]
            if len(successes) > 1:
                raise asyncpg.PostgresError("this batch cannot be written")   # -> bisect
            raise RuntimeError("a bug of ours")

    pipeline, _ = _pipeline(partitions=1, concurrency=4, batch=4)
    store = Broken(1)
    for _ in range(4):
        await store.create_instance("test.fan", 1, '{"n": 1}', False, None, b"", 3)
    chunks = await store.claim(0, 4, 1, 60.0)
    assert len(chunks) == 4
    engine = pipeline.engine
    engine.inflight.claimed(0, chunks)
    send, recv = anyio.create_memory_object_stream[Outcome](10)
    completer = Completer(engine.settings.completer, recv, store, engine.channel, engine.inflight)
    batch = [Outcome(Success(c.id, c.attempt, c.instance_id, c.step), "test.fan", "spread", 0) for c in chunks]
    with pytest.raises(RuntimeError):
        await flush(completer, batch)
    assert engine.inflight.held() == [] and engine.inflight.running == [0]


async def test_a_worker_that_dies_lets_go_of_the_chunk_in_its_hands() -> None:
    """A worker running the chunks parked behind its job's cap met an error of ours after a
    step (its result could not be handed on): it let go of the first chunk it had begun with,
    whose result was already on its way, and kept the parked chunk it was on held for ever
    (its lease extended, never handed back). On the old code that chunk stays held."""
    pipeline, store = _pipeline(partitions=1, concurrency=4, batch=10)
    engine = pipeline.engine
    engine.slots = JobSlots({"test.fan": 1})   # CHUNKD_JOB_CONCURRENCY=test.fan=1
    stop, ready = anyio.Event(), anyio.Event()
    sent: list[int] = []
    lost: list[tuple[int, int]] = []

    class Flaky:
        """The completer's mailbox, failing once on the third step-1 result."""
        def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
            self.inner = inner

        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return getattr(self.inner, name)

        def send_nowait(self, outcome) -> None:  # type: ignore[no-untyped-def]
            r = outcome.result
            if r.step == 1:
                sent.append(r.chunk_id)
                if len(sent) == 3:
                    lost.append((r.chunk_id, r.attempt))
                    raise RuntimeError("a bug of ours")
            self.inner.send_nowait(outcome)

    await store.create_instance("test.fan", 1, '{"n": 12}', False, None, b"", 3)
    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.run, stop, ready, lambda cap: cap)
        await ready.wait()
        engine.completer_send = Flaky(engine.completer_send)  # type: ignore[assignment]
        with anyio.move_on_after(10):
            while not lost or lost[0][0] in engine.inflight.held():
                await anyio.sleep(0.01)
        stop.set()
    assert lost and lost[0][0] not in engine.inflight.held()
