"""Wiring: one daemon process = store + channel + the actor tree, and its shutdown."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec
import structlog

from actors.engine import Engine, steps_running
from actors.heartbeat import Heartbeat
from actors.maintenance import Maintenance
from actors.operations import Operations
from actors.pipeline import STARVED_AFTER, Pipeline
from actors.registry import Registry
from actors.scheduler import Scheduler
from actors.stopper import watch_ended
from actors.supervisor import Supervisor
from channels.base import Channel
from channels.postgres import PostgresChannel
from daemon.http.ports import HttpSettings
from daemon.http.server import bind, build_app, serve
from daemon.jobs import configure_builtins, sandbox
from daemon.wiring import early_signals
from daemon.wiring.config import Config
from daemon.wiring.leaders import LeaderWatch
from daemon.wiring.logs import route_loop_errors
from daemon.wiring.startup import until_reachable
from daemon.wiring.tokens import check_exposure, load_tokens
from metrics import (
    CHUNKS_RELEASED,
    DB_ABANDONED,
    DB_QUIET_SECONDS,
    EXECUTOR_WORKERS,
    IN_FLIGHT,
    MAILBOX_DEPTH,
    PARTITIONS_ASSIGNED,
    POOL_IN_USE,
    POOL_SIZE,
    SETTING,
    STEPS_RUNNING,
)
from storage.deadlines import keep_alive
from storage.errors import TRANSIENT
from storage.schedules import Schedules
from storage.store import Store

log = structlog.get_logger("chunkd.node")

_LIVENESS_STALE = 15.0  # seconds without a tick before /healthz fails
# Shutdown after the grace period: the completer's drain, handing back what this daemon
# still holds and closing its connections share SHUTDOWN_BOUND seconds in all, whatever the
# database or the steps do (a plain-function step still running in its thread is abandoned
# at the grace's end, its chunk handed back READY). So SIGTERM ends within
# CHUNKD_SHUTDOWN_GRACE_SECONDS + SHUTDOWN_BOUND; the watchdog exits 1 a few seconds later
# should anything still hang. Kubernetes manifests give the pod at least that much.
SHUTDOWN_BOUND = 15.0
_COMPLETER_DRAIN = 10.0  # at most this much of the bound for the completer's flush
_CLEANUP = 5.0           # at most this much for each shutdown step that talks to the database
_WATCHDOG_MARGIN = 5.0


async def open_store(cfg: Config, dsn: str, on_query: Callable[[Any], None] | None = None) -> Store:
    store = await Store.open(dsn, cfg.partitions, min_size=2, max_size=cfg.pool_size, on_query=on_query,
                             deadlines=cfg.deadlines())
    try:
        applied = await store.migrate()
    except BaseException:
        store.pool.terminate()  # start-up retries: no pool left behind per attempt
        raise
    if applied:
        log.info("migrations applied", migrations=applied)
    return store


def effective_settings(cfg: Config) -> dict[str, int]:
    """The claim and executor settings in effect (chunkd_setting, the bench's report)."""
    eff = cfg.effective()
    return {"partitions": cfg.partitions, "partition_concurrency": eff.partition_concurrency,
            "claim_batch": eff.claim_batch, "completer_batch": cfg.completer_batch,
            "adaptive_concurrency": int(eff.adaptive_concurrency), "adaptive_claim": int(eff.adaptive_claim)}


def publish_settings(cfg: Config) -> dict[str, int]:
    values = effective_settings(cfg)
    for name, v in values.items():
        SETTING.labels(name).set(v)
    return values


class Node:
    """A running daemon. `run()` returns when `stop()` is called or a signal arrives."""

    def __init__(self, cfg: Config, registry: Registry, dsn: str,
                 on_query: Callable[[Any], None] | None = None) -> None:
        self.cfg = cfg
        self.http = HttpSettings(addr=cfg.http_addr, allowed_hosts=cfg.api_allowed_hosts, max_submits=cfg.api_max_submits)
        self.on_query = on_query
        self.registry = registry
        configure_builtins(registry, cfg.retention, cfg.retention_failed, cfg.retention_every)
        self.dsn = dsn
        self._stop = anyio.Event()
        self.engine: Engine | None = None
        self.pipeline: Pipeline | None = None
        self.ops: Operations | None = None  # the HTTP room's port (daemon/http/ports.py)
        self.leaders: LeaderWatch | None = None  # is anything advancing (/readyz)
        self.ready = anyio.Event()

        self.http_port: int | None = None
        self._tick_at = time.monotonic()
        self._migrated = False
        self._phase = "starting"  # what start-up waits for, as /readyz says it
        self._heartbeat: Heartbeat | None = None

    def stop(self) -> None:
        self._stop.set()

    # ---------------------------------------------------------------- health
    def liveness_problems(self) -> list[str]:
        now = time.monotonic()
        stale = now - self._tick_at
        problems = [f"the actor tree has not ticked for {stale:.0f}s"] if stale > _LIVENESS_STALE else []
        engine = self.engine
        if engine is not None and not self._stop.is_set():
            # Rule 12: a daemon whose database calls all hang (connections gone silent and
            # not recovered by dropping them) must not say it is alive, so a supervisor
            # restarts it. The store's probe keeps an idle daemon's round trips current.
            quiet, bound = now - engine.store.last_round_trip, engine.store.deadlines.unhealthy
            if quiet > bound:
                problems.append(f"no round trip with the database for {quiet:.0f}s (the bound is {bound:.0f}s)")
        return problems

    async def readiness_problems(self) -> list[str]:
        problems = []
        engine = self.engine
        if self._stop.is_set():
            problems.append("shutting down")
        if engine is None or not self._migrated:
            return problems + [f"starting: {self._phase}"]
        try:
            with anyio.fail_after(2):
                await engine.store.pool.fetchval("SELECT 1")
        except Exception as e:  # noqa: BLE001 - any failure means not ready
            problems.append(f"database unreachable: {type(e).__name__}")
        if not engine.channel.connected():
            problems.append(f"{engine.channel.name} channel not connected")
        if self.leaders is not None and (leaderless := self.leaders.problem()):
            problems.append(leaderless)
        if self.pipeline is not None and self.pipeline.starved:
            problems.append(f"no {engine.channel.name} partition assigned for over {STARVED_AFTER:.0f}s while "
                            "READY chunks wait; claiming from every partition until one is")
        return problems

    async def _tick(self) -> None:
        """Liveness tick (from the first moment: a daemon waiting for its broker is alive)
        and the gauges nobody else sets."""
        while True:
            self._tick_at = time.monotonic()
            engine = self.engine
            if engine is not None:
                await self._gauges(engine)
            await anyio.sleep(1)

    async def _gauges(self, engine: Engine) -> None:
        assigned = self._set_gauges(engine)
        with anyio.move_on_after(2):  # the liveness tick must not wait on the database
            if self.pipeline is not None:
                await self.pipeline.check_starved(assigned)
            if self.leaders is not None:
                await self.leaders.check()

    def _set_gauges(self, engine: Engine) -> int:
        assigned = sum(1 for p in range(self.cfg.partitions) if engine.channel.owns(p))
        PARTITIONS_ASSIGNED.set(assigned)
        if self.pipeline is not None:
            completer, executors = self.pipeline.mailbox_depths()
            MAILBOX_DEPTH.labels("completer").set(completer)
            MAILBOX_DEPTH.labels("step-executor").set(executors)
            for p, pool in enumerate(self.pipeline.pools):
                EXECUTOR_WORKERS.labels(str(p)).set(pool.workers - pool.retire)
        IN_FLIGHT.set(sum(engine.inflight.running))
        DB_QUIET_SECONDS.set(time.monotonic() - engine.store.last_round_trip)
        for p, n in steps_running(engine.stops.slots).items():
            STEPS_RUNNING.labels(str(p)).set(n)
        POOL_SIZE.set(engine.store.pool.get_size())
        POOL_IN_USE.set(engine.store.pool.get_size() - engine.store.pool.get_idle_size())
        return assigned

    async def run(self, *, handle_signals: bool = True) -> None:
        cfg = self.cfg
        structlog.contextvars.bind_contextvars(node=cfg.node_id)  # before any task starts: they all log it
        route_loop_errors(asyncio.get_running_loop())
        self.tokens = load_tokens(cfg)
        check_exposure(cfg, self.tokens)
        sock = None
        if cfg.http_addr is not None:
            sock = bind(*cfg.http_addr)  # before anything else: a taken port is a start-up error
            self.http_port = sock.getsockname()[1]
        sup = Supervisor()
        # Probes answer from the moment the port is bound: /healthz alive, /readyz 503 naming
        # what start-up waits for (the database, migrations, the broker).
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._tick)
            if sock is not None:
                outer.start_soon(sup.supervise, "http", "http", self._http_runner(sock))
            if handle_signals:
                outer.start_soon(self._signals)
            try:
                await self._run(sup)
            finally:
                outer.cancel_scope.cancel()

    async def _run(self, sup: Supervisor) -> None:
        connected = await self._connect()
        if connected is None:  # stopped while waiting
            return
        store, channel = connected
        cfg = self.cfg
        node_id = await store.register_node(cfg.node_id, os.getpid(), sorted(self.registry.schedules))
        engine = Engine(cfg.actor_settings(), store, channel, self.registry, node_id, self.dsn)
        self.pipeline = Pipeline(cfg.pipeline_settings(_COMPLETER_DRAIN), engine, sup)
        heartbeat = Heartbeat(self.dsn, node_id, cfg.lease_seconds, cfg.heartbeat_seconds, engine.inflight.held,
                              lambda: [p for p in range(cfg.partitions) if channel.owns(p)])
        heartbeat.start()
        self._heartbeat = heartbeat
        effective = publish_settings(cfg)
        log.info("daemon started", node_id=node_id, partitions=cfg.partitions,
                 concurrency=cfg.partition_concurrency, claim_batch=cfg.claim_batch,
                 adapted=[k for k in ("adaptive_concurrency", "adaptive_claim") if effective[k]],
                 jobs=self.registry.names(),
                 http=f"{cfg.http_addr[0]}:{self.http_port}" if cfg.http_addr else "off",
                 event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0])
        try:
            await self._serve(engine, sup)
        finally:
            heartbeat.stop()
            with anyio.CancelScope(shield=True):
                await self._close(engine)
            log.info("daemon stopped")

    async def _connect(self) -> tuple[Store, Channel] | None:
        """The database (migrated) and the channel, or None if stopped while waiting."""
        cfg = self.cfg
        sandbox.configure(cfg.export_dir, cfg.export_tables)
        self._phase = "opening the database and applying migrations"
        # Postgres not up yet or restarting: wait and retry, /readyz says so (startup.py)
        store = await until_reachable(lambda: open_store(cfg, self.dsn, self.on_query), self.dsn, self._stop,
                                      lambda why: setattr(self, "_phase", why))
        if store is None:  # stopped while waiting
            return None
        self._migrated = True
        channel = make_channel(cfg, self.dsn)
        self._phase = (f"waiting for the Kafka broker at {cfg.kafka_bootstrap_servers}" if channel.name == "kafka"
                       else f"connecting the {channel.name} channel")
        partitions = await _prepare(channel, self._stop)
        if partitions is None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CLEANUP):
                await store.close()
            return None
        if partitions != cfg.partitions:  # an existing Kafka topic's partition count wins
            log.info("using the topic's partition count", partitions=partitions)
            self.cfg = msgspec.structs.replace(cfg, partitions=partitions)
            store.partitions = partitions
        return store, channel

    async def _serve(self, engine: Engine, sup: Supervisor) -> None:
        """The actors, until stop: background ones supervised, then the work, then a bounded drain."""
        store, channel = engine.store, engine.channel
        channel.on_leader_rung(engine.doorbell.ring)  # a follower's completer closed a step
        async with anyio.create_task_group() as background:
            await background.start(channel.run)
            scheduler = Scheduler(engine.settings.scheduler, store, channel, self.registry, engine.reader)
            if self.cfg.scheduling:
                try:
                    await scheduler.register()  # declared schedules exist once the API answers
                except TRANSIENT as e:
                    log.warning("registering schedules failed; the scheduler retries", error=repr(e))
            self.leaders = LeaderWatch(store, self.cfg.scheduling, self.cfg.maintenance_interval)
            self.engine = engine
            self.ops = Operations(engine, Schedules(store.pool))  # the API serves from here on
            self._set_gauges(engine)  # at once, not at the next tick
            maintenance = Maintenance(engine.settings.maintenance, store, channel, self.registry, engine.reader,
                                      engine.node_id, doorbell=engine.doorbell)
            background.start_soon(sup.supervise, "maintenance", "maintenance", maintenance.run)
            background.start_soon(sup.supervise, "scheduler", "scheduler", scheduler.run)
            background.start_soon(sup.supervise, "stopper", "stopper", lambda: watch_ended(store, engine.inflight, engine.stops))
            background.start_soon(self._probe_db, store)
            background.start_soon(self._abandon_stalled, store)
            assert self.pipeline is not None  # made with the engine (_run)
            await self.pipeline.run(self._stop, self.ready, self._budget)
            # Everything this process still owns, including a claim whose result was lost
            # to the consumers' cancellation or whose step was abandoned in its thread: the
            # node id is unique to this process. Their late results would be refused anyway
            # (CHUNK_COMPLETE wants IN_PROGRESS with the claimed attempt), but none comes:
            # nothing waits for an abandoned thread.
            with anyio.move_on_after(self._budget(_CLEANUP)):
                try:
                    released = await store.release_owned(engine.node_id)
                    if released:
                        CHUNKS_RELEASED.inc(len(released))
                        await channel.publish({p for p in released})
                except TRANSIENT as e:
                    log.warning("could not release held chunks; their leases expire instead", error=repr(e))
            background.cancel_scope.cancel()

    async def _probe_db(self, store: Store) -> None:
        """An idle daemon makes no round trips of its own: one trivial query a heartbeat
        period after the last, so "no round trip" means "cannot", not "had nothing to do"."""
        period = self.cfg.heartbeat_seconds
        while True:
            await anyio.sleep(period)
            if time.monotonic() - store.last_round_trip >= period:
                with anyio.move_on_after(store.deadlines.stall):
                    await store.alive()  # a success returns a connection: that stamps the round trip

    async def _abandon_stalled(self, store: Store) -> None:
        """Rule 12: no round trip on the pool, or no heartbeat renewed, for the stall bound (the
        lease, at least 5 s): the connections are taken for silent (a NAT or firewall that
        forgot them sends no FIN or RST) and all dropped; the pool dials anew. Whatever this
        daemon held meanwhile is rescued elsewhere if its lease ran out, and its late
        results are refused by the attempt fence."""
        stall = store.deadlines.stall
        every = min(1.0, stall / 5)
        dropped_at = float("-inf")
        while True:
            asleep = time.monotonic()
            await anyio.sleep(every)
            now = time.monotonic()
            if now - asleep > every + 1.0:
                continue  # the event loop itself was blocked (a step that never awaits): not the network's fault
            quiet = now - store.last_round_trip
            unbeaten = now - self._heartbeat.last_ok if self._heartbeat is not None else 0.0
            if max(quiet, unbeaten) >= stall and now - dropped_at >= stall:
                dropped_at = now
                n = await store.abandon_connections()
                DB_ABANDONED.inc(n)
                log.warning("no database round trip or heartbeat within the stall bound: dropped every "
                            "connection; reconnecting", quiet_seconds=round(quiet, 1),
                            heartbeat_seconds_ago=round(unbeaten, 1), stall_seconds=stall, connections=n)

    def _budget(self, cap: float) -> float:
        """Seconds a shutdown step may take: `cap`, or what is left of SHUTDOWN_BOUND after the grace."""
        ends = self.pipeline.grace_ends_at if self.pipeline is not None else None
        if ends is None:
            return cap
        return max(0.0, min(cap, ends + SHUTDOWN_BOUND - anyio.current_time()))

    async def _close(self, engine: Engine) -> None:
        """Each step bounded: a database that is away must not hold the exit."""
        store = engine.store
        with anyio.move_on_after(self._budget(_CLEANUP)):
            try:
                await store.unregister_node(engine.node_id)
            except Exception:  # noqa: BLE001 - the leader forgets dead nodes' rows anyway
                pass
        with anyio.move_on_after(self._budget(_CLEANUP)):
            await engine.channel.close()
        with anyio.move_on_after(self._budget(_CLEANUP)):
            await engine.reader.close()
        with anyio.move_on_after(self._budget(_CLEANUP)) as closing:
            await store.close()
        if closing.cancelled_caught:
            store.pool.terminate()

    def _http_runner(self, sock: socket.socket) -> Callable[[], Awaitable[None]]:
        app = build_app(self, self.tokens)
        first = [sock]

        async def run() -> None:
            assert self.cfg.http_addr is not None
            s = first.pop() if first else bind(self.cfg.http_addr[0], self.http_port or 0)
            await serve(app, s)
        return run

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            opened = anyio.current_time()
            # Taken while the process still started, before we listened. One that came after
            # the event loop started is also in the loop's wake-up fd and is delivered here
            # again at once: that echo is not an operator's second signal.
            echoes = len(early_signals.received)
            if echoes:
                log.info("signal received during start-up: shutting down", signal=signal.Signals(
                    early_signals.received[0]).name)
                self._stop.set()
                _watchdog(self.cfg.shutdown_grace_seconds + SHUTDOWN_BOUND + _WATCHDOG_MARGIN)
            async for sig in signals:
                if echoes and anyio.current_time() - opened < _ECHO_SECONDS:
                    echoes -= 1
                    continue
                if self._stop.is_set():
                    log.warning("second signal: exiting at once", signal=sig.name)
                    os._exit(1)
                log.info("signal received: shutting down", signal=sig.name)
                self._stop.set()
                _watchdog(self.cfg.shutdown_grace_seconds + SHUTDOWN_BOUND + _WATCHDOG_MARGIN)


