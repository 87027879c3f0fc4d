"""A SIGKILLed daemon's node row does not stay forever: the maintenance leader deletes
rows whose heartbeat stopped 10 x CHUNKD_LEASE_SECONDS ago (issue 15: it used to leak)."""
from __future__ import annotations

import asyncpg
import pytest

from .channels import postgres_env, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]


async def test_a_killed_daemons_node_row_is_forgotten(conn: asyncpg.Connection, spawn_daemon) -> None:  # type: ignore[no-untyped-def]
    env = dict(CHUNKD_LEASE_SECONDS="1", CHUNKD_HEARTBEAT_SECONDS="0.25", CHUNKD_MAINTENANCE_INTERVAL="0.5")
    survivor = spawn_daemon(**postgres_env(**env))
    victim = spawn_daemon(**postgres_env(**env))

    async def registered(pid: int) -> bool:
        return await conn.fetchval("SELECT count(*) FROM chunkd_node WHERE pid = $1", pid) == 1
    await wait_for(lambda: registered(survivor.proc.pid), 30, "the survivor registered")
    await wait_for(lambda: registered(victim.proc.pid), 30, "the victim registered")
    victim.kill()

    async def forgotten() -> bool:
        return not await registered(victim.proc.pid)
    await wait_for(forgotten, 90, "the killed daemon's node row deleted (after 10 x 1 s)")
    assert await registered(survivor.proc.pid)  # a live node's row stays
    assert survivor.terminate() == 0
