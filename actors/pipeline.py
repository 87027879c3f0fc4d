"""The work pipeline of one daemon: fetch → execute → complete (River's producer owns the
same three). It builds its own mailboxes, at the sizes its actors rely on, starts a consumer
per partition, its executors and the completer, owns the stopping and starved flags and the
starvation fallback, and drains on shutdown within the bounds it is given. The shell
(daemon/wiring/node.py) only builds it and runs it."""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import msgspec
import structlog

from actors.adaptive import WORKERS_START, workers_wanted
from actors.completer import Completer
from actors.consumer import CLAIM_SHIELD_SECONDS, consume_partition
from actors.engine import Engine, Outcome, steps_running
from actors.executor import execute_partition
from actors.supervisor import Supervisor
from metrics import CHANNEL_STARVED
from storage.errors import TRANSIENT
from storage.types import ClaimedChunk

log = structlog.get_logger("chunkd.pipeline")

# Kafka: a daemon with no partition assigned for this long while READY chunks wait is
# starved (a broken group): it says so and claims from every partition until assigned.
# Three of the consumer's 6 s session timeouts: a normal rebalance is over by then.
STARVED_AFTER = 18.0


class PipelineSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What the pipeline is told (daemon/wiring/config.py: Config.pipeline_settings)."""
    partitions: int
    partition_concurrency: int      # executor workers per partition
    claim_batch: int
    completer_batch: int
    shutdown_grace_seconds: float   # running steps get this long after stop
    completer_drain_seconds: float = 10.0  # at most this long for the completer's last flushes
    adaptive: bool = False          # claims sized by actors.adaptive.next_claim (CHUNKD_CLAIM_BATCH unset)
    adaptive_workers: bool = False  # up to partition_concurrency workers, sized by actors.adaptive.workers_wanted

    @property
    def mailbox_size(self) -> int:
        """Each partition's executor mailbox. A consumer claims only while its partition holds
        no more than its room, at most `partition_concurrency` chunks (actors.engine.InFlight;
        adaptive: its workers now), and at most `claim_batch` at once, so its mailbox never holds
        more than this: the consumer's send_nowait never blocks (and would raise, not wait,
        were this ever wrong)."""
        return self.partition_concurrency + self.claim_batch

    @property
    def completer_mailbox_size(self) -> int:
        return max(1000, self.completer_batch * 4)


SIZE_EVERY = 0.1  # seconds between looks at the adaptive worker pools


class WorkerPool:
    """One partition's executor workers. With adaptive concurrency the pipeline grows it (new
    workers) and shrinks it (`retire`: that many idle workers return instead of waiting for
    the next chunk, actors/executor.py), so no chunk is ever dropped by a shrink."""

    def __init__(self) -> None:
        self.workers = 0
        self.retire = 0
        self.spawn: Callable[[], None] | None = None   # set once the partition's task group runs
        self._named = 0

    def name(self) -> int:
        self._named += 1
        return self._named

    def resize(self, want: int) -> None:
        live = self.workers - self.retire
        if want > live:
            back = min(self.retire, want - live)   # retirements not yet taken: call them off first
            self.retire -= back
            for _ in range(want - live - back):
                if self.spawn is not None:
                    self.spawn()
        elif want < live:
            self.retire += live - want


class Pipeline:
    def __init__(self, settings: PipelineSettings, engine: Engine, supervisor: Supervisor) -> None:
        self.settings, self.engine, self.sup = settings, engine, supervisor
        engine.completer_send, self._completer_recv = anyio.create_memory_object_stream[Outcome](
            max_buffer_size=settings.completer_mailbox_size)
        self._mailboxes: list[anyio.abc.ObjectSendStream[ClaimedChunk]] = []
        self.pools: list[WorkerPool] = []
        if settings.adaptive_workers:  # a partition's room follows its workers (see _size_pools)
            for p in range(settings.partitions):
                engine.inflight.set_room(p, min(WORKERS_START, settings.partition_concurrency))
        self._unassigned_since: float | None = None
        self.grace_ends_at: float | None = None  # anyio clock, once stopping: when running steps are cut off

    @property
    def stopping(self) -> bool:
        return self.engine.stopping

    @property
    def starved(self) -> bool:
        return self.engine.starved

    def mailbox_depths(self) -> tuple[int, int]:
        """(completer, executors): results and chunks waiting, for the gauges."""
        return (self.engine.completer_send.statistics().current_buffer_used,
                sum(m.statistics().current_buffer_used for m in self._mailboxes))

    async def run(self, stop: anyio.Event, ready: anyio.Event, budget: Callable[[float], float]) -> None:
        """Until `stop`: then the grace for running steps, then the completer's drain, cut to
        `budget(completer_drain_seconds)` (a database that is away must not hold the shutdown:
        what is not written is rescued, as after a crash)."""
        e = self.engine
        async with anyio.create_task_group() as completer_tg:
            completer = Completer(e.settings.completer, self._completer_recv, e.store, e.channel, e.inflight,
                                  e.doorbell)
            completer_tg.start_soon(self.sup.supervise, "completer", "completer", completer.run)
            await self._work(stop, ready)
            e.completer_send.close()   # executors are done: the completer drains and exits
            completer_tg.cancel_scope.deadline = anyio.current_time() + budget(self.settings.completer_drain_seconds)

    async def _work(self, stop: anyio.Event, ready: anyio.Event) -> None:
        """Consumers and executors until stop; then the grace period for running steps."""
        cfg, e = self.settings, self.engine
        async with anyio.create_task_group() as executors:
            async with anyio.create_task_group() as consumers:
                for p in range(cfg.partitions):
                    send, recv = anyio.create_memory_object_stream[ClaimedChunk](max_buffer_size=cfg.mailbox_size)
                    self._mailboxes.append(send)
                    self.pools.append(WorkerPool())
                    executors.start_soon(self._workers, p, recv, self.pools[p])
                    consumers.start_soon(self.sup.supervise, f"consumer-{p}", "partition-consumer",
                                         self._consumer(p, send))
                if cfg.adaptive_workers:
                    consumers.start_soon(self.sup.supervise, "worker-sizer", "worker-sizer", self._size_pools)
                ready.set()
                await stop.wait()
                e.stopping = True  # stop claiming; workers start nothing new
                for claim in e.claims:  # a claim in flight is answered (what it took is handed back), within a bound
                    claim.deadline = anyio.current_time() + CLAIM_SHIELD_SECONDS
                consumers.cancel_scope.cancel()
            log.info("shutting down: waiting for running steps", grace_seconds=cfg.shutdown_grace_seconds)
            # At the deadline async steps are cancelled and plain-function steps abandoned in
            # their threads (actors/executor.py _call): the executors return at once.
            executors.cancel_scope.deadline = self.grace_ends_at = anyio.current_time() + cfg.shutdown_grace_seconds

    async def _workers(self, p: int, recv: anyio.abc.ObjectReceiveStream[ClaimedChunk], pool: WorkerPool) -> None:
        e, cfg = self.engine, self.settings
        async with recv, anyio.create_task_group() as tg:
            def spawn() -> None:
                if e.stopping:
                    return
                pool.workers += 1
                tg.start_soon(self.sup.supervise, f"executor-{p}-{pool.name()}", "step-executor",
                              lambda: execute_partition(e, p, recv, pool))  # type: ignore[arg-type]
            pool.spawn = spawn
            for _ in range(min(WORKERS_START, cfg.partition_concurrency) if cfg.adaptive_workers
                           else cfg.partition_concurrency):
                spawn()
            # workers exit when the consumer's send side closes and the mailbox drains

    async def _size_pools(self) -> None:
        """Adaptive concurrency: each partition's workers follow what its steps need."""
        most = self.settings.partition_concurrency
        while not self.engine.stopping:
            await anyio.sleep(SIZE_EVERY)
            in_step = steps_running(self.engine.stops.slots)
            for p, pool in enumerate(self.pools):
                st = self._mailboxes[p].statistics()
                want = workers_wanted(pool.workers - pool.retire, in_step.get(p, 0), st.current_buffer_used,
                                      st.tasks_waiting_receive, most)
                pool.resize(want)
                # Claim again while holding no more than the workers (as with a set concurrency):
                # holding more only queues chunks here and results at the completer (measured:
                # a room of 756 per partition drained no-op chunks ~25% slower than 31, medians of 3).
                self.engine.inflight.set_room(p, want)

    def _consumer(self, p: int, send: anyio.abc.ObjectSendStream[ClaimedChunk]) -> Callable[[], Awaitable[None]]:
        e = self.engine

        async def run() -> None:
            try:
                await consume_partition(e, p, send)  # type: ignore[arg-type]
            finally:
                if e.stopping:
                    send.close()
        return run

    async def check_starved(self, assigned: int) -> None:
        """The starvation fallback: a Kafka daemon given no partition for STARVED_AFTER while
        READY chunks wait claims from every partition until the group assigns it some."""
        e = self.engine
        if assigned or e.channel.name != "kafka":
            self._unassigned_since = None
            if e.starved:
                log.info("partitions assigned again; claiming only those")
            e.starved = False
        else:
            now = time.monotonic()
            self._unassigned_since = self._unassigned_since or now
            if now - self._unassigned_since >= STARVED_AFTER and not e.starved:
                try:
                    waiting = await e.store.any_ready()
                except TRANSIENT:
                    waiting = False
                if waiting:
                    e.starved = True
                    log.warning("no kafka partition assigned while READY chunks wait; claiming from every "
                                "partition until the group assigns some",
                                unassigned_seconds=round(now - self._unassigned_since))
        CHANNEL_STARVED.set(1 if e.starved else 0)
