"""A poison chunk that kills its own worker process (os._exit): restarted each time, the
daemon fails that chunk after max_attempts and only that chunk; the job is not stuck
behind it, and the crash loop ends."""
from __future__ import annotations

import collections
import time

import anyio
import asyncpg
import pytest

from storage.states import C
from tests.chaos.test_kill import LEDGER
from tests.conftest import submit_direct

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]


async def test_poison_chunk_fails_alone_and_the_crash_loop_ends(
        dsn: str, conn: asyncpg.Connection, spawn_daemon, channel) -> None:  # type: ignore[no-untyped-def]
    await conn.execute(LEDGER)
    n, bad, max_attempts = 400, 17, 3
    iid = await submit_direct(dsn, "test.poison", {"chunks": n, "poison": bad})
    env = channel(CHUNKD_CLAIM_BATCH="8")  # batches small beside the job, as 100 is beside a large one
    daemon = spawn_daemon(**env)
    deaths = 0
    done_at_death: list[int] = []
    deadline = time.monotonic() + 150
    while (status := await conn.fetchval("SELECT status FROM chunkd_instance WHERE id = $1", iid)) \
            not in ("COMPLETED", "FAILED", "CANCELLED"):
        assert time.monotonic() < deadline, f"instance still {status} after {deaths} deaths"
        if daemon.proc.poll() is not None:
            assert daemon.proc.returncode == 70  # the poison's own exit code, not a chunkd crash
            deaths += 1
            done_at_death.append(await conn.fetchval("SELECT count(*) FROM test_ledger"))
            daemon = spawn_daemon(**env)  # as a supervisor (systemd, Kubernetes) would
        await anyio.sleep(0.1)
    assert status == "FAILED"
    await anyio.sleep(3)
    assert daemon.proc.poll() is None, "the daemon is still crash-looping"
    assert deaths == max_attempts

    poison = await conn.fetchrow("SELECT id, state, failures, error_message FROM chunkd_chunk "
                                 f"WHERE instance_id = $1 AND step = 1 AND state = {C.FAILED:d}", iid)
    assert poison["failures"] == max_attempts and "worker died" in poison["error_message"]
    others = await conn.fetch("SELECT state, failures FROM chunkd_chunk WHERE instance_id = $1 AND step = 1 "
                              "AND id <> $2", iid, poison["id"])
    print(f"deaths={deaths} done at each death={done_at_death} completed={sum(1 for r in others if r['state'] == 7)} "
          f"failures={sorted(collections.Counter(r['failures'] for r in others).items())}")
    completed = sum(1 for r in others if r["state"] == 7)
    # Nothing waits behind it: the others ran between the crashes, and when the poison chunk
    # failed, the instance failed and what had not run yet was cancelled (fail-fast, as batch2).
    assert len(others) == n - 1 and {r["state"] for r in others} <= {C.COMPLETED, C.CANCELLED} and completed >= n // 2
    assert done_at_death[-1] > done_at_death[0], done_at_death  # work went on between the deaths
    # bystanders claimed beside it died with it at most SUSPECT_AFTER times, never max_attempts
    assert max(r["failures"] for r in others) < max_attempts
    ledger = await conn.fetch("SELECT n, count(*) AS times FROM test_ledger GROUP BY n")
    assert len(ledger) == completed and bad not in {r["n"] for r in ledger} and {r["times"] for r in ledger} == {1}
    counters = await conn.fetchrow("SELECT completed, failed FROM chunkd_step_counter WHERE instance_id = $1 AND step = 1",
                                   iid)
    assert tuple(counters) == (completed, 1)
    message = await conn.fetchval("SELECT error_message FROM chunkd_instance WHERE id = $1", iid)
    assert "worker died" in message
    assert daemon.terminate() == 0
