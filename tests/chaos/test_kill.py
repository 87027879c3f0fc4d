"""kill -9 at random moments: nothing lost, nothing applied twice."""
from __future__ import annotations

import json
import random

import anyio
import asyncpg
import pytest

from tests.chaos.channels import wait_for
from tests.conftest import free_port, submit_direct, wait_ready, wait_status
from tests.integration.test_observability import get

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

LEDGER = "CREATE TABLE test_ledger (chunk_id bigint NOT NULL, attempt int NOT NULL, n int NOT NULL, pid int NOT NULL)"


async def submit(dsn: str, chunks: int, work_ms: float) -> int:
    return await submit_direct(dsn, "test.ledger", {"chunks": chunks, "work_ms": work_ms})


async def check_exactly_once(conn: asyncpg.Connection, iid: int, n: int) -> None:
    row = await conn.fetchrow("SELECT status, report, error_message FROM chunkd_instance WHERE id = $1", iid)
    assert row["status"] == "COMPLETED", row["error_message"]
    dupes = await conn.fetch("SELECT chunk_id, count(*) FROM test_ledger GROUP BY chunk_id HAVING count(*) > 1")
    assert dupes == []
    assert await conn.fetchval("SELECT count(*) FROM test_ledger") == n
    assert await conn.fetchval("SELECT count(DISTINCT n) FROM test_ledger") == n
    completed = await conn.fetchval(
        "SELECT completed FROM chunkd_step_counter WHERE instance_id = $1 AND step = 1", iid)
    assert completed == n  # the instance counters equal the ledger
    assert json.loads(row["report"]) == {"count": n, "total": n * (n - 1) // 2}


async def test_kill_loop_three_daemons(dsn: str, conn: asyncpg.Connection, spawn_daemon, channel) -> None:  # type: ignore[no-untyped-def]
    """Three daemons on a 32,000-chunk gated job (plan, ledger step, reduction); every 2-2.5 s
    one of them, chosen at random, is SIGKILLed and started again; six times."""
    n, kills_wanted = 32_000, 6
    await conn.execute(LEDGER)
    # Kafka gives each partition to one daemon, so each daemon runs more per partition there.
    env = channel(CHUNKD_PARTITION_CONCURRENCY="16" if channel.name == "kafka" else "8")
    daemons = [spawn_daemon(**env) for _ in range(3)]
    iid = await submit(dsn, n, work_ms=60)  # outlasts the kill loop (~14 s): >= 20 s of work for 3 daemons
    while await conn.fetchval("SELECT count(*) FROM test_ledger") < 500:
        await anyio.sleep(0.05)
    rng = random.Random()
    killed_pids = []
    for _ in range(kills_wanted):
        await anyio.sleep(rng.uniform(2.0, 2.5))
        status = await conn.fetchval("SELECT status FROM chunkd_instance WHERE id = $1", iid)
        assert status == "IN_PROGRESS", f"the job ended ({status}) before kill {len(killed_pids) + 1}"
        i = rng.randrange(len(daemons))
        killed_pids.append(daemons[i].proc.pid)
        daemons[i].kill()
        daemons[i] = spawn_daemon(**env)
    await wait_status(conn, iid, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=300)
    await check_exactly_once(conn, iid, n)
    rescued = await conn.fetchval("SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND attempt > 1", iid)
    assert len(killed_pids) == kills_wanted and rescued > 0  # the kills really hit chunks in flight
    writers = {r[0] for r in await conn.fetch("SELECT DISTINCT pid FROM test_ledger")}
    assert len(writers & set(killed_pids)) >= 2  # killed daemons had done work: they were really mid-job
    print(f"kills={len(killed_pids)} rescued={rescued} writers={len(writers)}")
    for d in daemons:
        assert d.terminate() == 0


async def test_two_daemons_share_the_work_without_double_writes(
        dsn: str, conn: asyncpg.Connection, spawn_daemon) -> None:  # type: ignore[no-untyped-def]
    n = 10_000
    await conn.execute(LEDGER)
    a = spawn_daemon(CHUNKD_NODE_ID="a")
    b = spawn_daemon(CHUNKD_NODE_ID="b")
    iid = await submit(dsn, n, work_ms=2)
    await wait_status(conn, iid, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=240)
    await check_exactly_once(conn, iid, n)
    per_pid = await conn.fetch("SELECT pid, count(*) FROM test_ledger GROUP BY pid")
    assert {r["pid"] for r in per_pid} == {a.proc.pid, b.proc.pid}  # both did work
    assert a.terminate() == 0 and b.terminate() == 0


async def test_postgres_outage_mid_job_twice(
        pg_server: str, dsn: str, conn: asyncpg.Connection, spawn_daemon, channel) -> None:  # type: ignore[no-untyped-def]
    """Twice mid-job, the database refuses new connections and every chunkd connection is cut
    for a few seconds: the daemon reports not-ready, reconnects with backoff, and finishes."""
    n = 10_000
    await conn.execute(LEDGER)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    daemon = spawn_daemon(**channel(CHUNKD_HTTP_ADDR=f"127.0.0.1:{port}"))
    wait_ready(url)
    iid = await submit(dsn, n, work_ms=5)
    db = dsn.rsplit("/", 1)[1]
    admin = await asyncpg.connect(pg_server)

    async def not_ready() -> bool:
        status, body = get(url + "/readyz")
        return status == 503 and "database unreachable" in body
    try:
        for threshold in (0.2, 0.6):
            while await conn.fetchval("SELECT count(*) FROM test_ledger") < threshold * n:
                await anyio.sleep(0.02)
            await admin.execute(f'ALTER DATABASE "{db}" WITH ALLOW_CONNECTIONS false')
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = $1 AND pid <> $2 AND application_name <> 'chunkd-test'",
                                db, conn.get_server_pid())
            await wait_for(not_ready, 10, "/readyz reporting the database unreachable")
            frozen = await conn.fetchval("SELECT count(*) FROM test_ledger")
            await anyio.sleep(2)
            assert await conn.fetchval("SELECT count(*) FROM test_ledger") == frozen  # really cut off
            await admin.execute(f'ALTER DATABASE "{db}" WITH ALLOW_CONNECTIONS true')
            wait_ready(url, timeout=30)
    finally:
        await admin.execute(f'ALTER DATABASE "{db}" WITH ALLOW_CONNECTIONS true')
        await admin.close()
    await wait_status(conn, iid, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=120)
    await check_exactly_once(conn, iid, n)
    assert daemon.proc.poll() is None  # it reconnected rather than crash-looping
    assert daemon.terminate() == 0
