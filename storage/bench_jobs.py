"""Statements of the benchmark's `jobs` workload (many instances submitted over HTTP): the
figures it reads back for its own instances only, so it can run in a database that holds others."""
from __future__ import annotations

from typing import Any

import asyncpg

from storage import sql


def _pcts(vals: list[float] | None) -> dict[str, float | None]:
    if not vals:
        return {"p50": None, "p95": None, "p99": None}
    return {k: round(v * 1000, 2) if v is not None else None for k, v in zip(("p50", "p95", "p99"), vals)}


async def progress(conn: asyncpg.Connection, ids: list[int], step: int) -> int:
    return await conn.fetchval(sql.BENCH_JOBS_PROGRESS, ids, step)


async def finished(conn: asyncpg.Connection, ids: list[int]) -> tuple[int, int]:
    row = await conn.fetchrow(sql.BENCH_JOBS_FINISHED, ids)
    return row[0], row[1]


async def instance_latency(conn: asyncpg.Connection, ids: list[int], started: list[float]) -> tuple[dict[str, Any], float | None]:
    row = await conn.fetchrow(sql.BENCH_JOBS_INSTANCE_LATENCY, ids, started)
    return _pcts(row[0]), row[1]


async def chunk_latency(conn: asyncpg.Connection, ids: list[int], step: int) -> dict[str, Any]:
    row = await conn.fetchrow(sql.BENCH_JOBS_CHUNK_LATENCY, ids, step)
    return {"created_to_completed_ms": _pcts(row[0]), "claim_to_complete_ms": _pcts(row[1]), "completed": row[2]}
