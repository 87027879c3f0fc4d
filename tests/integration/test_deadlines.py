"""Issue 22 row 4 at the store's level: deadlines, keepalives, abandoning connections."""
from __future__ import annotations

import socket
import time

import pytest

from storage.deadlines import Deadlines
from storage.store import Store

pytestmark = pytest.mark.anyio

SHORT = Deadlines(statement=1.0, user_sql=2.0, migration=60.0, stall=5.0, unhealthy=15.0)


def test_deadlines_follow_the_lease() -> None:
    assert Deadlines.from_lease(30) == Deadlines(30, 300, 3600, 30, 90)
    assert Deadlines.from_lease(2) == Deadlines(10, 100, 3600, 5, 15)


async def test_every_statement_has_a_deadline_and_sockets_keepalives(dsn: str) -> None:
    store = await Store.open(dsn, partitions=2, min_size=1, max_size=2, deadlines=SHORT)
    try:
        async with store.pool.acquire() as conn:
            sock = conn._con._transport.get_extra_info("socket")  # type: ignore[attr-defined]
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 1000
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await store.pool.fetchval("SELECT pg_sleep(5)")
        assert time.monotonic() - started < 3
        assert await store.pool.fetchval("SELECT 1") == 1  # the pool carries on
    finally:
        await store.close()


async def test_abandoned_connections_are_replaced(dsn: str) -> None:
    store = await Store.open(dsn, partitions=2, min_size=2, max_size=2, deadlines=SHORT)
    try:
        before = store.last_round_trip
        assert await store.pool.fetchval("SELECT 1") == 1
        assert store.last_round_trip > before  # a returned connection is a round trip
        pids = {await store.pool.fetchval("SELECT pg_backend_pid()") for _ in range(4)}
        assert await store.abandon_connections() == 2
        assert await store.pool.fetchval("SELECT 1") == 1
        assert await store.pool.fetchval("SELECT pg_backend_pid()") not in pids
    finally:
        await store.close()
