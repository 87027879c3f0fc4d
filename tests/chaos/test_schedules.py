"""Clustered schedules across daemons: one instance per occurrence, none lost to a kill."""
from __future__ import annotations

import time
from datetime import timedelta

import anyio
import asyncpg
import pytest

from actors.scheduler import row_for
from actors.scheduling import validate
from storage.schedules import Schedules

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]


async def create_schedule(dsn: str, sid: str, every: float) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        s = Schedules(pool)
        await s.create(row_for(sid, "chunkd.synthetic", None, '{"chunks": 1, "fanout": 0}',
                               validate(None, every, "UTC", "skip"), "api", await s.now()))
    finally:
        await pool.close()


async def test_three_daemons_fire_each_occurrence_exactly_once(
        dsn: str, conn: asyncpg.Connection, spawn_daemon) -> None:  # type: ignore[no-untyped-def]
    daemons = {f"n{i}": spawn_daemon(CHUNKD_NODE_ID=f"n{i}", CHUNKD_LOG_LEVEL="info") for i in range(3)}
    await anyio.sleep(1.5)  # all up and polling
    await create_schedule(dsn, "every-second", 1)
    started = time.monotonic()
    killed = None
    while time.monotonic() - started < 12:
        await anyio.sleep(0.25)
        if killed is None and time.monotonic() - started > 5:
            last = await conn.fetchval("SELECT fired_by FROM chunkd_schedule_fire WHERE schedule_id = 'every-second' "
                                       "ORDER BY fire_at DESC LIMIT 1")
            daemons[last].kill()  # the daemon that fired last
            killed = (last, await conn.fetchval("SELECT now()"))
    await conn.execute("UPDATE chunkd_schedule SET paused = true")
    await anyio.sleep(1.5)  # in-flight firings finish
    # only this schedule's occurrences: the built-in retention schedule fires on 5-minute marks
    fires = await conn.fetch("SELECT fire_at, instance_id, fired_by FROM chunkd_schedule_fire "
                             "WHERE schedule_id = 'every-second' ORDER BY fire_at")
    times = [f["fire_at"] for f in fires]
    assert len(fires) >= 10
    gaps = [(str(a), str(b), f["fired_by"]) for (a, b), f in zip(zip(times, times[1:]), fires[1:])
            if b - a != timedelta(seconds=1)]
    assert not gaps, (gaps, killed)  # no occurrence missed
    assert all(f["instance_id"] is not None for f in fires)
    assert len({f["instance_id"] for f in fires}) == len(fires)  # one instance each
    assert await conn.fetchval("SELECT count(*) FROM chunkd_instance WHERE job_name = 'chunkd.synthetic'") == len(fires)
    assert {f["instance_id"] for f in fires} == {r[0] for r in await conn.fetch(
        "SELECT id FROM chunkd_instance WHERE job_name = 'chunkd.synthetic'")}
    assert killed is not None
    after = [f for f in fires if f["fire_at"] > killed[1]]
    assert after and after[0]["fire_at"] - killed[1] <= timedelta(seconds=1.5)  # the next one was not lost
    assert {f["fired_by"] for f in after} <= set(daemons) - {killed[0]}
    assert len({f["fired_by"] for f in fires}) >= 2


async def test_scheduling_off_fires_nothing_and_never_leads(
        dsn: str, conn: asyncpg.Connection, spawn_daemon) -> None:  # type: ignore[no-untyped-def]
    for i in range(2):
        spawn_daemon(CHUNKD_NODE_ID=f"secondary{i}", CHUNKD_SCHEDULING="false")
    await create_schedule(dsn, "every-second", 1)
    await anyio.sleep(3)
    assert await conn.fetchval("SELECT count(*) FROM chunkd_schedule_fire") == 0
    assert await conn.fetchval("SELECT count(*) FROM chunkd_leader") == 0
    spawn_daemon(CHUNKD_NODE_ID="primary")
    deadline = time.monotonic() + 15
    while await conn.fetchval("SELECT count(*) FROM chunkd_schedule_fire WHERE schedule_id = 'every-second'") < 2:
        assert time.monotonic() < deadline
        await anyio.sleep(0.1)
    leader = await conn.fetchval("SELECT n.name FROM chunkd_leader l JOIN chunkd_node n ON n.id = l.node_id")
    assert leader == "primary"
    assert {r[0] for r in await conn.fetch("SELECT DISTINCT fired_by FROM chunkd_schedule_fire")} == {"primary"}
    assert await conn.fetchval("SELECT count(*) FROM chunkd_schedule_fire WHERE fired_by LIKE 'secondary%'") == 0
