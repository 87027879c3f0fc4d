"""The figures the benchmarks read back from the database, and the arithmetic on them."""
from __future__ import annotations

from typing import Any

import asyncpg

from benchmarks import sql


def percentiles_ms(vals: list[float] | None) -> dict[str, float | None]:
    """p50/p95/p99 in ms from Postgres' percentile_cont(ARRAY[.5, .95, .99]) in seconds."""
    if not vals:
        return {"p50": None, "p95": None, "p99": None}
    return {k: round(v * 1000, 2) if v is not None else None for k, v in zip(("p50", "p95", "p99"), vals)}


def sample_percentiles_ms(values: list[float]) -> dict[str, float | None]:
    """p50/p95/p99 in ms of samples in seconds taken in this process."""
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    s = sorted(values)
    pick = lambda p: round(s[min(len(s) - 1, int(p * len(s)))] * 1000, 2)  # noqa: E731
    return {"p50": pick(0.5), "p95": pick(0.95), "p99": pick(0.99)}


def sustained_rate(timeline: list[tuple[float, int]], total: int) -> float | None:
    """Chunks/s between 10% and 90% done: warm-up and tail excluded."""
    lo = next((t for t, n in timeline if n >= 0.1 * total), None)
    hi = next((t for t, n in timeline if n >= 0.9 * total), None)
    if lo is None or hi is None or hi <= lo:
        return None
    n_lo = next(n for t, n in timeline if t == lo)
    n_hi = next(n for t, n in timeline if t == hi)
    return (n_hi - n_lo) / (hi - lo)


# ---------------------------------------------------------------- one instance (drain, e2e)
async def progress(conn: asyncpg.Connection, instance_id: int, step: int) -> int:
    row = await conn.fetchrow(sql.COMPLETED, instance_id, step)
    return 0 if row is None else row[0] + row[1]


async def status(conn: asyncpg.Connection, instance_id: int) -> str | None:
    return await conn.fetchval(sql.INSTANCE_STATUS, instance_id)


async def latency_ms(conn: asyncpg.Connection, instance_id: int, step: int) -> dict[str, float | None]:
    return percentiles_ms(await conn.fetchval(sql.LATENCY, instance_id, step))


async def server_facts(conn: asyncpg.Connection) -> dict[str, Any]:
    return {"synchronous_commit": await conn.fetchval(sql.SYNC), "server_version": await conn.fetchval(sql.SERVER)}


async def transactions(conn: asyncpg.Connection) -> int:
    return await conn.fetchval(sql.XACTS)


async def wal_position(conn: asyncpg.Connection) -> int:
    """Bytes of WAL the whole server has written (the difference of two: a quiet server's run)."""
    return await conn.fetchval(sql.WAL_POSITION)


async def chunk_table_bytes(conn: asyncpg.Connection) -> int:
    return await conn.fetchval(sql.TABLE_BYTES)


# ---------------------------------------------------------------- many instances (the jobs workload)
# Only the workload's own instances: it can run in a database that holds others.
async def jobs_progress(conn: asyncpg.Connection, ids: list[int], step: int) -> int:
    return await conn.fetchval(sql.JOBS_PROGRESS, ids, step)


async def jobs_finished(conn: asyncpg.Connection, ids: list[int]) -> tuple[int, int]:
    row = await conn.fetchrow(sql.JOBS_FINISHED, ids)
    return row[0], row[1]


async def instance_latency(conn: asyncpg.Connection, ids: list[int], started: list[float]) -> tuple[dict[str, Any], float | None]:
    row = await conn.fetchrow(sql.JOBS_INSTANCE_LATENCY, ids, started)
    return percentiles_ms(row[0]), row[1]


async def chunk_latency(conn: asyncpg.Connection, ids: list[int], step: int) -> dict[str, Any]:
    row = await conn.fetchrow(sql.JOBS_CHUNK_LATENCY, ids, step)
    lo_hi = row[3]
    sustained = (0.8 * row[2] / (lo_hi[1] - lo_hi[0])) if lo_hi and lo_hi[1] > lo_hi[0] else None
    return {"created_to_completed_ms": percentiles_ms(row[0]), "claim_to_complete_ms": percentiles_ms(row[1]),
            "completed": row[2], "sustained_per_second": sustained}
