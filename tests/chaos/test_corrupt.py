"""Chunk data that does not decode into the step's input type: that chunk FAILED at once with
a clear message; no other chunk, instance or actor is affected."""
from __future__ import annotations

import asyncpg
import pytest

from storage.codec import encode
from tests.chaos.test_kill import LEDGER, check_exactly_once
from tests.conftest import free_port, submit_direct, wait_ready, wait_status
from tests.integration.test_observability import get, samples
from tests.testjobs import Item

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]


async def test_corrupt_chunk_fails_alone(dsn: str, conn: asyncpg.Connection, spawn_daemon, channel) -> None:  # type: ignore[no-untyped-def]
    await conn.execute(LEDGER)
    good = 500
    # An instance of the ledger job past its plan step, as a broken writer or a bad manual
    # edit would leave it: 500 good step-1 chunks and one whose bytes are not an Item.
    bad_iid = await conn.fetchval("""
        INSERT INTO chunkd_instance (job_name, job_version, params, gated, status, current_step, started_at)
        VALUES ('test.ledger', 1, '{"chunks": 501}', true, 'IN_PROGRESS', 1, now()) RETURNING id""")
    rows = [(bad_iid, 1, 2, i % 4, 20, encode(Item(i))) for i in range(good)]
    rows.insert(good // 2, (bad_iid, 1, 2, 1, 20, b"\xc1 not msgpack"))
    await conn.copy_records_to_table("chunkd_chunk", records=rows,
                                     columns=["instance_id", "step", "state", "partition", "max_attempts", "data"])
    await conn.execute("INSERT INTO chunkd_step_counter (instance_id, step, created, completed) "
                       "VALUES ($1, 0, 1, 1), ($1, 1, $2, 0)", bad_iid, good + 1)
    port = free_port()
    daemon = spawn_daemon(**channel(CHUNKD_HTTP_ADDR=f"127.0.0.1:{port}"))
    wait_ready(f"http://127.0.0.1:{port}")
    other = await submit_direct(dsn, "test.ledger", {"chunks": 2_000})  # a healthy neighbour

    assert await wait_status(conn, bad_iid, {"COMPLETED", "FAILED"}, 60) == "FAILED"
    await wait_status(conn, other, {"COMPLETED", "FAILED"}, 120)
    bad = await conn.fetchrow("SELECT id, state, attempt, failures, error_message FROM chunkd_chunk "
                              "WHERE instance_id = $1 AND data = $2", bad_iid, b"\xc1 not msgpack")
    assert (bad["state"], bad["attempt"], bad["failures"]) == (6, 1, 1)  # not retried: it can never decode
    assert "chunk data does not decode as Item" in bad["error_message"]
    message = await conn.fetchval("SELECT error_message FROM chunkd_instance WHERE id = $1", bad_iid)
    assert "does not decode" in message
    # its siblings: completed exactly once, or cancelled when the instance failed (fail-fast)
    states = await conn.fetch("SELECT k.state, count(l.chunk_id) AS writes FROM chunkd_chunk k "
                              "LEFT JOIN test_ledger l ON l.chunk_id = k.id "
                              "WHERE k.instance_id = $1 AND k.step = 1 AND k.id <> $2 GROUP BY k.id, k.state",
                              bad_iid, bad["id"])
    assert len(states) == good and all((r["state"], r["writes"]) in ((7, 1), (8, 0)) for r in states)
    # the neighbour is untouched
    await conn.execute("DELETE FROM test_ledger WHERE chunk_id IN (SELECT id FROM chunkd_chunk WHERE instance_id = $1)",
                       bad_iid)
    await check_exactly_once(conn, other, 2_000)
    _, text = get(f"http://127.0.0.1:{port}/metrics")
    assert not any(v for (name, _), v in samples(text).items() if name == "chunkd_actor_restarts_total")
    assert daemon.terminate() == 0
