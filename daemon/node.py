"""Wiring: one daemon process = store + channel + the actor tree, and its shutdown."""
from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec
import structlog

from actors.completer import complete_forever
from actors.consumer import consume_partition
from actors.engine import Engine
from actors.executor import execute_partition
from actors.heartbeat import Heartbeat
from actors.maintenance import Maintenance
from actors.runtime import Supervisor
from actors.scheduler import Scheduler
from channels.base import Channel
from channels.postgres import PostgresChannel
from metrics import CHUNKS_RELEASED, IN_FLIGHT, MAILBOX_DEPTH, PARTITIONS_ASSIGNED, POOL_IN_USE, POOL_SIZE
from storage.errors import TRANSIENT
from storage.store import Store
from storage.types import ClaimedChunk

from .auth import check_exposure, load_tokens
from .config import Config
from .http import bind, build_app, serve
from .registry import Registry

log = structlog.get_logger("chunkd.node")

_LIVENESS_STALE = 15.0  # seconds without a tick before /healthz fails


async def open_store(cfg: Config, dsn: str, on_query: Callable[[Any], None] | None = None) -> Store:
    store = await Store.open(dsn, cfg.partitions, min_size=2, max_size=cfg.pool_size, on_query=on_query)
    applied = await store.migrate()
    if applied:
        log.info("migrations applied", migrations=applied)
    return store


class Node:
    """A running daemon. `run()` returns when `stop()` is called or a signal arrives."""

    def __init__(self, cfg: Config, registry: Registry, dsn: str,
                 on_query: Callable[[Any], None] | None = None) -> None:
        self.cfg = cfg
        self.on_query = on_query
        self.registry = registry
        self.dsn = dsn
        self._stop = anyio.Event()
        self.engine: Engine | None = None
        self.ready = anyio.Event()

        self.http_port: int | None = None
        self._tick_at = time.monotonic()
        self._migrated = False
        self._mailboxes: list[anyio.abc.ObjectSendStream[ClaimedChunk]] = []

    def stop(self) -> None:
        self._stop.set()

    # ---------------------------------------------------------------- health
    def liveness_problems(self) -> list[str]:
        stale = time.monotonic() - self._tick_at
        return [f"the actor tree has not ticked for {stale:.0f}s"] if stale > _LIVENESS_STALE else []

    async def readiness_problems(self) -> list[str]:
        problems = []
        engine = self.engine
        if self._stop.is_set():
            problems.append("shutting down")
        if engine is None or not self._migrated:
            return problems + ["starting: database not opened or migrations not applied"]
        try:
            with anyio.fail_after(2):
                await engine.store.pool.fetchval("SELECT 1")
        except Exception as e:  # noqa: BLE001 - any failure means not ready
            problems.append(f"database unreachable: {type(e).__name__}")
        if not engine.channel.connected():
            problems.append(f"{engine.channel.name} channel not connected")
        return problems

    async def _tick(self, engine: Engine) -> None:
        """Liveness tick and the gauges nobody else sets."""
        while True:
            self._tick_at = time.monotonic()
            PARTITIONS_ASSIGNED.set(sum(1 for p in range(self.cfg.partitions) if engine.channel.owns(p)))
            MAILBOX_DEPTH.labels("completer").set(engine.completer_send.statistics().current_buffer_used)
            MAILBOX_DEPTH.labels("step-executor").set(
                sum(m.statistics().current_buffer_used for m in self._mailboxes))
            IN_FLIGHT.set(sum(engine.inflight.running))
            POOL_SIZE.set(engine.store.pool.get_size())
            POOL_IN_USE.set(engine.store.pool.get_size() - engine.store.pool.get_idle_size())
            await anyio.sleep(1)

    async def run(self, *, handle_signals: bool = True) -> None:
        cfg = self.cfg
        self.tokens = load_tokens(cfg)
        check_exposure(cfg, self.tokens)
        sock = None
        if cfg.http_addr is not None:
            sock = bind(*cfg.http_addr)  # before anything else: a taken port is a start-up error
            self.http_port = sock.getsockname()[1]
        store = await open_store(cfg, self.dsn, self.on_query)
        self._migrated = True
        channel = make_channel(cfg, self.dsn)
        partitions = await _prepare(channel)
        if partitions != cfg.partitions:  # an existing Kafka topic's partition count wins
            log.info("using the topic's partition count", partitions=partitions)
            cfg = self.cfg = msgspec.structs.replace(cfg, partitions=partitions)
            store.partitions = partitions
        node_id = await store.register_node(cfg.node_id, os.getpid())
        structlog.contextvars.bind_contextvars(node=cfg.node_id)
        engine = self.engine = Engine(cfg, store, channel, self.registry, node_id, self.dsn)
        heartbeat = Heartbeat(self.dsn, node_id, cfg.lease_seconds, cfg.heartbeat_seconds, engine.inflight.held,
                              lambda: [p for p in range(cfg.partitions) if channel.owns(p)])
        heartbeat.start()
        sup = Supervisor()
        log.info("daemon started", node_id=node_id, partitions=cfg.partitions,
                 concurrency=cfg.partition_concurrency, jobs=self.registry.names(),
                 http=f"{cfg.http_addr[0]}:{self.http_port}" if cfg.http_addr else "off")
        try:
            async with anyio.create_task_group() as background:
                await background.start(channel.run)
                scheduler = Scheduler(engine)
                if cfg.scheduling:
                    try:
                        await scheduler.register()  # declared schedules exist once the API answers
                    except TRANSIENT as e:
                        log.warning("registering schedules failed; the scheduler retries", error=repr(e))
                background.start_soon(self._tick, engine)
                if sock is not None:
                    background.start_soon(sup.supervise, "http", "http", self._http_runner(sock))
                maintenance = Maintenance(engine)
                background.start_soon(sup.supervise, "maintenance", "maintenance", maintenance.run)
                background.start_soon(sup.supervise, "scheduler", "scheduler", scheduler.run)
                if handle_signals:
                    background.start_soon(self._signals)
                async with anyio.create_task_group() as completer_tg:
                    completer_tg.start_soon(sup.supervise, "completer", "completer",
                                            lambda: complete_forever(engine))
                    await self._work(engine, sup)
                    # executors are done: let the completer drain and exit
                    engine.completer_send.close()
                # Everything this process still owns, including a claim whose result was lost
                # to the consumers' cancellation: the node id is unique to this process.
                released = await store.release_owned(node_id)
                if released:
                    CHUNKS_RELEASED.inc(len(released))
                    await channel.publish({p for p in released})
                background.cancel_scope.cancel()
        finally:
            heartbeat.stop()
            with anyio.CancelScope(shield=True):
                try:
                    await store.unregister_node(node_id)
                except Exception:  # noqa: BLE001 - the row is purged later anyway
                    pass
                await channel.close()
                await engine.reader.close()
                await store.close()
            log.info("daemon stopped")

    def _http_runner(self, sock: socket.socket) -> Callable[[], Awaitable[None]]:
        app = build_app(self, self.tokens)
        first = [sock]

        async def run() -> None:
            assert self.cfg.http_addr is not None
            s = first.pop() if first else bind(self.cfg.http_addr[0], self.http_port or 0)
            await serve(app, s)
        return run

    async def _work(self, engine: Engine, sup: Supervisor) -> None:
        """Consumers and executors until stop; then the grace period for running steps."""
        cfg = self.cfg
        cap = cfg.partition_concurrency + cfg.claim_batch
        async with anyio.create_task_group() as executors:
            async with anyio.create_task_group() as consumers:
                for p in range(cfg.partitions):
                    send, recv = anyio.create_memory_object_stream[ClaimedChunk](max_buffer_size=cap)
                    self._mailboxes.append(send)
                    executors.start_soon(self._workers, engine, sup, p, recv)
                    consumers.start_soon(sup.supervise, f"consumer-{p}", "partition-consumer",
                                         _consumer(engine, p, send))
                self.ready.set()
                await self._stop.wait()
                engine.stopping = True  # stop claiming; workers start nothing new
                consumers.cancel_scope.cancel()
            log.info("shutting down: waiting for running steps", grace_seconds=cfg.shutdown_grace_seconds)
            executors.cancel_scope.deadline = anyio.current_time() + cfg.shutdown_grace_seconds

    @staticmethod
    async def _workers(engine: Engine, sup: Supervisor, p: int,
                       recv: anyio.abc.ObjectReceiveStream[ClaimedChunk]) -> None:
        async with recv, anyio.create_task_group() as tg:
            for w in range(engine.cfg.partition_concurrency):
                tg.start_soon(sup.supervise, f"executor-{p}-{w}", "step-executor",
                              _executor(engine, p, recv))
            # workers exit when the consumer's send side closes and the mailbox drains

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for sig in signals:
                if self._stop.is_set():
                    log.warning("second signal: exiting at once", signal=sig.name)
                    os._exit(1)
                log.info("signal received: shutting down", signal=sig.name)
                self._stop.set()


