"""kill -9 during the built-in jobs: same files, same counts, no duplicates, no half files."""
from __future__ import annotations

import json
from pathlib import Path

import anyio
import asyncpg
import pytest

from daemon.jobs import sandbox
from tests.conftest import submit_direct, wait_status
from tests.integration.test_builtin_jobs import read_export, seed

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

FAST_LEASES = {"CHUNKD_LEASE_SECONDS": "2", "CHUNKD_HEARTBEAT_SECONDS": "0.5",
               "CHUNKD_EXPORT_TABLES": "public.resources,public.by_name"}


def box(root: Path) -> dict[str, str]:
    """The export box, for this process's submit-time checks and for the daemons."""
    sandbox.configure(str(root), FAST_LEASES["CHUNKD_EXPORT_TABLES"].split(","))
    return {**FAST_LEASES, "CHUNKD_EXPORT_DIR": str(root)}


async def test_export_survives_two_sigkills(dsn: str, conn: asyncpg.Connection, spawn_daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    n = 60_000
    await seed(conn, n)
    out = tmp_path / "export"
    env = {**box(tmp_path), "CHUNKD_CLAIM_BATCH": "8"}
    iid = await submit_direct(dsn, "chunkd.bulk-export", {"table": "resources", "output": "export",
                                                          "type_column": "resource_type", "chunk_size": 250})
    # Claim batches small beside the job (as the default 100 is beside a large one), and the
    # kills far enough apart that the second does not catch the first one's orphans running
    # again: that case (suspects run one at a time) is test_poison's, not this test's.
    daemon = spawn_daemon(**env)
    for files in (24, 450):
        while len(list(out.glob("*.ndjson"))) < files:
            await anyio.sleep(0.01)
        daemon.kill()
        daemon = spawn_daemon(**env)
    assert await wait_status(conn, iid, {"COMPLETED", "FAILED"}, 180) == "COMPLETED"
    manifest = json.loads((out / "manifest.json").read_text())
    exported = read_export(out, manifest)
    ids = [row["id"] for rows in exported.values() for row in rows]
    assert len(ids) == n and len(set(ids)) == n  # every row once, no duplicate lines
    source = {r[0]: json.loads(r[1]) for r in await conn.fetch("SELECT id, to_jsonb(t)::text FROM resources t")}
    assert {row["id"]: row for rows in exported.values() for row in rows} == source  # each line equals its row
    listed = {Path(o["url"]).name for o in manifest["output"]}
    on_disk = {p.name for p in out.glob("*.ndjson")}
    assert listed == on_disk and len(listed) == 3 * (n // 250)  # 3 types in every 250-row chunk
    assert not list(out.glob(".*tmp*"))  # no half-written files anywhere
    assert await conn.fetchval("SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND attempt > 1", iid) > 0
    assert daemon.terminate() == 0


async def test_reindex_survives_sigkills_with_each_row_written_once(
        dsn: str, conn: asyncpg.Connection, spawn_daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    n = 100_000
    await seed(conn, n)
    env = box(tmp_path)
    iid = await submit_direct(dsn, "chunkd.reindex", {"table": "resources", "source_column": "resource",
                                                      "path": ["name"], "target": "by_name", "chunk_size": 100})
    daemon = spawn_daemon(**env)
    for rows in (15_000, 50_000):
        while (await conn.fetchval("SELECT count(*) FROM by_name") if await conn.fetchval(
                "SELECT to_regclass('by_name') IS NOT NULL") else 0) < rows:
            await anyio.sleep(0.01)
        daemon.kill()
        daemon = spawn_daemon(**env)
    assert await wait_status(conn, iid, {"COMPLETED", "FAILED"}, 180) == "COMPLETED"
    assert await conn.fetchval("SELECT count(*) FROM by_name") == n
    assert await conn.fetchval("SELECT max(writes) FROM by_name") == 1  # exactly once, across kills
    assert await conn.fetchval("SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND attempt > 1", iid) > 0
    assert daemon.terminate() == 0
