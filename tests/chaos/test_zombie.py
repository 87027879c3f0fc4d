"""A frozen worker (SIGSTOP) past its lease: another daemon rescues its chunks, and the
zombie's late results are refused by the fencing token."""
from __future__ import annotations

import signal
import time

import anyio
import asyncpg
import pytest

from storage.states import C
from tests.chaos.channels import wait_for
from tests.chaos.test_kill import LEDGER, check_exactly_once
from tests.conftest import free_port, submit_direct, wait_status
from tests.integration.test_observability import get, samples

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

async def test_zombie_results_are_refused(dsn: str, conn: asyncpg.Connection, spawn_daemon, channel) -> None:  # type: ignore[no-untyped-def]
    await conn.execute(LEDGER)
    port = free_port()
    zombie = spawn_daemon(**channel(CHUNKD_NODE_ID="zombie", CHUNKD_PARTITION_CONCURRENCY="4", CHUNKD_CLAIM_BATCH="4",
                                    CHUNKD_HTTP_ADDR=f"127.0.0.1:{port}"))
    n = 40
    iid = await submit_direct(dsn, "test.ledger", {"chunks": n, "work_ms": 1500})
    deadline = time.monotonic() + 30
    while await conn.fetchval(f"""SELECT count(*) FROM chunkd_chunk c JOIN chunkd_node n ON n.id = c.lease_owner
                                 WHERE c.state = {C.IN_PROGRESS:d} AND c.step = 1 AND n.name = 'zombie'""") < 4:
        assert time.monotonic() < deadline
        await anyio.sleep(0.05)
    held = {r[0]: r[1] for r in await conn.fetch(
        "SELECT c.id, c.attempt FROM chunkd_chunk c JOIN chunkd_node n ON n.id = c.lease_owner "
        f"WHERE c.state = {C.IN_PROGRESS:d} AND c.step = 1 AND n.name = 'zombie'")}
    zombie.proc.send_signal(signal.SIGSTOP)
    rescuer = spawn_daemon(**channel(CHUNKD_NODE_ID="rescuer"))
    # the rescuer takes over (leader lease and chunk leases expire) and runs them again
    deadline = time.monotonic() + 45  # kafka: the group waits out the frozen member's session first
    while await conn.fetchval(f"SELECT count(*) FROM chunkd_chunk WHERE id = ANY($1) AND attempt > $2 AND state = {C.COMPLETED:d}",
                              list(held), min(held.values())) < len(held):
        assert time.monotonic() < deadline, "held chunks were not rescued"
        await anyio.sleep(0.1)
    zombie.proc.send_signal(signal.SIGCONT)  # it wakes up and tries to complete what it held
    await wait_status(conn, iid, {"COMPLETED", "FAILED"}, 120)
    await check_exactly_once(conn, iid, n)

    async def refused() -> bool:  # counted where they happen: the zombie's own metrics
        _, text = get(f"http://127.0.0.1:{port}/metrics")
        # their instance is alive: refused because the lease passed to another attempt
        return samples(text).get(("chunkd_chunks_refused_total", (("reason", "lease_lost"),)), 0) >= len(held)
    await wait_for(refused, 20, "every held chunk's late result refused")
    assert zombie.terminate() == 0 and rescuer.terminate() == 0
    ledger_pids = await conn.fetch("SELECT chunk_id, pid FROM test_ledger WHERE chunk_id = ANY($1)", list(held))
    assert {r["pid"] for r in ledger_pids} == {rescuer.proc.pid}  # the zombie wrote none of them
