"""State the actors of one daemon share: what it holds, the instance cache, the mailboxes."""
from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Iterable
from typing import Any

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectSendStream

from actors.doorbell import Doorbell
from actors.job import Job
from actors.registry import Registry, UnknownJobError
from actors.settings import ActorSettings
from channels.base import Channel
from storage.codec import DataError
from storage.reader import Reader
from storage.protocol import EngineStore
from storage.types import ClaimedChunk, InstanceRow, Setback, Success


class Outcome(msgspec.Struct, array_like=True):
    result: Success | Setback
    job: str
    step: str
    partition: int
    claimed_at: float = 0.0
    # whether the end of this chunk's step is an instance's move (Job.step_closes_a_move):
    # the completer then rings maintenance's doorbell
    decides: bool = True


_RESERVED = (-1, -1)  # a claim that may take the suspect slot is under way


Claim = tuple[int, int]   # (chunk id, attempt): one claim of a chunk


class InFlight:
    """Chunks this daemon holds, from claim until their result is committed (or they are
    given up). `held` feeds the heartbeat (another thread), so it is guarded by a lock;
    `running` per partition drives the consumers' backpressure: a partition claims again
    only while it holds no more than its room (its slots), so it never holds more than slots +
    one batch, counting results still on their way through the completer.

    Keyed by claim, not by chunk: after a force-stop and a restart this daemon may claim a
    chunk again while its old attempt still runs here (a step that ignores the stop). Keyed by
    chunk id, the old attempt's refused result forgot the new claim (its lease no longer
    extended) and the partition's count never came down again: a few of those and it never
    claimed again (CI: an instance IN_PROGRESS for minutes beside two silent, healthy daemons)."""

    def __init__(self, partitions: int, concurrency: int) -> None:
        self._lock = threading.Lock()
        self._held: dict[Claim, tuple[int, int]] = {}   # claim -> (partition, instance id)
        self.running = [0] * partitions
        # Claim again only while holding at most this many: the slots, or with adaptive
        # concurrency the partition's workers now (never more than the slots: the mailbox bound).
        self.room = [concurrency] * partitions
        self.concurrency = concurrency
        self._space = [anyio.Event() for _ in range(partitions)]
        self._suspect: Claim | None = None   # the suspect claim this process runs, or _RESERVED
        self._suspect_freed = anyio.Event()

    def claimed(self, partition: int, chunks: list[ClaimedChunk]) -> None:
        # `running` counts exactly the claims in `_held`, so each count that goes up comes
        # down with that claim's own `forget`
        with self._lock:
            before = len(self._held)
            for c in chunks:
                self._held.setdefault((c.id, c.attempt), (partition, c.instance_id))
            added = len(self._held) - before
        self.running[partition] += added

    def forget(self, claims: Iterable[Claim]) -> None:
        """Committed, refused or given up: no longer held, room for another claim."""
        freed: list[int] = []
        suspect_freed = False
        with self._lock:
            for claim in claims:
                held = self._held.pop(claim, None)
                if held is not None:
                    freed.append(held[0])
                    suspect_freed = suspect_freed or claim == self._suspect
        if suspect_freed:
            self._suspect_freed.set()
        for p in freed:
            self.running[p] -= 1
            if self.running[p] <= self.room[p]:
                self._space[p].set()

    def held(self) -> list[int]:
        """The chunk ids whose leases the heartbeat extends (a chunk held twice, once per attempt, is one lease)."""
        with self._lock:
            return list({chunk_id for chunk_id, _ in self._held})

    def held_instances(self) -> set[int]:
        with self._lock:
            return {inst for _, inst in self._held.values()}

    def take_suspect_slot(self) -> bool:
        """May the next claim include a suspect chunk? One at a time per process: if it
        kills the process again, no other suspect shares the blame."""
        with self._lock:
            if self._suspect is _RESERVED or (self._suspect is not None and self._suspect in self._held):
                return False
            self._suspect = _RESERVED
            return True

    def suspect_claimed(self, claim: Claim | None) -> None:
        """After a claim that took the slot: the suspect it got, if any."""
        with self._lock:
            self._suspect = claim
            if claim is not None:
                self._suspect_freed = anyio.Event()

    async def suspect_done(self) -> None:
        """Until the suspect this process runs is no longer held (its result committed or given up)."""
        await self._suspect_freed.wait()

    def has_room(self, partition: int) -> bool:
        return self.running[partition] <= self.room[partition]

    def set_room(self, partition: int, room: int) -> None:
        self.room[partition] = min(room, self.concurrency)
        if self.has_room(partition):
            self._space[partition].set()

    async def wait_for_room(self, partition: int) -> None:
        while not self.has_room(partition):
            ev = self._space[partition] = anyio.Event()
            await ev.wait()


