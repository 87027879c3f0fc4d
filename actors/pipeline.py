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

from actors.completer import Completer
from actors.consumer import CLAIM_SHIELD_SECONDS, consume_partition
from actors.engine import Engine, Outcome
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

    @property
    def mailbox_size(self) -> int:
        """Each partition's executor mailbox. A consumer claims only while its partition holds
        no more than `partition_concurrency` chunks (actors.engine.InFlight), and at most
        `claim_batch` at once, so its mailbox never holds more than this: the consumer's
        send_nowait never blocks (and would raise, not wait, were this ever wrong)."""
        return self.partition_concurrency + self.claim_batch

    @property
    def completer_mailbox_size(self) -> int:
        return max(1000, self.completer_batch * 4)


class Pipeline:
    def __init__(self, settings: PipelineSettings, engine: Engine, supervisor: Supervisor) -> None:
        self.settings, self.engine, self.sup = settings, engine, supervisor
        engine.completer_send, self._completer_recv = anyio.create_memory_object_stream[Outcome](
            max_buffer_size=settings.completer_mailbox_size)
        self._mailboxes: list[anyio.abc.ObjectSendStream[ClaimedChunk]] = []
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
            completer = Completer(e.settings.completer, self._completer_recv, e.store, e.channel, e.inflight)
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
                    executors.start_soon(self._workers, p, recv)
                    consumers.start_soon(self.sup.supervise, f"consumer-{p}", "partition-consumer",
                                         self._consumer(p, send))
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

    async def _workers(self, p: int, recv: anyio.abc.ObjectReceiveStream[ClaimedChunk]) -> None:
        e = self.engine
        async with recv, anyio.create_task_group() as tg:
            for w in range(self.settings.partition_concurrency):
                tg.start_soon(self.sup.supervise, f"executor-{p}-{w}", "step-executor",
                              lambda: execute_partition(e, p, recv))  # type: ignore[arg-type]
            # workers exit when the consumer's send side closes and the mailbox drains

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
