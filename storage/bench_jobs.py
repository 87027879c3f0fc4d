"""Statements of the benchmark's `jobs` workload (many instances submitted over HTTP): the
figures it reads back for its own instances only, so it can run in a database that holds others."""
from __future__ import annotations

from typing import Any

import asyncpg

from .states import C

_PROGRESS = """
SELECT coalesce(sum(completed + failed), 0)::bigint FROM chunkd_step_counter
WHERE instance_id = ANY($1::bigint[]) AND step = $2"""
_FINISHED = """
SELECT count(*) FILTER (WHERE status IN ('COMPLETED', 'FAILED', 'CANCELLED')),
       count(*) FILTER (WHERE status = 'COMPLETED')
FROM chunkd_instance WHERE id = ANY($1::bigint[])"""
# Submit -> COMPLETED from the client's own start time of each submit (the scheduled one under
# --rate), so time spent queued in the client counts; same machine, same clock.
_INSTANCE_LATENCY = """
SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM i.finished_at)::float8 - s.t),
       max(extract(epoch FROM i.finished_at)::float8)
FROM unnest($1::bigint[], $2::float8[]) AS s(id, t) JOIN chunkd_instance i ON i.id = s.id
WHERE i.status = 'COMPLETED'"""
# A chunk's life: created (its parent step completed) -> completed, and claim -> complete.
_CHUNK_LATENCY = f"""
SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM completed_at - created_at)::float8),
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM completed_at - claimed_at)::float8),
       count(*)
FROM chunkd_chunk WHERE instance_id = ANY($1::bigint[]) AND step = $2 AND state = {int(C.COMPLETED)}"""


def _pcts(vals: list[float] | None) -> dict[str, float | None]:
    if not vals:
        return {"p50": None, "p95": None, "p99": None}
    return {k: round(v * 1000, 2) if v is not None else None for k, v in zip(("p50", "p95", "p99"), vals)}


async def progress(conn: asyncpg.Connection, ids: list[int], step: int) -> int:
    return await conn.fetchval(_PROGRESS, ids, step)


async def finished(conn: asyncpg.Connection, ids: list[int]) -> tuple[int, int]:
    row = await conn.fetchrow(_FINISHED, ids)
    return row[0], row[1]


async def instance_latency(conn: asyncpg.Connection, ids: list[int], started: list[float]) -> tuple[dict[str, Any], float | None]:
    row = await conn.fetchrow(_INSTANCE_LATENCY, ids, started)
    return _pcts(row[0]), row[1]


async def chunk_latency(conn: asyncpg.Connection, ids: list[int], step: int) -> dict[str, Any]:
    row = await conn.fetchrow(_CHUNK_LATENCY, ids, step)
    return {"created_to_completed_ms": _pcts(row[0]), "claim_to_complete_ms": _pcts(row[1]), "completed": row[2]}
