"""Issue 22 rows 1-3: a restart is a new run of the instance, and a cancelled step's chunk
ends CANCELLED whatever the step does after the cancel. After a stop and a restart, the
instance's result is the result of a run that was never stopped: every input's transactional
effect exactly once, a report over every input, every chunk COMPLETED."""
from __future__ import annotations

import anyio
import asyncpg
import pytest

from daemon.cli.client import ApiClient
from storage.states import C
from tests.chaos.channels import postgres_env, wait_for
from tests.conftest import free_port, submit_direct, wait_ready, wait_status
from tests.integration.test_observability import get, samples
from tests.testjobs import EFFECT_TABLES

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]


async def _status(conn: asyncpg.Connection, iid: int) -> str:
    return await conn.fetchval("SELECT status FROM chunkd_instance WHERE id = $1", iid)


async def _effects(conn: asyncpg.Connection, iid: int) -> tuple[int, int]:
    """(effects written, distinct inputs with an effect) for the instance."""
    row = await conn.fetchrow("SELECT count(*), count(DISTINCT n) FROM test_effect WHERE instance_id = $1", iid)
    return row[0], row[1]


async def assert_ran_as_if_never_stopped(conn: asyncpg.Connection, iid: int, n: int) -> None:
    assert await wait_status(conn, iid, {"COMPLETED", "FAILED"}, 180) == "COMPLETED", \
        await conn.fetchval("SELECT error_message FROM chunkd_instance WHERE id = $1", iid)
    states = dict(await conn.fetch("SELECT state, count(*) FROM chunkd_chunk WHERE instance_id = $1 GROUP BY state",
                                   iid))
    assert states == {C.COMPLETED: n + n + 1}, {C(k).name: v for k, v in states.items()}  # plan + work + reduction input
    assert await _effects(conn, iid) == (n, n)  # every input's transactional effect exactly once
    report = await conn.fetchval("SELECT report FROM chunkd_instance WHERE id = $1", iid)
    import json
    assert json.loads(report) == {"count": n, "total": n * (n - 1) // 2}
    assert await conn.fetchval("SELECT count(*) FROM test_reduced WHERE instance_id = $1", iid) == 1


async def test_force_stop_then_immediate_restart_completes_every_chunk(dsn: str, conn: asyncpg.Connection,
                                                                       spawn_daemon) -> None:  # type: ignore[no-untyped-def]
    """Row 1: two daemons run a 3,000-chunk job of transactional 100 ms steps; force-stop,
    and restart as soon as the instance reads CANCELLED. On the old code the instance ended
    COMPLETED within a second with most chunks still CANCELLED (never run) and a short report:
    the daemons' "ended" sets outlived the restart and released the new run's claims as
    CANCELLED, and maintenance counted cancelled chunks as done."""
    await conn.execute(EFFECT_TABLES)
    port, other_port = free_port(), free_port()
    spawn_daemon(**postgres_env(CHUNKD_HTTP_ADDR=f"127.0.0.1:{port}"))
    other = spawn_daemon(**postgres_env(CHUNKD_HTTP_ADDR=f"127.0.0.1:{other_port}"))
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    n = 3000
    iid = await submit_direct(dsn, "test.react_async", {"chunks": n, "work_ms": 100, "react": "return"})

    async def working() -> bool:
        return (await _effects(conn, iid))[0] >= 200
    await wait_for(working, 90, "work under way")
    api = ApiClient(url)
    api.call("POST", f"/api/v1/instances/{iid}/stop?force=true")
    while await _status(conn, iid) != "CANCELLED":
        await anyio.sleep(0.01)
    api.call("POST", f"/api/v1/instances/{iid}/restart")
    await assert_ran_as_if_never_stopped(conn, iid, n)
    assert other.proc.poll() is None
    # Nothing is left to run, so neither daemon holds anything. CI once saw both sit silent and
    # healthy with the instance IN_PROGRESS: results refused after the restart had made them
    # forget chunks they had claimed again, and their partitions' counts of what they held
    # never came down (a partition over its room never claims again).
    for at in (url, f"http://127.0.0.1:{other_port}"):
        async def nothing_held() -> bool:
            return samples(get(f"{at}/metrics")[1]).get(("chunkd_chunks_in_flight", ()), -1) == 0
        await wait_for(nothing_held, 30, f"{at}: chunkd_chunks_in_flight back to 0")


def _cancel(url: str, route: str, iid: int) -> None:
    api = ApiClient(url)
    if route == "api":
        api.call("POST", f"/api/v1/instances/{iid}/cancel")
    else:  # hapi-fhir-groovy's cancel
        api.call("DELETE", f"/control/jobs?instanceId={iid}")


@pytest.mark.parametrize(("job", "react", "route"), [
    ("test.react_sync", "return", "api"),      # row 2: a plain-function step returns on ctx.cancelled
    ("test.react_sync", "return", "control"),
    ("test.react_async", "return", "api"),
    ("test.react_sync", "raise", "api"),       # row 3: the step raises on ctx.cancelled
    ("test.react_async", "raise", "api"),
    ("test.react_sync", "ignore", "api"),      # the step finishes its work anyway
])
async def test_cancel_then_restart_gives_the_result_of_an_uncancelled_run(
        dsn: str, conn: asyncpg.Connection, spawn_daemon, job: str, react: str, route: str) -> None:  # type: ignore[no-untyped-def]
    """Rows 2 and 3: cancel while steps run, then restart. A step cut short by the cancel
    is not a completed step (old code: COMPLETED with no output, skipped by the restart, a
    short report); a step that raises after the cancel is not retried (old code: ERRORED,
    claimed again as attempts 2 and 3 after the cancel, then FAILED)."""
    await conn.execute(EFFECT_TABLES)
    port = free_port()
    spawn_daemon(**postgres_env(CHUNKD_HTTP_ADDR=f"127.0.0.1:{port}", CHUNKD_PARTITIONS="2",
                                CHUNKD_PARTITION_CONCURRENCY="8"))
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    n = 400
    iid = await submit_direct(dsn, job, {"chunks": n, "work_ms": 300, "react": react})

    async def working() -> bool:
        return (await _effects(conn, iid))[0] >= 20
    await wait_for(working, 90, "work under way")
    _cancel(url, route, iid)
    assert await _status(conn, iid) == "CANCELLED"

    async def settled() -> bool:
        return await conn.fetchval(f"SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND state IN "
                                   f"({C.READY:d}, {C.IN_PROGRESS:d}, {C.ERRORED:d}, {C.POLL_WAITING:d})", iid) == 0
    await wait_for(settled, 60, "every chunk of the cancelled instance settled")
    attempts = await conn.fetchval("SELECT max(attempt) FROM chunkd_chunk WHERE instance_id = $1 AND step = 1", iid)
    await anyio.sleep(1.5)  # a retry (old code: 0.05-0.2 s backoff) would have been claimed by now
    assert await conn.fetchval("SELECT max(attempt) FROM chunkd_chunk WHERE instance_id = $1 AND step = 1",
                               iid) == attempts == 1, "a chunk of the cancelled instance was claimed again"
    states = {C(k).name for k, in await conn.fetch(
        "SELECT DISTINCT state FROM chunkd_chunk WHERE instance_id = $1 AND step = 1", iid)}
    assert states <= {"COMPLETED", "CANCELLED"}, states
    assert await _status(conn, iid) == "CANCELLED"
    ApiClient(url).call("POST", f"/api/v1/instances/{iid}/restart")
    await assert_ran_as_if_never_stopped(conn, iid, n)
