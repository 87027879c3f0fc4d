"""`chunkd.retention`: purges finished instances (and their chunks) past the retention
window, in small batches. It declares its own clustered schedule, as a user's job module
does; the daemon's settings (CHUNKD_RETENTION*) shape it (`configured`)."""
from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec

from chunkd import Context, Job, Schedule, Sink
from metrics import RETENTION_PURGED
from storage.retention import expired_instances, purge, purge_fires

PAGE = 200  # instances per chunk


KEEP = 7 * 86400          # CHUNKD_RETENTION's default
KEEP_FAILED = 30 * 86400  # CHUNKD_RETENTION_FAILED's default
EVERY = 300.0             # CHUNKD_RETENTION_EVERY's default


class RetentionParams(msgspec.Struct, forbid_unknown_fields=True):
    keep_seconds: float = KEEP
    keep_failed_seconds: float = KEEP_FAILED

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


schedule = Schedule(name="chunkd.retention", job="chunkd.retention", every=EVERY,
                    params={"keep_seconds": KEEP, "keep_failed_seconds": KEEP_FAILED})


def configured(keep: float, keep_failed: float, every: float) -> Schedule | None:
    """The schedule with the daemon's settings; None (no schedule) when `every` is 0."""
    if not every:
        return None
    return msgspec.structs.replace(schedule, every=max(1.0, every),
                                   params={"keep_seconds": keep, "keep_failed_seconds": keep_failed})
