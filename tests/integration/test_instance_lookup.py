"""A by-instance lookup of chunks stays on its instance's pages as the chunk table churns
(issue 26's soak): retention deletes old instances' chunks, new ones reuse the space, and
the lookup the API's instance view makes (every submit answers with it) must not come to
read the table because the index's summaries widened with the table's age."""
from __future__ import annotations

import json

import asyncpg
import pytest

from storage.states import C

pytestmark = pytest.mark.anyio

PER_INSTANCE = 200   # chunks per instance, the soak's shape
PER_ROUND = 10       # instances submitted (and purged) per round
ROUNDS = 12
PAGES_PER_RANGE = 16  # migration 0019


async def _submit_round(conn: asyncpg.Connection, first_id: int) -> None:
    await conn.execute(
        "INSERT INTO chunkd_chunk (instance_id, step, state, partition, max_attempts, data, completed_at) "
        "SELECT i, 1, $3, 0, 3, decode(repeat('ab', 40), 'hex'), now() "
        "FROM generate_series($1::bigint, $2::bigint) AS i, generate_series(1, $4)",
        first_id, first_id + PER_ROUND - 1, int(C.COMPLETED), PER_INSTANCE)


async def _blocks_read(conn: asyncpg.Connection, instance_id: int) -> tuple[int, int]:
    """(heap blocks the by-instance lookup read, 16-page ranges its instance's rows are on)."""
    plan = await conn.fetchval(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT step, state, count(*) FROM chunkd_chunk "
        "WHERE instance_id = $1 GROUP BY step, state", instance_id)
    plan = json.loads(plan) if isinstance(plan, str) else plan

    def heap_blocks(node: dict) -> int:  # type: ignore[type-arg]
        own = node.get("Exact Heap Blocks", 0) + node.get("Lossy Heap Blocks", 0) \
            if node["Node Type"] == "Bitmap Heap Scan" else 0
        if node["Node Type"] == "Seq Scan":
            own = node.get("Shared Hit Blocks", 0) + node.get("Shared Read Blocks", 0)
        return own + sum(heap_blocks(c) for c in node.get("Plans", []))

    ranges = await conn.fetchval(
        "SELECT count(DISTINCT (ctid::text::point)[0]::bigint / $2) FROM chunkd_chunk WHERE instance_id = $1",
        instance_id, PAGES_PER_RANGE)
    return heap_blocks(plan[0]["Plan"]), ranges


async def test_a_lookup_by_instance_reads_its_own_ranges_after_retention_churn(conn: asyncpg.Connection) -> None:
    # Two windows of instances live; each round the oldest is purged and its space reused.
    next_id = 1
    for _ in range(2):
        await _submit_round(conn, next_id)
        next_id += PER_ROUND
    for _ in range(ROUNDS):
        await conn.execute("DELETE FROM chunkd_chunk WHERE instance_id < $1", next_id - 2 * PER_ROUND)
        await conn.execute("VACUUM chunkd_chunk")  # frees the space; summarizes the new ranges
        await _submit_round(conn, next_id)
        next_id += PER_ROUND
    await conn.execute("VACUUM ANALYZE chunkd_chunk")
    pages = await conn.fetchval("SELECT pg_relation_size('chunkd_chunk') / current_setting('block_size')::int")
    for instance_id in (next_id - 1, next_id - PER_ROUND, next_id - 2 * PER_ROUND):
        read, ranges = await _blocks_read(conn, instance_id)
        # the ranges holding its rows, and one more on either side of each: not the table
        assert read <= 3 * ranges * PAGES_PER_RANGE, (instance_id, read, ranges, pages)


async def test_a_lookup_by_instance_reads_its_own_ranges_while_the_table_grows(
        dsn: str, conn: asyncpg.Connection) -> None:
    """Pages added since the last vacuum are unsummarized, and a BRIN lookup reads them all:
    the maintenance leader's RangeSummarizer keeps them summarized between vacuums."""
    from actors.duties import PassContext, RangeSummarizer
    from storage.store import Store
    await _submit_round(conn, 1)
    await conn.execute("VACUUM ANALYZE chunkd_chunk")  # a summarized start; then the table grows
    for first in range(1 + PER_ROUND, 1 + 6 * PER_ROUND, PER_ROUND):
        await _submit_round(conn, first)
    store = await Store.open(dsn, partitions=2)
    try:
        await RangeSummarizer(store).run(PassContext(None))
    finally:
        await store.close()
    read, ranges = await _blocks_read(conn, 1 + 3 * PER_ROUND)
    assert read <= 3 * ranges * PAGES_PER_RANGE, (read, ranges)


async def test_the_summarizer_skips_its_turn_while_autovacuum_holds_the_table(
        dsn: str, conn: asyncpg.Connection) -> None:
    """It never waits behind a vacuum (nor makes autovacuum give way to it): a short lock_timeout."""
    import time

    from storage.store import Store
    await _submit_round(conn, 1)
    store = await Store.open(dsn, partitions=2)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE chunkd_chunk IN SHARE UPDATE EXCLUSIVE MODE")  # as VACUUM does
            t = time.monotonic()
            assert await store.summarize_new_chunk_ranges() == 0
            assert time.monotonic() - t < 1.0
        assert await store.summarize_new_chunk_ranges() > 0
    finally:
        await store.close()
