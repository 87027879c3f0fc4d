"""Built-in jobs declare their own schedules (issue 25 row 4): chunkd.retention's row is
written from its module's Schedule, shaped by the daemon's settings, and goes when
CHUNKD_RETENTION_EVERY=0; the scheduler names no built-in job."""
from __future__ import annotations

import json

import asyncpg
import pytest

from actors.scheduler import Scheduler
from actors.settings import SchedulerSettings
from daemon.jobs import configure_builtins, load_registry
from storage.reader import Reader
from storage.store import Store

pytestmark = pytest.mark.anyio


async def test_retention_schedule_comes_from_its_module(dsn: str, conn: asyncpg.Connection) -> None:
    store = await Store.open(dsn, partitions=2)
    reader = Reader(dsn, max_size=1)
    settings = SchedulerSettings(node_name="n", partitions=2, enabled=True, concurrency=1)
    try:
        reg = load_registry(["tests.testjobs"])
        configure_builtins(reg, 3600, 7200, 42)
        await Scheduler(settings, store, None, reg, reader).register()  # type: ignore[arg-type]
        row = await conn.fetchrow("SELECT * FROM chunkd_schedule WHERE id = 'chunkd.retention'")
        assert row["source"] == "builtin" and row["interval_seconds"] == 42 and row["job_name"] == "chunkd.retention"
        assert json.loads(row["params"]) == {"keep_seconds": 3600, "keep_failed_seconds": 7200}
        configure_builtins(reg, 3600, 7200, 0)
        await Scheduler(settings, store, None, reg, reader).register()  # type: ignore[arg-type]
        assert await conn.fetchval("SELECT count(*) FROM chunkd_schedule WHERE id = 'chunkd.retention'") == 0
    finally:
        await reader.close()
        await store.close()
