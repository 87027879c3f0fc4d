"""Where the server's autovacuum does not look after chunkd's tables (this CI server runs with
`autovacuum = off`; a DBA may turn it off per table), the maintenance leader vacuums them
itself: a 30-minute soak on such a server had 15 million dead chunk rows against 1 million
live and a submit p50 climbing 7 -> 29 ms (issue 26). Here the table's own autovacuum is
turned off, so the test means the same on a server where autovacuum is on."""
from __future__ import annotations

import time
import urllib.request

import anyio
import asyncpg
import pytest

from storage.store import Store
from tests.conftest import submit_direct, wait_status

pytestmark = pytest.mark.anyio

CHUNKS = 20_000  # each leaves at least two dead versions (claim, completion): far past 5,000 + 2% of live


async def _chunk_stats(conn: asyncpg.Connection) -> tuple[int, int]:
    """(vacuums, dead rows) of chunkd_chunk, as the server's statistics have them now."""
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    row = await conn.fetchrow("SELECT vacuum_count + autovacuum_count, n_dead_tup FROM pg_stat_user_tables "
                              "WHERE relname = 'chunkd_chunk'")
    return row[0], row[1]


def _metrics(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        return r.read().decode()


async def test_the_leader_vacuums_the_chunk_table_when_autovacuum_is_off(
        dsn: str, conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    await conn.execute("ALTER TABLE chunkd_chunk SET (autovacuum_enabled = false)")
    api = api_daemon()
    iid = await submit_direct(dsn, "chunkd.synthetic", {"chunks": CHUNKS})
    await wait_status(conn, iid, {"COMPLETED"}, 180)
    deadline = time.monotonic() + 120
    vacuums, dead, metrics = 0, 0, ""
    # the server counts the VACUUM as it ends, the daemon just after: both, then
    while vacuums == 0 or dead > CHUNKS // 4 or 'kind="vacuum",table="chunkd_chunk"' not in metrics:
        assert time.monotonic() < deadline, f"chunkd_chunk: {vacuums} vacuums, {dead} dead rows after 120 s"
        await anyio.sleep(0.5)
        vacuums, dead = await _chunk_stats(conn)
        metrics = await anyio.to_thread.run_sync(_metrics, api.url)
    assert 'chunkd_table_dead_rows{table="chunkd_chunk"}' in metrics
    assert "autovacuum is off for chunkd's tables: chunkd vacuums them itself" in api.daemon.log_path.read_text()


async def test_chunkd_vacuum_off_leaves_it_to_the_dba_and_says_so(
        dsn: str, conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    await conn.execute("ALTER TABLE chunkd_chunk SET (autovacuum_enabled = false)")
    api = api_daemon(CHUNKD_VACUUM="off")
    iid = await submit_direct(dsn, "chunkd.synthetic", {"chunks": CHUNKS})
    await wait_status(conn, iid, {"COMPLETED"}, 180)
    deadline = time.monotonic() + 120
    while "CHUNKD_VACUUM=off: their dead rows grow" not in api.daemon.log_path.read_text():
        assert time.monotonic() < deadline, "the daemon never said that nothing vacuums its tables"
        await anyio.sleep(0.5)
    assert (await _chunk_stats(conn))[0] == 0


async def test_upkeep_never_waits_on_a_lock_and_says_when_it_skipped(dsn: str, conn: asyncpg.Connection) -> None:
    """The server only warns when SKIP_LOCKED skips a table: that is not counted as done."""
    store = await Store.open(dsn, partitions=1, min_size=1, max_size=2)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE chunkd_chunk IN ACCESS EXCLUSIVE MODE")
            with anyio.fail_after(30):
                why_not = await store.upkeep("chunkd_chunk", vacuum=True)
        assert why_not is not None and "skipping" in why_not
        assert await store.upkeep("chunkd_chunk", vacuum=True) is None
    finally:
        await store.close()


async def test_upkeep_gives_way_to_a_ddl_statement_it_blocks(dsn: str, conn: asyncpg.Connection) -> None:
    """As autovacuum does: a DDL statement (a migration, a DBA's ALTER) queued behind
    chunkd's VACUUM would hold every write queued behind it; the VACUUM is cancelled instead.
    The VACUUM is slowed to a crawl (cost delay) so that it is surely running."""
    db = await conn.fetchval("SELECT current_database()")
    await conn.execute(f'ALTER DATABASE "{db}" SET vacuum_cost_delay = 100')
    await conn.execute(f'ALTER DATABASE "{db}" SET vacuum_cost_limit = 1')
    iid = await conn.fetchval("INSERT INTO chunkd_instance (job_name, job_version, params, status, gated) "
                              "VALUES ('x', 1, '{}', 'QUEUED', false) RETURNING id")
    await conn.execute("INSERT INTO chunkd_chunk (instance_id, step, state, partition, max_attempts, data) "
                       "SELECT $1, 0, 3, 0, 3, '\\x00' FROM generate_series(1, 20000)", iid)
    await conn.execute("DELETE FROM chunkd_chunk WHERE instance_id = $1", iid)
    store = await Store.open(dsn, partitions=1, min_size=1, max_size=2)
    try:
        async with anyio.create_task_group() as tg:
            result: list[str | None] = []

            async def vacuum() -> None:
                result.append(await store.upkeep("chunkd_chunk", vacuum=True))
            tg.start_soon(vacuum)
            with anyio.fail_after(30):  # until the VACUUM runs
                while not await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                                              "'chunkd upkeep' AND query LIKE 'VACUUM%' AND state = 'active'"):
                    await anyio.sleep(0.05)
            started = time.monotonic()
            async with conn.transaction():
                await conn.execute("SET LOCAL lock_timeout = '20s'")
                await conn.execute("ALTER TABLE chunkd_chunk ADD COLUMN upkeep_test int")
            waited = time.monotonic() - started
        assert result and result[0] is not None and "gave way" in result[0]
        assert waited < 10, f"the ALTER waited {waited:.1f} s behind chunkd's VACUUM"
    finally:
        await store.close()