class LoadedInstance(msgspec.Struct):
    """What an executor needs about an instance, loaded once per daemon."""
    job: Job
    params: Any


class JobSlots:
    """Per-job cap on steps running at once (CHUNKD_JOB_CONCURRENCY or the job's default).
    A chunk over the cap is parked, not blocking a worker, and run when a slot frees."""

    def __init__(self, caps: dict[str, int]) -> None:
        self._caps = caps
        self._used: dict[str, int] = {}
        self.parked: dict[str, deque[tuple[int, ClaimedChunk]]] = {}

    def cap(self, job: Job) -> int | None:
        return self._caps.get(job.name, job.concurrency)

    def try_take(self, job: Job) -> bool:
        cap = self.cap(job)
        if cap is None:
            return True
        used = self._used.get(job.name, 0)
        if used >= cap:
            return False
        self._used[job.name] = used + 1
        return True

    def give_back(self, job: Job) -> None:
        if self.cap(job) is not None:
            self._used[job.name] -= 1


class StepSlot:
    """One executor worker's running step: what the stopper needs to tell it its instance
    ended. One per worker, reused for every chunk it runs (no allocation per chunk).

    An async step is interrupted by cancelling the worker's asyncio task natively, not
    through an anyio CancelScope: a scope per chunk cost ~8 µs, a sixth of a chunk's whole
    budget on the drain benchmark. The executor tells our cancellation from anyone else's
    (shutdown) by `stop_requested` and the task's cancel count (`Task.uncancel`)."""

    __slots__ = ("instance_id", "ctx", "worker", "task", "stop_requested", "_settled", "partition")

    def __init__(self, worker: asyncio.Task[Any] | None = None, partition: int = 0) -> None:
        self.partition = partition            # the worker's partition (chunkd_steps_running)
        self.instance_id: int | None = None   # None: no step runs in this worker now
        self.ctx: Any = None
        self.worker = worker                  # the worker's task, taken once
        self.task: asyncio.Task[Any] | None = None   # the worker's task while an async step runs
        self.stop_requested = False
        self._settled = False

    def begin(self, instance_id: int, ctx: Any, is_async: bool) -> None:
        # A sync step runs in a thread, which cannot be interrupted: it only sees ctx.cancelled.
        self.ctx, self.task, self.stop_requested, self._settled = ctx, self.worker if is_async else None, False, False
        self.instance_id = instance_id

    def end(self) -> None:
        self.instance_id = None
        if self.stop_requested:
            self.settle()  # a step that swallowed our cancellation leaves it counted on the task

    def stop(self) -> None:
        # stop_requested for sync steps too: whatever the step does next (returns early,
        # raises, finishes anyway), its run was cut short and its chunk ends CANCELLED (rule 11).
        self.ctx.cancelled = True
        if not self.stop_requested:
            self.stop_requested = True
            if self.task is not None:
                self.task.cancel("chunkd: the instance ended")

    def settle(self) -> bool:
        """Take our cancellation request back (once); True if another one is still pending."""
        if self.task is None:
            return False
        if self.stop_requested and not self._settled:
            self._settled = True
            return self.task.uncancel() > 0
        return self.task.cancelling() > 0


