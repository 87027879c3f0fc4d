"""The maintenance leader's small duties (River's internal/maintenance: JobRescuer,
JobCleaner, ...). Each does one thing per pass and returns the partitions whose consumers
should look again; the leader loop (actors/maintenance.py) holds the lease and the term,
runs them in order and publishes what they return. Each is built from only what it uses,
so a test can run one alone against a real database."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from actors.registry import Registry, UnknownJobError
from metrics import (
    CHUNKS_RETRIED,
    INSTANCE_ETA,
    INSTANCES,
    LEASES_RESCUED,
    QUEUE_CHUNKS,
    QUEUE_OLDEST_READY,
    REDUCTIONS_RETRYING,
    TABLE_DEAD_ROWS,
    TABLE_UPKEEP,
    TABLE_UPKEEP_FAILURES,
)
from storage.states import I
from storage.protocol import EngineStore
from storage.types import LeaderTerm, TableHealth

log = structlog.get_logger("chunkd.maintenance")

BATCH = 5000
_LOGGED_LEASE_FAILURES = 5  # per rescue batch; the rest are counted in one line


class PassContext:
    """What one pass gives its duties: the term that fences every leader write, a way to
    ask for the next pass soon, a way to start background work (a reduction), and what
    earlier duties of the pass found for later ones (the InstanceAdvancer's active count
    and ETAs, for the GaugeExporter)."""

    def __init__(self, term: LeaderTerm | None, wake: Callable[[], None] = lambda: None,
                 spawn: Callable[..., Any] | None = None) -> None:
        self.term = term
        self.wake = wake
        self.spawn = spawn
        self.active = 0
        self.etas: dict[str, float] = {}


class Duty(Protocol):
    async def run(self, ctx: PassContext) -> set[int]:
        """One pass of this duty; the partitions to publish."""
        ...


class Every:
    """Due at most once per `seconds` (monotonic): for the duties that need not run each pass."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._next = 0.0

    def due(self, now: float) -> bool:
        if now < self._next:
            return False
        self._next = now + self.seconds
        return True


def step_name(registry: Registry, job_name: str, version: int, step: int) -> str:
    try:
        return registry.get(job_name, version).steps[step].name
    except (UnknownJobError, IndexError):
        return str(step)


def lease_failure_lines(failed: list[tuple[str, int, int, int, int]],
                        shown: int = _LOGGED_LEASE_FAILURES) -> tuple[list[dict[str, Any]], int]:
    """The chunk failures of a rescue worth a warning each (the first few: a mass expiry is
    one event), and how many more are only counted."""
    lines = [dict(job=job, instance_id=inst, step_index=step, chunk_id=cid, attempt=attempt,
                  error="the worker died or stalled while running this chunk (lease expired)")
             for job, inst, step, cid, attempt in failed[:shown]]
    return lines, max(0, len(failed) - shown)


class LeaseRescuer:
    """Chunks whose lease expired (their worker died or stalled) go back to READY, or FAIL at
    their max attempts; in batches until none is left."""

    def __init__(self, store: EngineStore, batch: int = BATCH) -> None:
        self.store, self.batch = store, batch

    async def run(self, ctx: PassContext) -> set[int]:
        publish: set[int] = set()
        while True:
            n, failed, parts, failed_chunks = await self.store.rescue_expired(self.batch)
            publish |= parts
            if n:
                LEASES_RESCUED.inc(n)
                log.info("rescued expired leases", chunks=n, failed=failed)
                lines, suppressed = lease_failure_lines(failed_chunks)
                for line in lines:
                    log.warning("chunk failed", **line)
                if suppressed:
                    log.warning("chunk failures suppressed", suppressed=suppressed, reason="lease expired")
            if n < self.batch:
                return publish


class RetryReleaser:
    """ERRORED chunks whose backoff ended become READY; in advancing passes too, so that
    under load a short backoff is not stretched to the interval (a pass that moved
    instances used to bring a full one 50 ms later)."""

    advances = True

    def __init__(self, store: EngineStore, registry: Registry, batch: int = BATCH) -> None:
        self.store, self.registry, self.batch = store, registry, batch

    async def run(self, ctx: PassContext) -> set[int]:
        parts, retried = await self.store.release_due(self.batch)
        for (job_name, version, step), n in retried.items():
            CHUNKS_RETRIED.labels(job_name, step_name(self.registry, job_name, version, step)).inc(n)
        return parts