_ECHO_SECONDS = 1.0  # an early signal's echo through the loop's wake-up fd comes within this


def _watchdog(seconds: float) -> None:
    """Shutdown is bounded by design (grace, completer drain, cleanup steps); this thread
    is the last resort should anything still hang (rule 5: SIGTERM always ends)."""
    def expire() -> None:
        log.error("shutdown did not finish in time; exiting", seconds=seconds)
        os._exit(1)
    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def leave_lingering_step_threads() -> None:
    """After run(): plain-function steps abandoned at the grace's end may still be running in
    their (non-daemon) threads, and the interpreter would wait for them at exit, however
    long they run. Their chunks are handed back already: leave without them."""
    deadline = time.monotonic() + 0.5  # idle worker threads are told to stop with the loop
    for t in threading.enumerate():
        if t is not threading.current_thread() and not t.daemon:
            t.join(max(0.0, deadline - time.monotonic()))
    busy = [t.name for t in threading.enumerate()
            if t is not threading.current_thread() and not t.daemon and t.is_alive()]
    if busy:
        log.warning("exiting without steps still running in threads; their chunks were handed back",
                    threads=len(busy))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


async def _prepare(channel: Channel, stop: anyio.Event) -> int | None:
    """A broker that is down at start-up delays the start; it is not a crash. None when
    the daemon is told to stop meanwhile."""
    delay = 0.5
    while not stop.is_set():
        try:
            with anyio.fail_after(30):
                return await channel.prepare()
        except Exception as e:  # noqa: BLE001 - transport errors differ per channel
            log.warning("channel not reachable; retrying", channel=channel.name, error=repr(e), retry_in=delay)
            with anyio.move_on_after(delay):
                await stop.wait()
            delay = min(delay * 2, 5.0)
    return None


def make_channel(cfg: Config, dsn: str) -> Channel:
    if cfg.channel == "kafka":
        from channels.kafka import KafkaChannel, KafkaSettings
        return KafkaChannel(KafkaSettings(
            bootstrap_servers=cfg.kafka_bootstrap_servers, topic=cfg.kafka_topic, group=cfg.kafka_group,
            partitions=cfg.kafka_partitions or cfg.partitions, security_protocol=cfg.kafka_security_protocol.upper(),
            sasl_mechanism=cfg.kafka_sasl_mechanism or None, sasl_username=cfg.kafka_sasl_username or None,
            sasl_password=cfg.kafka_sasl_password or None, ssl_cafile=cfg.kafka_ssl_cafile or None))
    deadline = cfg.deadlines().statement
    return PostgresChannel(dsn, cfg.partitions, timeout=deadline, on_connect=lambda c: keep_alive(c, deadline))
