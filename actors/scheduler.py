"""Scheduler: fires due clustered schedules (each occurrence exactly once across daemons,
claimed in Postgres) and runs this daemon's local tasks."""
from __future__ import annotations

import inspect
import json
import time
from datetime import datetime

import anyio
import structlog

from actors.instances import SubmitError, checked
from actors.job import LocalTask
from actors.registry import Registry, UnknownJobError
from actors.scheduling import ScheduleError, Spec, next_after, plan_fire, validate
from actors.settings import SchedulerSettings
from channels.base import Channel
from metrics import SCHEDULE_FIRE_FAILURES
from storage.errors import TRANSIENT, Backoff, is_transient, limit_reason
from storage.retry import backoff_seconds
from storage.reader import Reader
from storage.schedules import ScheduleRow, Schedules
from storage.store import Store

log = structlog.get_logger("chunkd.scheduler")

ORPHAN_SWEEP_EVERY = 5.0  # seconds between looks for declared schedules nobody declares any more
# Failed attempts at firing one occurrence (a params_check past a DBA's statement timeout,
# the database away) before it is skipped, logged as an error: never retried for ever.
MAX_FIRE_ATTEMPTS = 5


def row_for(sid: str, job: str, version: int | None, params_json: str, spec: Spec, source: str,
            now: datetime) -> ScheduleRow:
    return ScheduleRow(id=sid, job_name=job, job_version=version, params=params_json, cron=spec.cron,
                       dialect=spec.dialect, interval_seconds=spec.every, timezone=spec.timezone, missed=spec.missed, paused=False,
                       source=source, created_at=now, next_fire_at=next_after(spec, now), last_fire_at=None,
                       last_instance_id=None)


def spec_of(row: ScheduleRow) -> Spec:
    return Spec(row.cron, row.interval_seconds, row.timezone, row.missed, row.dialect)


