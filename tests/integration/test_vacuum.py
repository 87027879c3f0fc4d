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