class Rehomer:
    """READY chunks in partitions no daemon serves move to served ones."""

    def __init__(self, store: EngineStore) -> None:
        self.store = store

    async def run(self, ctx: PassContext) -> set[int]:
        return await self.store.rehome()


class NodeReaper:
    """Deletes the node rows of dead daemons (SIGKILLed, host gone), checked every tenth of
    the age: a dead node's row goes within 110% of it."""

    def __init__(self, store: EngineStore, forget_after: float) -> None:
        self.store, self.forget_after = store, forget_after
        self.every = Every(forget_after / 10)

    async def run(self, ctx: PassContext) -> set[int]:
        if self.every.due(time.monotonic()):
            if forgotten := await self.store.forget_dead_nodes(self.forget_after):
                log.info("forgot dead nodes", nodes=forgotten)
        return set()


class Republisher:
    """Partitions whose oldest READY chunk waited longer than `after` (a lost hint): their
    consumers look again. Not every pass: it reads the head of each READY queue."""

    def __init__(self, store: EngineStore, partitions: int, after: float) -> None:
        self.store, self.partitions, self.after = store, partitions, after
        self.every = Every(after)

    async def run(self, ctx: PassContext) -> set[int]:
        if not self.every.due(time.monotonic()):
            return set()
        return set(await self.store.stale_partitions(range(self.partitions), self.after))


class GaugeExporter:
    """Cluster-wide figures, exported by the leader only (others clear them): instances by
    status every 5 s while instances run (every pass when none does), queue depth and the
    oldest READY age at most once a second, and the ETAs the InstanceAdvancer found."""

    def __init__(self, store: EngineStore, partitions: int) -> None:
        self.store, self.partitions = store, partitions
        self._at = 0.0
        self.queue_every = Every(1.0)  # idle clusters call us every pass

    async def run(self, ctx: PassContext) -> set[int]:
        now = time.monotonic()
        if now - self._at >= 5 or not ctx.active:
            self._at = now
            await self.export()
        for job_name, eta in ctx.etas.items():
            INSTANCE_ETA.labels(job_name).set(eta)
        return set()

    async def export(self) -> None:
        INSTANCES.clear()
        INSTANCE_ETA.clear()
        for status in I:
            INSTANCES.labels(status.value).set(0)
        for status, n in (await self.store.instances_by_status()).items():
            INSTANCES.labels(status).set(n)
        if self.queue_every.due(time.monotonic()):
            await self.export_queue()

    async def export_queue(self) -> None:
        """Every configured partition gets a series, 0 included, so an alert on a partition
        does not depend on the series appearing."""
        depth = await self.store.queue_depth()
        ages = await self.store.oldest_ready_age(range(self.partitions))
        QUEUE_CHUNKS.clear()
        QUEUE_OLDEST_READY.clear()
        for p in range(self.partitions):
            for state in ("READY", "IN_PROGRESS", "ERRORED"):
                QUEUE_CHUNKS.labels(str(p), state).set(0)
        for (p, state), n in depth.items():
            QUEUE_CHUNKS.labels(str(p), state).set(n)
        for p, age in ages.items():
            QUEUE_OLDEST_READY.labels(str(p)).set(age)

    @staticmethod
    def clear() -> None:
        """This daemon is not (or no longer) the leader: its figures would be stale."""
        TABLE_DEAD_ROWS.clear()
        INSTANCES.clear()
        INSTANCE_ETA.clear()
        QUEUE_CHUNKS.clear()
        QUEUE_OLDEST_READY.clear()
        REDUCTIONS_RETRYING.set(0)


# Fewer dead (or changed) rows than this never cost a VACUUM (ANALYZE) of chunkd's own: the
# server's default threshold (50) would vacuum the small tables every check.
UPKEEP_MIN_ROWS = 1000
UPKEEP_EVERY = 10.0        # seconds between looks at the tables' statistics
UPKEEP_RETRY_AFTER = 60.0  # seconds before a table whose upkeep failed or was skipped is tried again


