"""`chunkd.retention`: purges finished instances (and their chunks) past the retention
window, in small batches. A built-in clustered schedule runs it (see actors/scheduler.py)."""
from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec

from chunkd import Context, Job, Sink
from metrics import RETENTION_PURGED
from storage.retention import expired_instances, purge, purge_fires

PAGE = 200  # instances per chunk


class RetentionParams(msgspec.Struct, forbid_unknown_fields=True):
    keep_seconds: float = 7 * 86400
    keep_failed_seconds: float = 30 * 86400

    def __post_init__(self) -> None:
        if self.keep_seconds < 60 or self.keep_failed_seconds < 60:
            raise ValueError("retention must be at least 60 seconds")


class Batch(msgspec.Struct, array_like=True):
    ids: list[int]


class Purged(msgspec.Struct, array_like=True):
    chunks: int
    instances: int


class RetentionReport(msgspec.Struct):
    chunks: int
    instances: int


retention = Job("chunkd.retention", params=RetentionParams,
                description="Purge finished instances and their chunks older than the retention window.")


@retention.first_step(emits=Batch)
async def find(p: RetentionParams, ctx: Context, sink: Sink[Batch]) -> None:
    pool = ctx.db.pool_for_maintenance()
    ids = await expired_instances(pool, p.keep_seconds, p.keep_failed_seconds, 100_000)
    for lo in range(0, len(ids), PAGE):
        sink.emit(Batch(ids[lo:lo + PAGE]))
    fires = await purge_fires(pool, p.keep_seconds)
    if fires:
        RETENTION_PURGED.labels("schedule_fires").inc(fires)


@retention.step(consumes=Batch, emits=Purged)
async def delete(p: RetentionParams, batch: Batch, ctx: Context, sink: Sink[Purged]) -> None:
    chunks, instances = await purge(ctx.db.pool_for_maintenance(), batch.ids, p.keep_seconds, p.keep_failed_seconds)
    RETENTION_PURGED.labels("chunks").inc(chunks)
    RETENTION_PURGED.labels("instances").inc(instances)
    sink.emit(Purged(chunks, instances))


@retention.reduce(consumes=Purged)
async def total(p: RetentionParams, results: AsyncIterator[Purged], ctx: Context) -> RetentionReport:
    chunks = instances = 0
    async for r in results:
        chunks += r.chunks
        instances += r.instances
    return RetentionReport(chunks, instances)
