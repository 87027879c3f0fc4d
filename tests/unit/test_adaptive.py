"""Defaults that adapt (issue 26): the claim size and executor workers a partition chooses when
CHUNKD_CLAIM_BATCH / CHUNKD_PARTITION_CONCURRENCY are unset (actors/adaptive.py), that the
variables win when set, and that an adaptive pipeline runs everything within its bounds."""
from __future__ import annotations

import anyio
import msgspec
import pytest

from actors.adaptive import CLAIM_FLOOR, WORKERS_START, next_claim, resolve, workers_wanted
from actors.engine import Engine
from actors.job import Context, Job, Sink
from actors.pipeline import Pipeline, PipelineSettings
from actors.registry import Registry
from actors.supervisor import Supervisor
from channels.memory import MemoryChannel
from chunkd.testing import settings
from daemon.wiring.config import ConfigError, load
from storage.memory import MemoryStore
from storage.states import C


# ------------------------------------------------------------------ the pure rules
def test_a_short_queue_claims_what_the_idle_executors_can_start() -> None:
    assert next_claim(idle_workers=140, last_requested=0, last_got=0, most=500) == 140    # the first claim
    assert next_claim(idle_workers=140, last_requested=100, last_got=3, most=500) == 140  # came back short
    assert next_claim(idle_workers=0, last_requested=100, last_got=3, most=500) == CLAIM_FLOOR == 100
    assert next_claim(idle_workers=16, last_requested=100, last_got=3, most=500) == CLAIM_FLOOR
    assert next_claim(idle_workers=900, last_requested=10, last_got=1, most=500) == 500   # never past the most
    assert next_claim(idle_workers=0, last_requested=50, last_got=3, most=50) == 50       # nor on a short queue


def test_a_backlog_ramps_claims_up_to_the_most() -> None:
    sizes, size = [], next_claim(16, 0, 0, 500)
    for _ in range(5):  # every claim comes back full
        sizes.append(size)
        size = next_claim(0, size, size, 500)
    assert sizes == [100, 200, 400, 500, 500]
    assert next_claim(300, 100, 100, 500) == 300   # more idle than the ramp: what they can start
    assert next_claim(5, 500, 500, 50) == 50     # the most (a set CHUNKD_CLAIM_BATCH or many partitions)


def test_workers_grow_while_every_one_waits_inside_a_step_and_shrink_when_idle() -> None:
    assert workers_wanted(current=16, in_step=16, waiting=200, idle=0, most=256) == 32
    assert workers_wanted(current=200, in_step=200, waiting=9, idle=0, most=256) == 256
    # busy but not inside a step (no-op steps between awaits): more workers would only cost wake-ups
    assert workers_wanted(current=16, in_step=0, waiting=500, idle=0, most=256) == 16
    # nothing waits: no growth however busy
    assert workers_wanted(current=16, in_step=16, waiting=0, idle=0, most=256) == 16
    assert workers_wanted(current=256, in_step=10, waiting=0, idle=200, most=256) == 156
    assert workers_wanted(current=20, in_step=0, waiting=0, idle=20, most=256) == WORKERS_START
    assert workers_wanted(current=8, in_step=0, waiting=0, idle=8, most=4) == 4   # a small maximum wins


def test_resolve() -> None:
    auto = resolve(4, None, None)
    assert (auto.partition_concurrency, auto.claim_batch, auto.adaptive_concurrency, auto.adaptive_claim) == \
        (256, 500, True, True)
    assert resolve(1024, None, None).claim_batch == 50 and resolve(1024, None, None).partition_concurrency == 8
    set_ = resolve(4, 8, 100)
    assert not set_.adaptive_claim and not set_.adaptive_concurrency and set_.partition_concurrency == 8


