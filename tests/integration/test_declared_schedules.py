"""Schedules declared in job modules: the code owns them (issue 24 row 2)."""
from __future__ import annotations

import time

import anyio
import asyncpg
import pytest

from daemon.cli.client import ApiCallError, ApiClient
from tests.conftest import run_cli

pytestmark = pytest.mark.anyio

SID = "nu.daily-export"
WITH_MODULE = "tests.testjobs,tests.declared_schedule_jobs"


async def fires(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT count(*) FROM chunkd_schedule_fire WHERE schedule_id = $1", SID)


async def until(what: str, check, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, what
        await anyio.sleep(0.1)


async def test_declared_schedule_delete_refused_pause_kept_orphan_stops(
        conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    api = api_daemon(CHUNKD_JOBS=WITH_MODULE)
    c = ApiClient(api.url)
    row = c.call("GET", f"/api/v1/schedules/{SID}")
    assert row["source"] == "code" and row.get("orphaned_at") is None
    await until("the declared schedule never fired", lambda: _more(conn, 0))

    # deleting it would last until the next start: refused, saying what to do instead
    with pytest.raises(ApiCallError) as e:
        c.call("DELETE", f"/api/v1/schedules/{SID}")
    assert e.value.status == 409 and e.value.code == "declared_schedule"
    assert "remove its Schedule(...) from the code" in e.value.message and "pause" in e.value.message
    cli = run_cli("schedules", "delete", SID, env=api.cli_env())
    assert cli.returncode != 0 and "declared in a job module" in cli.stderr and "deleted" not in cli.stdout
    assert c.call("GET", f"/api/v1/schedules/{SID}")["id"] == SID

    # a pause survives a restart of the daemon that declares it
    assert c.call("POST", f"/api/v1/schedules/{SID}/pause")["paused"] is True
    assert api.daemon.terminate() == 0
    api = api_daemon(CHUNKD_JOBS=WITH_MODULE)
    c = ApiClient(api.url)
    assert c.call("GET", f"/api/v1/schedules/{SID}")["paused"] is True
    paused_at = await fires(conn)
    await anyio.sleep(2.5)
    assert await fires(conn) == paused_at
    assert c.call("POST", f"/api/v1/schedules/{SID}/resume")["paused"] is False
    await until("the resumed schedule never fired", lambda: _more(conn, paused_at))

    # the module is gone from every daemon: the schedule is orphaned and never fires again
    assert api.daemon.terminate() == 0
    api = api_daemon()  # tests.testjobs only
    c = ApiClient(api.url)
    await until("never marked orphaned", lambda: _orphaned(conn))
    row = c.call("GET", f"/api/v1/schedules/{SID}")
    assert row["orphaned_at"] is not None and row["paused"] is False
    before = await fires(conn)
    await anyio.sleep(3)
    assert await fires(conn) == before
    listing = run_cli("schedules", env=api.cli_env()).stdout
    line = next(ln for ln in listing.splitlines() if ln.startswith(SID))
    assert " yes " in line, listing
    # an orphan can be deleted: nothing declares it any more
    assert c.call("DELETE", f"/api/v1/schedules/{SID}") == {"deleted": SID}


async def _more(conn: asyncpg.Connection, than: int) -> bool:
    return await fires(conn) > than


async def _orphaned(conn: asyncpg.Connection) -> bool:
    return await conn.fetchval("SELECT orphaned_at IS NOT NULL FROM chunkd_schedule WHERE id = $1", SID) is True