def upkeep_due(t: TableHealth) -> str | None:
    """What chunkd must do for a table autovacuum does not look after: "vacuum" (with
    ANALYZE) once its dead rows pass the autovacuum rule it would be under, "analyze" once
    its changed rows pass the analyze rule, else None. Where autovacuum is on, None: the
    server's own daemon does it; also where this role may not vacuum the table, or the
    server counts nothing (track_counts = off)."""
    if t.autovacuum or not t.maintainable or not t.counted:
        return None
    if t.dead >= max(UPKEEP_MIN_ROWS, t.vacuum_threshold + t.vacuum_scale * t.live):
        return "vacuum"
    if t.changed >= max(UPKEEP_MIN_ROWS, t.analyze_threshold + t.analyze_scale * t.live):
        return "analyze"
    return None


class Vacuumer:
    """chunkd's tables churn (every chunk row is written three or four times); where the
    server runs no autovacuum for them (`autovacuum = off`, as some CI and hardened servers
    have, or a table's autovacuum_enabled = false), their dead rows and stale statistics
    grow without bound and every statement on them slows down (a 30-minute soak on such a
    server: 15 million dead chunk rows against 1 million live, submit p50 7 -> 29 ms). Then
    the leader does what autovacuum would: VACUUM (ANALYZE) a table past the autovacuum rule
    it is under, in the background, one table at a time, never waiting on a lock and giving
    way to anyone it blocks (storage.store.Store.upkeep). CHUNKD_VACUUM=off leaves it to the
    DBA. Every check exports each table's dead rows; what it cannot do it says once."""

    def __init__(self, store: EngineStore, enabled: bool = True, every: float = UPKEEP_EVERY) -> None:
        self.store, self.enabled = store, enabled
        self.every = Every(every)
        self.running = False
        self._told: set[str] = set()
        self._not_before: dict[str, float] = {}  # table -> monotonic time its upkeep may be tried again

    def _tell(self, what: str, message: str, **kw: Any) -> None:
        if what not in self._told:
            self._told.add(what)
            log.warning(message, **kw)

    async def run(self, ctx: PassContext) -> set[int]:
        now = time.monotonic()
        if self.running or ctx.spawn is None or not self.every.due(now):
            return set()
        tables = await self.store.table_health()
        for t in tables:
            TABLE_DEAD_ROWS.labels(t.name).set(t.dead)
        unseen = [t.name for t in tables if not t.autovacuum and not t.counted]
        if unseen:
            self._tell("counts", "track_counts is off: nobody can tell when chunkd's tables need a VACUUM "
                                 "(autovacuum cannot run either); vacuum them yourself", tables=unseen)
        foreign = [t.name for t in tables if not t.autovacuum and t.counted and not t.maintainable]
        if foreign and self.enabled:
            self._tell("owner", "autovacuum is off for chunkd's tables and chunkd's role may not vacuum them "
                                "(not their owner): their dead rows grow until someone vacuums them", tables=foreign)
        due = [(t, kind) for t in tables if (kind := upkeep_due(t)) and self._not_before.get(t.name, 0.0) <= now]
        if not due:
            return set()
        if not self.enabled:
            self._tell("off", "autovacuum is off for chunkd's tables and CHUNKD_VACUUM=off: their dead rows grow "
                              "until someone vacuums them", tables=[t.name for t, _ in due])
            return set()
        self._tell("on", "autovacuum is off for chunkd's tables: chunkd vacuums them itself "
                         "(CHUNKD_VACUUM=off leaves it to you)", tables=[t.name for t, _ in due])
        self.running = True
        ctx.spawn(self._upkeep, due)
        return set()

    async def _upkeep(self, due: list[tuple[TableHealth, str]]) -> None:
        try:
            for t, kind in due:
                started = time.monotonic()
                try:
                    why_not = await self.store.upkeep(t.name, kind == "vacuum")
                except Exception as e:  # noqa: BLE001 - the database away, a bug: the leader goes on
                    why_not = repr(e)
                if why_not is not None:
                    self._not_before[t.name] = time.monotonic() + UPKEEP_RETRY_AFTER
                    TABLE_UPKEEP_FAILURES.labels(t.name).inc()
                    log.warning("could not vacuum a table; trying again later", table=t.name, kind=kind,
                                reason=why_not, retry_in=UPKEEP_RETRY_AFTER)
                    continue
                TABLE_UPKEEP.labels(t.name, kind).inc()
                log.info("vacuumed a table" if kind == "vacuum" else "analyzed a table", table=t.name,
                         dead_rows=t.dead, live_rows=t.live, seconds=round(time.monotonic() - started, 3))
        finally:
            self.running = False