# ------------------------------------------------------------------ the environment wins when set
def test_set_variables_win_and_keep_their_validation() -> None:
    cfg = load({"CHUNKD_PARTITION_CONCURRENCY": "12", "CHUNKD_CLAIM_BATCH": "300"})
    assert (cfg.partition_concurrency, cfg.claim_batch, cfg.adaptive_concurrency, cfg.adaptive_claim) == \
        (12, 300, False, False)
    claim, pipe = cfg.actor_settings().claim, cfg.pipeline_settings(10.0)
    assert not claim.adaptive and pipe.mailbox_size == 312 and not pipe.adaptive_workers
    one = load({"CHUNKD_CLAIM_BATCH": "40"})   # one set, the other adapted
    assert one.claim_batch == 40 and not one.adaptive_claim and one.adaptive_concurrency
    assert load({"CHUNKD_CLAIM_BATCH": "auto"}).adaptive_claim
    for name, value in (("CHUNKD_CLAIM_BATCH", "0"), ("CHUNKD_CLAIM_BATCH", "lots"),
                        ("CHUNKD_PARTITION_CONCURRENCY", "10001"), ("CHUNKD_PARTITION_CONCURRENCY", "-1")):
        with pytest.raises(ConfigError, match=name):
            load({name: value})
    with pytest.raises(ConfigError, match="held in memory"):
        load({"CHUNKD_PARTITIONS": "100", "CHUNKD_PARTITION_CONCURRENCY": "100", "CHUNKD_CLAIM_BATCH": "10000"})


def test_unset_variables_adapt() -> None:
    cfg = load({})
    claim, pipe = cfg.actor_settings().claim, cfg.pipeline_settings(10.0)
    assert claim.adaptive and pipe.adaptive and pipe.adaptive_workers
    assert pipe.mailbox_size == 256 + 500   # held stays bounded: the most workers + one claim


# ------------------------------------------------------------------ an adaptive pipeline, in memory
pytestmark = pytest.mark.anyio


class P(msgspec.Struct):
    n: int = 50
    sleep: float = 0.0


class Item(msgspec.Struct, array_like=True):
    i: int


slow = Job("test.adaptive", params=P)


@slow.first_step(emits=Item)
async def spread(params: P, ctx: Context, sink: Sink[Item]) -> None:
    for i in range(params.n):
        sink.emit(Item(i))


@slow.step(consumes=Item)
async def nap(params: P, chunk: Item, ctx: Context) -> None:
    await anyio.sleep(params.sleep)


async def test_an_adaptive_pipeline_grows_its_workers_for_sleeping_steps_and_runs_everything() -> None:
    eff = resolve(2, None, None)
    store = MemoryStore(2)
    registry = Registry()
    registry.register(slow)
    cfg = msgspec.structs.replace(settings(), claim=msgspec.structs.replace(
        settings().claim, partitions=2, partition_concurrency=eff.partition_concurrency,
        claim_batch=eff.claim_batch, poll_interval=0.05, adaptive=True))
    engine = Engine(cfg, store, MemoryChannel(2), registry, 1, "")  # type: ignore[arg-type]
    ps = PipelineSettings(partitions=2, partition_concurrency=eff.partition_concurrency, claim_batch=eff.claim_batch,
                          completer_batch=50, shutdown_grace_seconds=5.0, adaptive=True, adaptive_workers=True)
    pipeline = Pipeline(ps, engine, Supervisor())
    n = 3000
    await store.create_instance("test.adaptive", 1, f'{{"n": {n}, "sleep": 0.05}}', False, None, b"", 3)
    stop, ready = anyio.Event(), anyio.Event()
    most_workers, most_held, most_room = 0, 0, 0
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(pipeline.run, stop, ready, lambda cap: cap)
            await ready.wait()
            while sum(c.state == C.COMPLETED for c in store.chunks.values()) < n + 1:
                most_workers = max(most_workers, sum(p.workers - p.retire for p in pipeline.pools))
                most_held = max(most_held, max(engine.inflight.running))
                most_room = max(most_room, max(engine.inflight.room))
                await anyio.sleep(0.01)
            # idle now: the surplus is told to retire (each goes when it next finds the mailbox empty)
            while any(p.workers - p.retire > WORKERS_START for p in pipeline.pools):
                await anyio.sleep(0.05)
            stop.set()
    # 16 workers per partition would need 3000 x 50 ms / 32 = 4.7 s; it grew past that
    assert most_workers > 2 * 16, most_workers
    assert most_held <= eff.partition_concurrency + eff.claim_batch
    assert most_room > 16   # a partition claims for the workers it has now
    assert engine.inflight.room == [WORKERS_START] * 2   # idle again: back to the start
    assert (await store.step_counts([1]))[1][1].completed == n
    assert sum(engine.inflight.running) == 0 and pipeline.mailbox_depths() == (0, 0)
