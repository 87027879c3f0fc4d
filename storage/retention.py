"""Retention: purge finished instances and their chunks in small batches."""
from __future__ import annotations

import asyncpg

_EXPIRED = """
SELECT id FROM chunkd_instance
WHERE (status IN ('COMPLETED', 'CANCELLED') AND finished_at < now() - make_interval(secs => $1))
   OR (status = 'FAILED' AND finished_at < now() - make_interval(secs => $2))
ORDER BY id LIMIT $3"""
# First, in one short transaction on the instance rows, mark what will be purged: only
# instances still finished and still past their window (a restart may have come first;
# then it is not purged). A restart refuses a marked instance (sql.INSTANCE_RESTART), so
# once marked, nothing revives it while its chunks are deleted.
_MARK = """
UPDATE chunkd_instance SET purging = true
WHERE id = ANY($1::bigint[])
  AND ((status IN ('COMPLETED', 'CANCELLED') AND finished_at < now() - make_interval(secs => $2))
    OR (status = 'FAILED' AND finished_at < now() - make_interval(secs => $3)))
RETURNING id"""
# Small statements, each its own transaction: the hot path never waits on a long purge.
_CHUNK_BATCH = """
DELETE FROM chunkd_chunk WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM chunkd_chunk WHERE instance_id = ANY($1::bigint[]) LIMIT $2))"""
_INSTANCES = """
DELETE FROM chunkd_instance WHERE id = ANY($1::bigint[]) AND purging
RETURNING id"""
_FIRES = "DELETE FROM chunkd_schedule_fire WHERE fired_at < now() - make_interval(secs => $1)"


async def expired_instances(db: asyncpg.Pool, keep: float, keep_failed: float, limit: int) -> list[int]:
    return [r[0] for r in await db.fetch(_EXPIRED, keep, keep_failed, limit)]


async def purge(pool: asyncpg.Pool, instance_ids: list[int], keep: float, keep_failed: float,
                batch: int = 5000) -> tuple[int, int]:
    """Mark, then chunks batch by batch, then the instances (counters and warnings cascade).
    A purge cut short is finished by the next run (a marked instance stays expired).
    Returns (chunks, instances) deleted."""
    instance_ids = [r[0] for r in await pool.fetch(_MARK, instance_ids, keep, keep_failed)]
    if not instance_ids:
        return 0, 0
    chunks = 0
    while True:
        n = int((await pool.execute(_CHUNK_BATCH, instance_ids, batch)).split()[-1])
        chunks += n
        if n < batch:
            break
    instances = len(await pool.fetch(_INSTANCES, instance_ids))
    return chunks, instances


async def purge_fires(pool: asyncpg.Pool, keep: float) -> int:
    return int((await pool.execute(_FIRES, keep)).split()[-1])