class Scheduler:
    def __init__(self, settings: SchedulerSettings, store: Store, channel: Channel, registry: Registry,
                 reader: Reader) -> None:
        """Only what it uses: its settings, the store (and the schedule rows in it), the channel
        it publishes a fired instance's partition on, the registry, and ctx.db's reader."""
        self.settings, self.store, self.channel, self.registry, self.reader = settings, store, channel, registry, reader
        self.schedules = Schedules(store.pool)
        self.registered = False
        # schedule id -> (the occurrence that failed, failed attempts, monotonic time of the next)
        self._failed: dict[str, tuple[datetime, int, float]] = {}

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            for task in self.registry.local_tasks.values():
                tg.start_soon(self._local, task)
            if self.settings.enabled:
                if not self.registered:
                    await self.register()
                tg.start_soon(self._fire_loop)

    async def register(self) -> None:
        """The schedules declared in job modules, chunkd's own (source "builtin") and the
        user's ("code"); a built-in one this daemon no longer declares is deleted."""
        now = await self.schedules.now()
        reg = self.registry
        declared = [(s.name, s.job, s.version, json.dumps(s.params), s.cron, s.every, s.timezone, s.missed,
                     "builtin" if s.name in reg.builtin_schedules else "code", s.dialect)
                    for s in reg.schedules.values()]
        for row in await self.schedules.list():
            if row.source == "builtin" and row.id not in reg.schedules:
                await self.schedules.delete(row.id)
        for sid, job, version, params, cron, every, tz, missed, source, said in declared:
            try:
                spec = validate(cron, every, tz, missed, said)
                j, canonical = await checked(self.registry, job, params, version, self.reader,
                                             self.store.dsn)
            except (ScheduleError, ValueError) as e:
                log.error("declared schedule is invalid; not registered", schedule=sid, error=str(e))
                continue
            await self.schedules.upsert(row_for(sid, j.name, version, canonical, spec, source, now))
        await self.sweep_orphans()
        self.registered = True

    async def sweep_orphans(self) -> None:
        """Declared schedules that no live daemon declares any more stop firing (orphaned);
        those a daemon declares again fire again."""
        for sid, orphaned in await self.schedules.sweep_orphans(self.settings.alive_within):
            if orphaned:
                log.warning("schedule orphaned: no running daemon declares it any more; it will not fire "
                            "(delete it, or declare it again)", schedule=sid)
            else:
                log.info("orphaned schedule declared again; it fires again", schedule=sid)

    async def _fire_loop(self) -> None:
        limiter = anyio.CapacityLimiter(self.settings.concurrency)
        backoff = Backoff(0.2, 5.0)
        async with anyio.create_task_group() as tg:
            firing: set[str] = set()
            swept_at = time.monotonic()
            while True:
                try:
                    if time.monotonic() - swept_at >= ORPHAN_SWEEP_EVERY:
                        swept_at = time.monotonic()
                        await self.sweep_orphans()
                    due = await self.schedules.due(100)
                    backoff.ok()
                except TRANSIENT as e:
                    delay = backoff.failed()
                    log.warning("reading schedules failed; retrying", error=repr(e), retry_in=delay)
                    await anyio.sleep(delay)
                    continue
                for row, now in due:
                    failed = self._failed.get(row.id)
                    if failed is not None and failed[0] == row.next_fire_at and time.monotonic() < failed[2]:
                        continue  # backing off after a failed attempt at this occurrence
                    if row.id not in firing:
                        firing.add(row.id)
                        tg.start_soon(self._fire_one, row, now, limiter, firing)
                try:
                    wait = await self.schedules.seconds_to_next()
                except TRANSIENT:
                    wait = 1.0
                await anyio.sleep(min(0.5, max(0.05, wait if wait is not None else 0.5)))

    async def _fire_one(self, row: ScheduleRow, now: datetime, limiter: anyio.CapacityLimiter,
                        firing: set[str]) -> None:
        try:
            async with limiter:
                failed = self._failed.get(row.id)
                attempts = failed[1] if failed is not None and failed[0] == row.next_fire_at else 0
                await self._fire(row, now, give_up=attempts >= MAX_FIRE_ATTEMPTS)
            self._failed.pop(row.id, None)
        except RuntimeError as e:
            log.info("schedule changed while firing; skipped this pass", schedule=row.id, error=str(e))
        except Exception as e:  # noqa: BLE001 - the database or the job's params_check: count, back off
            self._fire_failed(row, e)
        finally:
            firing.discard(row.id)

    def _fire_failed(self, row: ScheduleRow, e: Exception) -> None:
        failed = self._failed.get(row.id)
        attempts = (failed[1] if failed is not None and failed[0] == row.next_fire_at else 0) + 1
        # after the last allowed attempt, the next pass gives the occurrence up at once
        delay = 0.0 if attempts >= MAX_FIRE_ATTEMPTS else backoff_seconds(attempts, 1.0, 60.0)
        self._failed[row.id] = (row.next_fire_at, attempts, time.monotonic() + delay)
        reason = limit_reason(e) or ("database unavailable" if is_transient(e) else "error")
        SCHEDULE_FIRE_FAILURES.labels(row.id, reason).inc()
        log.warning("firing a schedule failed; retrying after a backoff", schedule=row.id,
                    occurrence=row.next_fire_at.isoformat(), reason=reason, error=repr(e), attempts=attempts,
                    max_attempts=MAX_FIRE_ATTEMPTS, retry_in=delay)

    async def _fire(self, row: ScheduleRow, now: datetime, give_up: bool = False) -> None:
        """Fires the row's due occurrence; with `give_up` (it failed MAX_FIRE_ATTEMPTS times)
        skips it instead, with an error in the log."""
        try:
            job = self.registry.get(row.job_name, row.job_version)
        except UnknownJobError as e:
            # perhaps another daemon has this job loaded; it fires it then
            log.warning("cannot fire schedule here", schedule=row.id, error=str(e))
            return
        spec = spec_of(row)
        fire, nxt = plan_fire(spec, row.next_fire_at, now)
        if fire and give_up:
            log.error("schedule occurrence skipped: it failed to fire too many times", schedule=row.id,
                      occurrence=row.next_fire_at.isoformat(), attempts=MAX_FIRE_ATTEMPTS)
            fire = False
        if fire:
            try:  # the same checks as a submit, the job's params_check included
                await checked(self.registry, job.name, row.params, job.version, self.reader, self.store.dsn)
            except SubmitError as e:
                log.error("schedule occurrence skipped: its parameters are refused", schedule=row.id, error=str(e))
                fire = False
        instance = (job.name, job.version, row.params, job.gated, b"", job.steps[0].max_attempts) if fire else None
        part = self.store.next_partition()
        fired, iid = await self.schedules.fire(row, row.next_fire_at, nxt, self.settings.node_name, instance,
                                               self.settings.partitions, part)
        if fired and iid is not None:
            await self.channel.publish([part])
            log.info("schedule fired", schedule=row.id, job=job.name, instance_id=iid,
                     occurrence=row.next_fire_at.isoformat())
        elif fired:
            log.info("missed occurrence skipped", schedule=row.id, occurrence=row.next_fire_at.isoformat())

    async def _local(self, task: LocalTask) -> None:
        while True:
            started = time.monotonic()
            try:
                result = task.fn()
                if inspect.isawaitable(result):
                    await result
            except Exception as e:  # noqa: BLE001 - a local task must not stop the others
                log.warning("local task failed", task=task.name, error=repr(e))
            await anyio.sleep(max(0.0, task.every - (time.monotonic() - started)))
