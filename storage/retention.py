"""Retention: purge finished instances and their chunks in small batches."""
from __future__ import annotations

import asyncpg

from storage import sql


async def expired_instances(db: asyncpg.Pool, keep: float, keep_failed: float, limit: int) -> list[int]:
    return [r[0] for r in await db.fetch(sql.RETENTION_EXPIRED, keep, keep_failed, limit)]


async def purge(pool: asyncpg.Pool, instance_ids: list[int], keep: float, keep_failed: float,
                batch: int = 5000) -> tuple[int, int]:
    """Mark, then chunks batch by batch, then the instances (counters and warnings cascade).
    A purge cut short is finished by the next run (a marked instance stays expired).
    Returns (chunks, instances) deleted."""
    instance_ids = [r[0] for r in await pool.fetch(sql.RETENTION_MARK, instance_ids, keep, keep_failed)]
    if not instance_ids:
        return 0, 0
    chunks = 0
    while True:
        n = int((await pool.execute(sql.RETENTION_CHUNK_BATCH, instance_ids, batch)).split()[-1])
        chunks += n
        if n < batch:
            break
    instances = len(await pool.fetch(sql.RETENTION_INSTANCES, instance_ids))
    return chunks, instances


async def purge_fires(pool: asyncpg.Pool, keep: float) -> int:
    return int((await pool.execute(sql.RETENTION_FIRES, keep)).split()[-1])
