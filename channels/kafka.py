"""Kafka channel (aiokafka): partitioned work hints and consumer groups across daemons, as
batch2's `batch2-work-notification` topic. Kafka decides which daemon consumes which
partition; Postgres stays the truth, so a lost or duplicated message only delays work."""
from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import msgspec
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from channels.base import LocalSignals, PartitionSignal
from metrics import KAFKA_LAG

log = structlog.get_logger("chunkd.channel.kafka")
# aiokafka logs every failed reconnect attempt at error level, many per second during an
# outage; the channel reports the outage itself, once.
logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def _not_aiokafka_orphan(record: logging.LogRecord) -> bool:
    """aiokafka leaves internal request futures unawaited when a broker drops mid-request;
    asyncio reports each at error level ("Future exception was never retrieved"). The
    channel reports the outage itself."""
    exc = record.exc_info[1] if record.exc_info else None
    return not (isinstance(exc, KafkaError) and record.getMessage().startswith("Future exception was never retrieved"))


logging.getLogger("asyncio").addFilter(_not_aiokafka_orphan)


class WorkNotice(msgspec.Struct, array_like=True):
    """The message: which partition has READY chunks (never chunk data)."""
    partition: int


_enc = msgspec.msgpack.Encoder()


class KafkaSettings(msgspec.Struct, frozen=True, kw_only=True):
    bootstrap_servers: str
    topic: str = "chunkd.work-notification"
    group: str = "chunkd"
    partitions: int = 8
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None

    def client_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"bootstrap_servers": self.bootstrap_servers,
                                "security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            opts.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                        sasl_plain_password=self.sasl_password)
        if self.security_protocol in ("SSL", "SASL_SSL"):
            opts["ssl_context"] = ssl.create_default_context(cafile=self.ssl_cafile)
        return opts


