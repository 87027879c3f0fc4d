"""Issue 22 row 4: the daemon's connections to Postgres go silent for ever (no FIN, no RST)
while new connections work — a NAT or firewall that forgot them, a failover behind a virtual
IP — made with a real TCP proxy between the daemon and Postgres (tests/chaos/proxy.py)."""
from __future__ import annotations

import time

import anyio
import asyncpg
import pytest

from storage.deadlines import Deadlines
from tests.chaos.channels import postgres_env, wait_for
from tests.chaos.proxy import SilencingProxy
from tests.chaos.test_kill import LEDGER, check_exactly_once, submit
from tests.conftest import free_port, wait_ready, wait_status
from tests.integration.test_observability import get

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]


async def test_silent_connections_are_dropped_and_a_daemon_that_cannot_reconnect_says_unhealthy(
        dsn: str, conn: asyncpg.Connection, spawn_daemon) -> None:  # type: ignore[no-untyped-def]
    n = 5000
    await conn.execute(LEDGER)
    proxy = SilencingProxy.to(dsn)
    try:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        d = spawn_daemon(**postgres_env(CHUNKD_DATABASE_URL=proxy.dsn(dsn), CHUNKD_HTTP_ADDR=f"127.0.0.1:{port}"))
        wait_ready(url)
        iid = await submit(dsn, n, work_ms=10)
        while await conn.fetchval("SELECT count(*) FROM test_ledger") < n // 5:
            await anyio.sleep(0.02)
        # 1. Mid-job, every connection the daemon has goes silent; new ones still work. The
        # daemon drops them (no round trip within the stall bound), reconnects, and the job
        # completes with every chunk's effect exactly once.
        silenced = proxy.silence()
        assert silenced >= 3, silenced  # the pool's, the listener's, the heartbeat's at least
        assert await conn.fetchval("SELECT status FROM chunkd_instance WHERE id = $1", iid) == "IN_PROGRESS"
        started = time.monotonic()
        await wait_status(conn, iid, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=120)
        print(f"completed {time.monotonic() - started:.1f}s after the silence")
        await check_exactly_once(conn, iid, n)
        # Either way out of it is the fix: the stall watch dropped every connection, or each
        # statement's deadline ended its silent connection first (asyncpg then drops it and the
        # pool dials anew) — which one wins is a race under load (seen in CI).
        text = d.log_path.read_text()
        assert "dropped every connection" in text or "TimeoutError" in text
        assert get(url + "/healthz")[0] == 200

        # 2. Now nothing gets through at all (new connections are accepted, then silent too):
        # the daemon cannot make progress, and /healthz says so within the documented bound
        # (3 x the stall bound), so a supervisor would restart it.
        proxy.blackhole()
        proxy.silence()
        bound = Deadlines.from_lease(2.0).unhealthy
        started = time.monotonic()

        async def unhealthy() -> bool:
            status, body = get(url + "/healthz")
            return status == 503 and "no round trip with the database" in body
        await wait_for(unhealthy, bound + 15, "/healthz failing")
        took = time.monotonic() - started
        print(f"/healthz 503 after {took:.1f}s (bound {bound:.0f}s)")
        assert took >= bound / 2  # not long before the bound either: a slow moment is not a dead daemon

        # 3. Healed: it reconnects by itself and says so.
        proxy.blackhole(False)

        async def healthy() -> bool:
            return get(url + "/healthz")[0] == 200
        await wait_for(healthy, 60, "/healthz healthy again")
        assert d.terminate() == 0
    finally:
        proxy.close()