class Stops:
    """What the stopper, the executors and the cancel routes share: the instances that ended
    (cancelled, failed) while this daemon holds chunks of them, whose chunks never start
    (actors/stopper.py keeps the set current), and each executor worker's step slot."""

    def __init__(self) -> None:
        self.ended: set[int] = set()
        self.fresh: set[int] = set()   # stopped here since the stopper last asked the database
        self.slots: set[StepSlot] = set()

    def stop(self, instance_ids: set[int]) -> int:
        """Mark these instances ended here and interrupt their running steps; returns how many were told."""
        self.ended |= instance_ids
        self.fresh |= instance_ids
        told = 0
        for slot in list(self.slots):
            if slot.instance_id in instance_ids:
                slot.stop()
                told += 1
        return told

    def restarted(self, instance_id: int) -> None:
        """Its new run's chunks may start here at once (the database refuses stale releases anyway)."""
        self.ended.discard(instance_id)
        self.fresh.discard(instance_id)


def steps_running(slots: set[StepSlot]) -> dict[int, int]:
    """Steps running now per partition (workers inside a step), for the gauge: sampled, not
    counted per chunk."""
    out: dict[int, int] = {}
    for slot in slots:
        out[slot.partition] = out.get(slot.partition, 0) + (slot.instance_id is not None)
    return out


class Engine:
    """The work pipeline's shared state, for the two actors that are the pipeline (the
    consumers and the executors): the in-flight table, the job slots, the instance cache,
    the completer's mailbox, the stops and the shutdown flags. The other actors (completer,
    stopper, maintenance, scheduler) are given only their own handles by daemon/wiring/node.py."""

    def __init__(self, settings: ActorSettings, store: EngineStore, channel: Channel, registry: Registry, node_id: int,
                 dsn: str) -> None:
        self.settings = settings
        self.store = store
        self.channel = channel
        self.registry = registry
        self.node_id = node_id
        self.inflight = InFlight(settings.claim.partitions, settings.claim.partition_concurrency)
        self.slots = JobSlots(settings.steps.job_concurrency)
        self.stopping = False
        self.starved = False  # Kafka gave this daemon no partition for long: claim from all (actors/pipeline.py)
        self.claims: set[anyio.CancelScope] = set()  # claim statements in flight, shielded (actors/consumer.py)
        self._runtimes: dict[int, LoadedInstance | Exception] = {}
        self._started: set[int] = set()
        # the completer's mailbox, made (and sized) by actors.pipeline.Pipeline
        self.completer_send: MemoryObjectSendStream[Outcome]
        self.reader = Reader(dsn, deadlines=store.deadlines)  # ctx.db and submit-time checks
        self.stops = Stops()
        # rung by the completer when a step closed: this node's maintenance passes at once
        self.doorbell = Doorbell()

    def cached_runtime(self, instance_id: int) -> LoadedInstance | None:
        hit = self._runtimes.get(instance_id)
        return hit if isinstance(hit, LoadedInstance) else None

    async def runtime(self, instance_id: int) -> LoadedInstance:
        """Job + decoded parameters for an instance; errors are cached too (the row won't change)."""
        hit = self._runtimes.get(instance_id)
        if hit is None:
            hit = self._keep(instance_id, await self.store.instance_runtime(instance_id))
        if isinstance(hit, Exception):
            raise hit
        return hit

    def _keep(self, instance_id: int, row: InstanceRow | None) -> LoadedInstance | Exception:
        hit: LoadedInstance | Exception
        try:
            if row is None:
                raise LookupError(f"instance {instance_id} does not exist")
            job = self.registry.get(row.job_name, row.job_version)
            hit = LoadedInstance(job, job.decode_params(row.params))
        except (UnknownJobError, DataError, LookupError) as e:
            hit = e
        if len(self._runtimes) > 10_000:
            self._runtimes.clear()
        self._runtimes[instance_id] = hit
        return hit

    async def note_started(self, instance_ids: set[int]) -> None:
        """A claim's instances: those still QUEUED become IN_PROGRESS (cosmetic: maintenance
        does it too), and the runtimes not cached yet are read, in one round trip: a claim
        of many small jobs' chunks would otherwise cost a read per instance and one more."""
        new = instance_ids - self._started
        missing = sorted(i for i in instance_ids if i not in self._runtimes)
        if not new and len(missing) < 2:
            return  # a lone runtime is read by the chunk's executor (Engine.runtime)
        for row in await self.store.start_and_load(sorted(new), missing):
            self._keep(row.id, row)
        self._started |= new
        if len(self._started) > 100_000:
            self._started.clear()

