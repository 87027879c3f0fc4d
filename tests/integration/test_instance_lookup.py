"""A by-instance lookup of chunks stays on its instance's pages as the chunk table churns
(issue 26's soak): retention deletes old instances' chunks, new ones reuse the space, and
the lookup the API's instance view makes (every submit answers with it) must not come to
read the table because the index's summaries widened with the table's age, nor because the
planner gave up on the index for a scan of the whole table (migration 0020: a btree)."""
from __future__ import annotations

import json

import asyncpg
import pytest

from storage.states import C

pytestmark = pytest.mark.anyio

PER_INSTANCE = 200   # chunks per instance, the soak's shape
PER_ROUND = 10       # instances submitted (and purged) per round
ROUNDS = 12


async def _submit_round(conn: asyncpg.Connection, first_id: int) -> None:
    await conn.execute(
        "INSERT INTO chunkd_chunk (instance_id, step, state, partition, max_attempts, data, completed_at) "
        "SELECT i, 1, $3, 0, 3, decode(repeat('ab', 40), 'hex'), now() "
        "FROM generate_series($1::bigint, $2::bigint) AS i, generate_series(1, $4)",
        first_id, first_id + PER_ROUND - 1, int(C.COMPLETED), PER_INSTANCE)


async def _blocks_read(conn: asyncpg.Connection, instance_id: int) -> tuple[int, int]:
    """(pages the by-instance lookup read, index and heap; heap pages its instance's rows are on)."""
    plan = await conn.fetchval(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT step, state, count(*) FROM chunkd_chunk "
        "WHERE instance_id = $1 GROUP BY step, state", instance_id)
    plan = json.loads(plan) if isinstance(plan, str) else plan
    top = plan[0]["Plan"]  # its buffers include every node's below it
    pages = await conn.fetchval(
        "SELECT count(DISTINCT (ctid::text::point)[0]::bigint) FROM chunkd_chunk WHERE instance_id = $1", instance_id)
    return top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0), pages


async def test_a_lookup_by_instance_reads_its_own_pages_after_retention_churn(conn: asyncpg.Connection) -> None:
    # Two windows of instances live; each round the oldest is purged and its space reused.
    next_id = 1
    for _ in range(2):
        await _submit_round(conn, next_id)
        next_id += PER_ROUND
    for _ in range(ROUNDS):
        await conn.execute("DELETE FROM chunkd_chunk WHERE instance_id < $1", next_id - 2 * PER_ROUND)
        await conn.execute("VACUUM chunkd_chunk")  # frees the space for the next round
        await _submit_round(conn, next_id)
        next_id += PER_ROUND
    await conn.execute("VACUUM ANALYZE chunkd_chunk")
    pages = await conn.fetchval("SELECT pg_relation_size('chunkd_chunk') / current_setting('block_size')::int")
    for instance_id in (next_id - 1, next_id - PER_ROUND, next_id - 2 * PER_ROUND):
        read, own = await _blocks_read(conn, instance_id)
        assert read <= own + 20, (instance_id, read, own, pages)  # its pages and a few index pages: not the table


async def test_a_lookup_by_instance_reads_its_own_pages_while_the_table_grows(conn: asyncpg.Connection) -> None:
    """Pages added since the last vacuum were unsummarized in the BRIN, and a lookup read them all."""
    await _submit_round(conn, 1)
    await conn.execute("VACUUM ANALYZE chunkd_chunk")  # then the table grows, no vacuum
    for first in range(1 + PER_ROUND, 1 + 6 * PER_ROUND, PER_ROUND):
        await _submit_round(conn, first)
    read, own = await _blocks_read(conn, 1 + 3 * PER_ROUND)
    assert read <= own + 20, (read, own)