async def _prepare(channel: Channel) -> int:
    """A broker that is down at start-up delays the start; it is not a crash."""
    delay = 0.5
    while True:
        try:
            return await channel.prepare()
        except Exception as e:  # noqa: BLE001 - transport errors differ per channel
            log.warning("channel not reachable; retrying", channel=channel.name, error=repr(e), retry_in=delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, 5.0)


def make_channel(cfg: Config, dsn: str) -> Channel:
    if cfg.channel == "kafka":
        from channels.kafka import KafkaChannel, KafkaSettings
        return KafkaChannel(KafkaSettings(
            bootstrap_servers=cfg.kafka_bootstrap_servers, topic=cfg.kafka_topic, group=cfg.kafka_group,
            partitions=cfg.kafka_partitions or cfg.partitions, security_protocol=cfg.kafka_security_protocol.upper(),
            sasl_mechanism=cfg.kafka_sasl_mechanism or None, sasl_username=cfg.kafka_sasl_username or None,
            sasl_password=cfg.kafka_sasl_password or None, ssl_cafile=cfg.kafka_ssl_cafile or None))
    return PostgresChannel(dsn, cfg.partitions)


def _consumer(engine: Engine, p: int, send: anyio.abc.ObjectSendStream[ClaimedChunk]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        try:
            await consume_partition(engine, p, send)  # type: ignore[arg-type]
        finally:
            if engine.stopping:
                send.close()
    return run


def _executor(engine: Engine, p: int, recv: anyio.abc.ObjectReceiveStream[ClaimedChunk]) -> Callable[[], Awaitable[None]]:
    return lambda: execute_partition(engine, p, recv)  # type: ignore[arg-type]
