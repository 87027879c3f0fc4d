"""A slow daemon (1 s per chunk, 4 slots) in front of 10,000 READY chunks: it holds only what
it can run plus one claim batch per partition, its memory stays flat, and another daemon
takes the rest."""
from __future__ import annotations

import time
from pathlib import Path

import anyio
import asyncpg
import pytest

from storage.states import C
from tests.chaos.channels import has_partitions, wait_for
from tests.chaos.test_kill import LEDGER, check_exactly_once
from tests.conftest import submit_direct, wait_status

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

N, PARTITIONS, SLOTS_PER_PARTITION, BATCH = 10_000, 2, 2, 4


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_slow_daemon_holds_only_what_it_can_run(
        dsn: str, conn: asyncpg.Connection, spawn_daemon, channel) -> None:  # type: ignore[no-untyped-def]
    await conn.execute(LEDGER)
    slow = spawn_daemon(**channel(CHUNKD_NODE_ID="slow", CHUNKD_PARTITIONS=str(PARTITIONS),
                                  CHUNKD_PARTITION_CONCURRENCY=str(SLOTS_PER_PARTITION), CHUNKD_CLAIM_BATCH=str(BATCH),
                                  TEST_SLOW_STEP_SECONDS="1"))
    iid = await submit_direct(dsn, "test.ledger", {"chunks": N})

    async def backlog_ready() -> bool:
        return await conn.fetchval("SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND step = 1", iid) == N
    await wait_for(backlog_ready, 30, "the 10,000 chunks planned")
    node = await conn.fetchval("SELECT id FROM chunkd_node WHERE name = 'slow'")

    # The slow daemon alone for 6 s: sample what it holds and its memory.
    held_max: dict[int, int] = {}
    rss: list[tuple[float, int]] = []
    started = time.monotonic()
    while (t := time.monotonic() - started) < 6:
        for p, n in await conn.fetch(f"SELECT partition, count(*) FROM chunkd_chunk WHERE state = {C.IN_PROGRESS:d} AND lease_owner = $1 "
                                     "GROUP BY partition", node):
            held_max[p] = max(held_max.get(p, 0), n)
        rss.append((t, rss_kib(slow.proc.pid)))
        await anyio.sleep(0.25)
    done_alone = await conn.fetchval("SELECT count(*) FROM test_ledger")
    ready = await conn.fetchval(f"SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND step = 1 AND state = {C.READY:d}", iid)
    assert held_max and max(held_max.values()) <= SLOTS_PER_PARTITION + BATCH, held_max
    assert sum(held_max.values()) <= PARTITIONS * (SLOTS_PER_PARTITION + BATCH)
    assert done_alone <= 8 * PARTITIONS * SLOTS_PER_PARTITION  # 1 s per chunk on 4 slots: the 6 s window + start-up
    assert ready >= N - done_alone - PARTITIONS * (SLOTS_PER_PARTITION + BATCH)  # the rest is left for others
    warm = [kib for t, kib in rss if t >= 2]
    growth_kib = max(warm) - warm[0]
    print(f"held per partition {held_max}, done alone {done_alone}, RSS {warm[0] // 1024} MiB "
          f"-> max {max(warm) // 1024} MiB (+{growth_kib} KiB)")
    assert growth_kib < 4 * 1024, rss  # flat: the backlog is not pulled into memory

    fast = spawn_daemon(**channel(CHUNKD_NODE_ID="fast", CHUNKD_PARTITIONS=str(PARTITIONS)))
    if channel.name == "kafka":
        # Kafka gives each partition to one daemon: the fast one takes its share at the
        # rebalance and the rest when the slow one leaves (it hands back what it holds).
        await wait_for(lambda: has_partitions(fast), 30, "the fast daemon assigned a partition")
        assert slow.terminate() == 0
    await wait_status(conn, iid, {"COMPLETED", "FAILED"}, 120)
    await check_exactly_once(conn, iid, N)
    by_pid = dict(await conn.fetch("SELECT pid, count(*) FROM test_ledger GROUP BY pid"))
    assert by_pid.get(fast.proc.pid, 0) >= N - 200, by_pid  # the other daemon took the rest
    assert fast.terminate() == 0
    if slow.proc.poll() is None:
        assert slow.terminate() == 0
