"""Schedules in Postgres: definitions, and firing an occurrence exactly once."""
from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from storage import sql
from storage.store import insert_instances
from storage.types import NewInstance


class ScheduleState(msgspec.Struct, kw_only=True):
    """A schedule's when and where-it-stands, as the table holds it and the API shows it."""
    timezone: str
    missed: str
    paused: bool
    source: str
    created_at: datetime
    next_fire_at: datetime
    last_fire_at: datetime | None
    last_instance_id: int | None
    # A schedule declared in code that no live daemon declares any more: it does not fire.
    orphaned_at: datetime | None = None


class ScheduleRow(ScheduleState, kw_only=True):
    id: str
    job_name: str
    job_version: int | None
    params: str
    cron: str | None
    interval_seconds: float | None
    dialect: str | None = None  # quartz, spring or unix for a cron schedule (migration 0015)


def _row(r: Any) -> ScheduleRow:
    d = dict(r)
    d.pop("db_now", None)
    return ScheduleRow(**d)


class Schedules:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def now(self) -> datetime:
        return await self.pool.fetchval(sql.SCHEDULE_NOW)

    async def upsert(self, s: ScheduleRow) -> None:
        await self.pool.execute(sql.SCHEDULE_UPSERT, s.id, s.job_name, s.job_version, s.params, s.cron, s.interval_seconds,
                                s.timezone, s.missed, s.source, s.next_fire_at, s.dialect)

    async def create(self, s: ScheduleRow) -> bool:
        return await self.pool.fetchval(sql.SCHEDULE_INSERT, s.id, s.job_name, s.job_version, s.params, s.cron,
                                        s.interval_seconds, s.timezone, s.missed, s.source, s.next_fire_at,
                                        s.dialect) is not None

    async def list(self) -> list[ScheduleRow]:
        return [_row(r) for r in await self.pool.fetch(sql.SCHEDULE_LIST)]

    async def get(self, sid: str) -> ScheduleRow | None:
        r = await self.pool.fetchrow(sql.SCHEDULE_GET, sid)
        return _row(r) if r else None

    async def delete(self, sid: str) -> bool:
        return await self.pool.fetchval(sql.SCHEDULE_DELETE, sid) is not None

    async def delete_undeclared(self, sid: str) -> bool:
        """Deletes an API schedule or an orphaned declared one; False for a live declared one."""
        return await self.pool.fetchval(sql.SCHEDULE_DELETE_UNDECLARED, sid) is not None

    async def sweep_orphans(self, alive_within: float) -> list[tuple[str, bool]]:
        """Marks declared schedules no live daemon declares as orphaned, and those declared
        again as adopted; returns the changes as (id, orphaned now)."""
        return [(r[0], r[1]) for r in await self.pool.fetch(sql.SCHEDULE_ORPHAN_SWEEP, alive_within)]

    async def set_paused(self, sid: str, paused: bool, next_fire_at: datetime | None = None) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            ok = await conn.fetchval(sql.SCHEDULE_PAUSE, sid, paused) is not None
            if ok and not paused and next_fire_at is not None:
                await conn.execute(sql.SCHEDULE_RESUME_NEXT, sid, next_fire_at)  # no burst of missed runs
            return ok

    async def due(self, limit: int) -> list[tuple[ScheduleRow, datetime]]:
        return [(_row(r), r["db_now"]) for r in await self.pool.fetch(sql.SCHEDULE_DUE, limit)]

    async def seconds_to_next(self) -> float | None:
        return await self.pool.fetchval(sql.SCHEDULE_NEXT_DUE_IN)

    async def fire(self, s: ScheduleRow, occurrence: datetime, next_fire_at: datetime, node: str,
                   instance: tuple[str, int, str, bool, bytes, int] | None, partitions: int,
                   partition: int) -> tuple[bool, int | None]:
        """One transaction: claim the occurrence, submit its instance, advance the schedule.
        `instance` = (job, version, params_json, gated, first chunk, max_attempts), or None to
        skip the occurrence. Returns (this call fired it?, instance id)."""
        async with self.pool.acquire() as conn, conn.transaction():
            if await conn.fetchval(sql.SCHEDULE_CLAIM_OCCURRENCE, s.id, occurrence, node) is None:
                return False, None  # another daemon fired it
            iid = None
            if instance is not None:
                job, version, params_json, gated, first, max_attempts = instance
                (made,), _ = await insert_instances(conn, [NewInstance(job, version, params_json, gated, None, None,
                                                                      max_attempts, 0, first)], lambda: partition)
                iid = made.instance_id
                await conn.execute(sql.SCHEDULE_RECORD_INSTANCE, s.id, occurrence, iid)
                await conn.execute(sql.SCHEDULE_MARK_INSTANCE, iid, s.id, occurrence)
            if await conn.fetchval(sql.SCHEDULE_ADVANCE, s.id, occurrence, next_fire_at, occurrence, iid) is None:
                raise RuntimeError("schedule changed while firing")  # rolls the whole fire back
            return True, iid