class _Listener(ConsumerRebalanceListener):
    def __init__(self, channel: "KafkaChannel") -> None:
        self.channel = channel

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.channel._set_owned(self.channel.owned - {tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.channel._set_owned(self.channel.owned | {tp.partition for tp in assigned})


# aiokafka's default (5 minutes) would keep an empty assignment that long after a
# memory-only broker restarted without the topic; one metadata request per 5 s is cheap.
_METADATA_MAX_AGE_MS = 5000


class KafkaChannel:
    name = "kafka"

    def __init__(self, settings: KafkaSettings) -> None:
        self.s = settings
        self.partitions = settings.partitions
        self.owned: set[int] = set()
        self.assignment_changed = anyio.Event()
        self._local: LocalSignals | None = None
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._connected = False
        self._pending: dict[int, int] = {}      # partition -> next offset seen
        self._ackable: dict[int, int] = {}      # partition -> offset safe to commit

    # ---------------------------------------------------------------- set-up
    async def prepare(self) -> int:
        """Create the topic if missing (its existing partition count is respected).
        Returns the partition count the daemon must use."""
        admin = AIOKafkaAdminClient(**self.s.client_options())
        await admin.start()
        try:
            try:
                await admin.create_topics([NewTopic(self.s.topic, num_partitions=self.s.partitions,
                                                    replication_factor=1)])
                log.info("created topic", topic=self.s.topic, partitions=self.s.partitions)
            except TopicAlreadyExistsError:
                pass
            described = await admin.describe_topics([self.s.topic])
            count = len(described[0]["partitions"]) or self.s.partitions
        finally:
            await admin.close()
        self.partitions = count
        self._local = LocalSignals(count)
        return count

    def signal(self, partition: int) -> PartitionSignal:
        assert self._local is not None
        return self._local.signal(partition)

    def owns(self, partition: int) -> bool:
        return partition in self.owned

    def connected(self) -> bool:
        return self._connected

    def _set_owned(self, owned: set[int]) -> None:
        if owned != self.owned:
            log.info("kafka partitions assigned", partitions=sorted(owned))
        self.owned = owned
        ev, self.assignment_changed = self.assignment_changed, anyio.Event()
        ev.set()
        if self._local is not None:
            self._local.wake(owned)

    # ---------------------------------------------------------------- hints
    async def publish(self, partitions: Iterable[int]) -> None:
        parts = sorted(set(partitions))
        if not parts:
            return
        if self._local is not None:
            self._local.wake(p for p in parts if p in self.owned)
        try:
            if self._producer is None:
                producer = AIOKafkaProducer(linger_ms=5, acks=1, request_timeout_ms=5000, **self.s.client_options())
                await producer.start()
                self._producer = producer
            for p in parts:
                await self._producer.send(self.s.topic, _enc.encode(WorkNotice(p)), partition=p % self.partitions)
        except (KafkaError, OSError) as e:
            # a lost hint only delays work: consumers poll, maintenance re-publishes
            log.warning("publish to kafka failed", error=repr(e))
            await self._drop_producer()

    async def ring_leader(self) -> None:
        """Not carried: a topic's partition reaches one daemon of the group, not the leader.
        A follower's closed step waits for the leader's next full pass (CHUNKD_MAINTENANCE_INTERVAL)."""

    def on_leader_rung(self, ring: Callable[[], None]) -> None:
        return None

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with anyio.move_on_after(2, shield=True):
                try:
                    await producer.stop()
                except Exception:  # noqa: BLE001 - it is broken already
                    pass

    def acked(self, partition: int) -> None:
        """The partition's consumer claimed after the hints seen so far: they may be committed."""
        if partition in self._pending:
            self._ackable[partition] = self._pending[partition]

    # ---------------------------------------------------------------- consuming
    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        started = False

        def once() -> None:  # the caller goes on after the first connection or the first failure
            nonlocal started
            if not started:
                started = True
                task_status.started()
        delay = 0.5
        while True:
            began = anyio.current_time()
            try:
                await self._consume(once)
            except Exception as e:  # noqa: BLE001 - the consumer outlives any broker or client fault
                if anyio.current_time() - began > 30:
                    delay = 0.5  # it had been running well: this is a new outage, not the same one
                log.warning("kafka consumer failed; reconnecting", error=repr(e), retry_in=delay)
            self._connected = False
            once()
            await anyio.sleep(delay)
            delay = min(delay * 2, 5.0)
            try:
                await self.prepare_again()
            except Exception:  # noqa: BLE001 - retried on the next round
                pass

    async def prepare_again(self) -> None:
        """After a broker restart a memory-only broker has forgotten the topic."""
        admin = AIOKafkaAdminClient(request_timeout_ms=3000, **self.s.client_options())
        await admin.start()
        try:
            try:
                await admin.create_topics([NewTopic(self.s.topic, num_partitions=self.partitions,
                                                    replication_factor=1)])
            except TopicAlreadyExistsError:
                pass
        finally:
            await admin.close()

    async def _consume(self, connected: Callable[[], None]) -> None:
        consumer = AIOKafkaConsumer(group_id=self.s.group, enable_auto_commit=False, auto_offset_reset="latest",
                                    session_timeout_ms=6000, heartbeat_interval_ms=1500,
                                    max_poll_interval_ms=60000, metadata_max_age_ms=_METADATA_MAX_AGE_MS,
                                    **self.s.client_options())
        await consumer.start()
        self._consumer = consumer
        try:
            consumer.subscribe([self.s.topic], listener=_Listener(self))
            self._connected = True
            connected()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_broker, consumer)
                await self._fetch(consumer)
        finally:
            self._connected = False
            self._consumer = None
            if self.owned:
                self._set_owned(set())  # a rebuilt consumer is assigned afresh
            with anyio.move_on_after(5, shield=True):
                try:
                    await consumer.stop()  # leaves the group cleanly
                except Exception:  # noqa: BLE001
                    pass

    async def _fetch(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            # getmany() waits without limit while a rebalance is pending, and a rebalance with
            # the broker gone never ends: the loop must go on (commits, the "owned" set).
            batch: dict[Any, Any] = {}
            with anyio.move_on_after(1):
                batch = await consumer.getmany(timeout_ms=500)
            for tp, messages in batch.items():
                if messages:
                    self._pending[tp.partition] = messages[-1].offset + 1
                    assert self._local is not None
                    self._local.wake([tp.partition])
            await self._commit(consumer)
            # a dead group coordinator or a vanished topic shows up here
            if not consumer.assignment() and self.owned:
                self._set_owned(set())

    async def _watch_broker(self, consumer: AIOKafkaConsumer) -> None:
        """Readiness and recovery, apart from the fetch loop (which a dead broker can stall).
        A memory-only broker comes back empty: the topic is made again at once, and the
        consumer's short metadata age lets the group see its partitions within seconds."""
        lost = False
        while True:
            reachable = await self._probe()
            if not reachable:
                lost = True
            elif lost or not consumer.partitions_for_topic(self.s.topic):
                try:
                    await self.prepare_again()
                    lost = False
                except (KafkaError, OSError) as e:
                    log.info("topic not made yet", error=repr(e))
            else:
                await self._export_lag(consumer)
            await anyio.sleep(2)

    async def _probe(self) -> bool:
        """aiokafka retries a lost broker quietly (getmany just returns nothing), so readiness
        asks the network directly: can any bootstrap server be reached?"""
        reachable, error = False, ""
        for server in self.s.bootstrap_servers.split(","):
            host, _, port = server.strip().rpartition(":")
            try:
                with anyio.fail_after(2):
                    stream = await anyio.connect_tcp(host.strip("[]") or "localhost", int(port or 9092))
                await stream.aclose()
                reachable = True
                break
            except (OSError, TimeoutError, ValueError) as e:
                error = repr(e)
        if reachable != self._connected:
            if reachable:
                log.info("kafka broker reachable")
            else:
                log.warning("kafka broker unreachable", error=error)
        self._connected = reachable
        return reachable

    async def _export_lag(self, consumer: AIOKafkaConsumer) -> None:
        KAFKA_LAG.clear()
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            try:
                with anyio.move_on_after(1):
                    KAFKA_LAG.labels(str(tp.partition)).set(max(0, high - await consumer.position(tp)))
            except KafkaError:
                pass

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        offsets = {TopicPartition(self.s.topic, p): o for p, o in self._ackable.items() if p in self.owned}
        self._ackable.clear()
        if offsets:
            try:
                with anyio.move_on_after(2):  # a commit waits for the coordinator: not during an outage
                    await consumer.commit(offsets)
            except KafkaError as e:
                log.info("offset commit skipped (rebalance in progress?)", error=repr(e))

    async def close(self) -> None:
        await self._drop_producer()
