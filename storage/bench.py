"""Statements the benchmark harness needs: a READY backlog seeded with COPY, and the
figures it reads back. Kept here, with every other statement chunkd runs."""
from __future__ import annotations

from typing import Any

import asyncpg

from storage import sql
from storage.codec import encode, to_json
from storage.counters import COMPLETED, CREATED, CounterDelta
from storage.states import C


async def seed_backlog(conn: asyncpg.Connection, job: str, version: int, params: Any, step: int,
                       items: list[Any], partitions: int, max_attempts: int) -> int:
    """An instance whose `step` already has len(items) READY chunks (as if step-1 had run)."""
    async with conn.transaction():
        iid = await conn.fetchval(sql.BENCH_INSTANCE, job, version, to_json(params))
        delta = CounterDelta()
        for s in range(step):
            delta.add(iid, s, CREATED)
            delta.add(iid, s, COMPLETED)
        delta.add(iid, step, CREATED, len(items))
        await conn.execute(sql.COUNTERS_ADD, *delta.arrays())
        rows = [(iid, step, int(C.READY), i % partitions, max_attempts, encode(item), sql.rank_offset(i))
                for i, item in enumerate(items)]
        await conn.copy_records_to_table("chunkd_chunk", records=rows, columns=sql.CHUNK_COPY_COLUMNS)
    await conn.execute(sql.BENCH_ANALYZE)
    return iid


async def progress(conn: asyncpg.Connection, instance_id: int, step: int) -> int:
    row = await conn.fetchrow(sql.BENCH_COMPLETED, instance_id, step)
    return 0 if row is None else row[0] + row[1]


async def latency_ms(conn: asyncpg.Connection, instance_id: int, step: int) -> dict[str, float | None]:
    vals = await conn.fetchval(sql.BENCH_LATENCY, instance_id, step)
    if not vals:
        return {"p50": None, "p95": None, "p99": None}
    return {k: round(v * 1000, 2) if v is not None else None for k, v in zip(("p50", "p95", "p99"), vals)}


async def server_facts(conn: asyncpg.Connection) -> dict[str, Any]:
    return {"synchronous_commit": await conn.fetchval(sql.BENCH_SYNC), "server_version": await conn.fetchval(sql.BENCH_SERVER)}


async def transactions(conn: asyncpg.Connection) -> int:
    return await conn.fetchval(sql.BENCH_XACTS)


async def wal_position(conn: asyncpg.Connection) -> int:
    """Bytes of WAL the whole server has written (the difference of two: a quiet server's run)."""
    return await conn.fetchval(sql.BENCH_WAL_POSITION)


async def chunk_table_bytes(conn: asyncpg.Connection) -> int:
    return await conn.fetchval(sql.BENCH_TABLE_BYTES)
