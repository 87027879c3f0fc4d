"""A READY backlog seeded with COPY: an instance whose step already has its chunks, as if
the step before had run (the drain workload, fair_share, tests/integration/test_throughput.py)."""
from __future__ import annotations

from typing import Any

import asyncpg

from benchmarks import sql
from storage import sql as runtime_sql
from storage.codec import encode, to_json
from storage.counters import COMPLETED, CREATED, CounterDelta
from storage.states import C


async def seed_backlog(conn: asyncpg.Connection, job: str, version: int, params: Any, step: int,
                       items: list[Any], partitions: int, max_attempts: int) -> int:
    """An instance whose `step` already has len(items) READY chunks (as if step-1 had run)."""
    async with conn.transaction():
        iid = await conn.fetchval(sql.INSTANCE_IN_PROGRESS, job, version, to_json(params))
        delta = CounterDelta()
        for s in range(step):
            delta.add(iid, s, CREATED)
            delta.add(iid, s, COMPLETED)
        delta.add(iid, step, CREATED, len(items))
        await conn.execute(runtime_sql.COUNTERS_ADD, *delta.arrays())
        rows = [(iid, step, int(C.READY), i % partitions, max_attempts, encode(item), runtime_sql.rank_offset(i))
                for i, item in enumerate(items)]
        await conn.copy_records_to_table("chunkd_chunk", records=rows, columns=runtime_sql.CHUNK_COPY_COLUMNS)
    await conn.execute(sql.ANALYZE_CHUNKS)
    return iid
