"""The Kafka channel against a real Kafka-protocol broker (tansu), never a mock."""
from __future__ import annotations

import time

import anyio
import asyncpg
import pytest

from tests.chaos.channels import assigned, has_partitions, kafka_env, wait_for
from tests.chaos.test_kill import LEDGER, check_exactly_once
from tests.conftest import submit_direct, wait_status

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]


async def test_two_daemons_share_kafka_partitions(dsn: str, conn: asyncpg.Connection, spawn_daemon, kafka_broker) -> None:  # type: ignore[no-untyped-def]
    await conn.execute(LEDGER)
    a = spawn_daemon(**kafka_env(kafka_broker))
    b = spawn_daemon(**kafka_env(kafka_broker))
    await wait_for(lambda: _both_assigned(a, b), 30)
    n = 20_000
    iid = await submit_direct(dsn, "test.ledger", {"chunks": n, "work_ms": 1})
    await wait_status(conn, iid, {"COMPLETED", "FAILED"}, 180)
    await check_exactly_once(conn, iid, n)
    assert assigned(a) and assigned(b) and assigned(a) | assigned(b) == set(range(8))
    assert {r[0] for r in await conn.fetch("SELECT DISTINCT pid FROM test_ledger")} == {a.proc.pid, b.proc.pid}
    assert a.terminate() == 0 and b.terminate() == 0


async def _both_assigned(a, b) -> bool:  # type: ignore[no-untyped-def]
    return bool(assigned(a)) and bool(assigned(b))


async def test_broker_outage_mid_job_twice(dsn: str, conn: asyncpg.Connection, spawn_daemon, kafka_broker) -> None:  # type: ignore[no-untyped-def]
    """The broker stops twice mid-job (and comes back empty: tansu keeps topics in memory)."""
    from tests.conftest import free_port, wait_ready
    from tests.integration.test_observability import get
    await conn.execute(LEDGER)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # 8 steps per partition at once, so that the job outlasts both outages (the adapted
    # default would run up to 128 per partition and finish before the first one)
    a = spawn_daemon(**kafka_env(kafka_broker, CHUNKD_HTTP_ADDR=f"127.0.0.1:{port}", CHUNKD_PARTITION_CONCURRENCY="8"))
    wait_ready(url)
    await wait_for(lambda: has_partitions(a), 30)
    n = 12_000
    # ~28 s of work: it outlasts both outages (it goes on during them: Postgres is the truth)
    iid = await submit_direct(dsn, "test.ledger", {"chunks": n, "work_ms": 150})

    async def not_ready() -> bool:
        status, body = get(url + "/readyz")
        return status == 503 and "kafka channel not connected" in body
    for threshold in (0.05, 0.3):
        while await conn.fetchval("SELECT count(*) FROM test_ledger") < threshold * n:
            await anyio.sleep(0.05)
        kafka_broker.stop()
        stopped = time.monotonic()
        await wait_for(not_ready, 8)
        await anyio.sleep(max(0.0, 5 - (time.monotonic() - stopped)))  # down for at least 5 s
        assert a.proc.poll() is None  # the daemon keeps running without its broker
        kafka_broker.start()  # a new, empty broker on the same port
        assert await conn.fetchval("SELECT status FROM chunkd_instance WHERE id = $1", iid) == "IN_PROGRESS"
        wait_ready(url, timeout=60)  # reconnected, topic re-created
    await wait_status(conn, iid, {"COMPLETED", "FAILED"}, 180)
    await check_exactly_once(conn, iid, n)
    assert a.terminate() == 0
