"""Schedules in Postgres: definitions, and firing an occurrence exactly once."""
from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from .counters import CREATED, CounterDelta
from .states import C
from . import sql

_UPSERT = """
INSERT INTO chunkd_schedule (id, job_name, job_version, params, cron, interval_seconds, timezone, missed, source,
                             next_fire_at)
VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9, $10)
ON CONFLICT (id) DO UPDATE SET job_name = EXCLUDED.job_name, job_version = EXCLUDED.job_version,
    params = EXCLUDED.params, cron = EXCLUDED.cron, interval_seconds = EXCLUDED.interval_seconds,
    timezone = EXCLUDED.timezone, missed = EXCLUDED.missed, source = EXCLUDED.source,
    next_fire_at = CASE WHEN chunkd_schedule.cron IS NOT DISTINCT FROM EXCLUDED.cron
                         AND chunkd_schedule.interval_seconds IS NOT DISTINCT FROM EXCLUDED.interval_seconds
                         AND chunkd_schedule.timezone = EXCLUDED.timezone
                        THEN chunkd_schedule.next_fire_at ELSE EXCLUDED.next_fire_at END
RETURNING (xmax = 0) AS inserted"""
_INSERT = """
INSERT INTO chunkd_schedule (id, job_name, job_version, params, cron, interval_seconds, timezone, missed, source,
                             next_fire_at)
VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9, $10)
ON CONFLICT (id) DO NOTHING RETURNING id"""
_LIST = "SELECT * FROM chunkd_schedule ORDER BY id"
_GET = "SELECT * FROM chunkd_schedule WHERE id = $1"
_DELETE = "DELETE FROM chunkd_schedule WHERE id = $1 RETURNING id"
_PAUSE = "UPDATE chunkd_schedule SET paused = $2 WHERE id = $1 RETURNING id"
_RESUME_NEXT = "UPDATE chunkd_schedule SET next_fire_at = $2 WHERE id = $1 AND next_fire_at < now()"
_DUE = """
SELECT *, now() AS db_now FROM chunkd_schedule WHERE NOT paused AND next_fire_at <= now()
ORDER BY next_fire_at LIMIT $1"""
_NEXT_DUE_IN = "SELECT extract(epoch FROM min(next_fire_at) - now())::float8 FROM chunkd_schedule WHERE NOT paused"
_CLAIM_OCCURRENCE = """
INSERT INTO chunkd_schedule_fire (schedule_id, fire_at, fired_by) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING RETURNING fire_at"""
_RECORD_INSTANCE = "UPDATE chunkd_schedule_fire SET instance_id = $3 WHERE schedule_id = $1 AND fire_at = $2"
_MARK_INSTANCE = "UPDATE chunkd_instance SET schedule_id = $2, scheduled_for = $3 WHERE id = $1"
_ADVANCE = """
UPDATE chunkd_schedule SET next_fire_at = $3, last_fire_at = coalesce($4, last_fire_at),
       last_instance_id = coalesce($5, last_instance_id)
WHERE id = $1 AND next_fire_at = $2 RETURNING id"""
_FIRES = "SELECT fire_at, instance_id, fired_by FROM chunkd_schedule_fire WHERE schedule_id = $1 ORDER BY fire_at"
_NOW = "SELECT now()"


class ScheduleRow(msgspec.Struct):
    id: str
    job_name: str
    job_version: int | None
    params: str
    cron: str | None
    interval_seconds: float | None
    timezone: str
    missed: str
    paused: bool
    source: str
    created_at: datetime
    next_fire_at: datetime
    last_fire_at: datetime | None
    last_instance_id: int | None


def _row(r: Any) -> ScheduleRow:
    d = dict(r)
    d.pop("db_now", None)
    return ScheduleRow(**d)


class Schedules:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def now(self) -> datetime:
        return await self.pool.fetchval(_NOW)

    async def upsert(self, s: ScheduleRow) -> None:
        await self.pool.execute(_UPSERT, s.id, s.job_name, s.job_version, s.params, s.cron, s.interval_seconds,
                                s.timezone, s.missed, s.source, s.next_fire_at)

    async def create(self, s: ScheduleRow) -> bool:
        return await self.pool.fetchval(_INSERT, s.id, s.job_name, s.job_version, s.params, s.cron,
                                        s.interval_seconds, s.timezone, s.missed, s.source, s.next_fire_at) is not None

    async def list(self) -> list[ScheduleRow]:
        return [_row(r) for r in await self.pool.fetch(_LIST)]

    async def get(self, sid: str) -> ScheduleRow | None:
        r = await self.pool.fetchrow(_GET, sid)
        return _row(r) if r else None

    async def delete(self, sid: str) -> bool:
        return await self.pool.fetchval(_DELETE, sid) is not None

    async def set_paused(self, sid: str, paused: bool, next_fire_at: datetime | None = None) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            ok = await conn.fetchval(_PAUSE, sid, paused) is not None
            if ok and not paused and next_fire_at is not None:
                await conn.execute(_RESUME_NEXT, sid, next_fire_at)  # no burst of missed runs
            return ok

    async def due(self, limit: int) -> list[tuple[ScheduleRow, datetime]]:
        return [(_row(r), r["db_now"]) for r in await self.pool.fetch(_DUE, limit)]

    async def seconds_to_next(self) -> float | None:
        return await self.pool.fetchval(_NEXT_DUE_IN)

    async def fires(self, sid: str) -> list[tuple[datetime, int | None, str]]:
        return [(r[0], r[1], r[2]) for r in await self.pool.fetch(_FIRES, sid)]

    async def fire(self, s: ScheduleRow, occurrence: datetime, next_fire_at: datetime, node: str,
                   instance: tuple[str, int, str, bool, bytes, int] | None, partitions: int,
                   partition: int) -> tuple[bool, int | None]:
        """One transaction: claim the occurrence, submit its instance, advance the schedule.
        `instance` = (job, version, params_json, gated, first chunk, max_attempts), or None to
        skip the occurrence. Returns (this call fired it?, instance id)."""
        async with self.pool.acquire() as conn, conn.transaction():
            if await conn.fetchval(_CLAIM_OCCURRENCE, s.id, occurrence, node) is None:
                return False, None  # another daemon fired it
            iid = None
            if instance is not None:
                job, version, params_json, gated, first, max_attempts = instance
                iid = await conn.fetchval(sql.INSTANCE_INSERT, job, version, params_json, gated, None)
                await conn.execute(sql.CHUNK_INSERT, [iid], [0], [int(C.READY)], [partition], [max_attempts], [first], [0])
                delta = CounterDelta()
                delta.add(iid, 0, CREATED)
                await conn.execute(sql.COUNTERS_ADD, *delta.arrays())
                await conn.execute(_RECORD_INSTANCE, s.id, occurrence, iid)
                await conn.execute(_MARK_INSTANCE, iid, s.id, occurrence)
            if await conn.fetchval(_ADVANCE, s.id, occurrence, next_fire_at, occurrence, iid) is None:
                raise RuntimeError("schedule changed while firing")  # rolls the whole fire back
            return True, iid
