"""The built-in jobs against real tables."""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from daemon.cli.client import ApiCallError, ApiClient
from tests.conftest import wait_status
from tests.integration.helpers import running_node, submit_job

pytestmark = pytest.mark.anyio

SEED = """
CREATE TABLE resources (id bigserial PRIMARY KEY, resource_type text NOT NULL,
                        updated_at timestamptz NOT NULL, resource jsonb NOT NULL);
INSERT INTO resources (resource_type, updated_at, resource)
SELECT CASE WHEN g % 4 = 0 THEN 'Patient' WHEN g % 4 = 1 THEN 'Observation' ELSE 'Encounter' END,
       timestamptz '2026-01-01' + g * interval '1 minute',
       jsonb_build_object('resourceType', 'X', 'id', g::text, 'name', 'n' || g, 'score', g % 97, 'tags', jsonb_build_array(g % 3, 'x'))
FROM generate_series(1, $1::int) g;
"""


async def seed(conn: asyncpg.Connection, n: int) -> None:
    await conn.execute(SEED.replace("$1::int", str(int(n))))


def read_export(out: Path, manifest: dict) -> dict[str, list[dict]]:
    lines: dict[str, list[dict]] = {}
    for o in manifest["output"]:
        path = Path(urlsplit(o["url"]).path)
        assert path.parent == out
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(rows) == o["count"]
        lines.setdefault(o["type"], []).extend(rows)
    return lines


ALLOW = {"CHUNKD_EXPORT_TABLES": "public.resources,public.resources_by_tag"}


async def test_export_100k_rows_with_filters(dsn: str, conn: asyncpg.Connection, tmp_path: Path) -> None:
    await seed(conn, 100_000)
    out = tmp_path / "export"
    async with running_node(dsn, CHUNKD_PARTITION_CONCURRENCY="4", CHUNKD_EXPORT_DIR=str(tmp_path), **ALLOW) as node:
        res = await submit_job(node, "chunkd.bulk-export", table="resources", output="export",
                               type_column="resource_type", types=["Patient", "Observation"],
                               updated_column="updated_at", since="2026-01-10T00:00:00Z")
        assert await wait_status(conn, res.instance_id, {"COMPLETED", "FAILED"}, 120) == "COMPLETED"
    report = json.loads(await conn.fetchval("SELECT report FROM chunkd_instance WHERE id = $1", res.instance_id))
    assert json.loads((out / "manifest.json").read_text()) == report
    assert report["error"] == [] and report["transactionTime"]
    exported = read_export(out, report)
    expected = {r[0]: json.loads(r[1]) for r in await conn.fetch(
        "SELECT id, to_jsonb(t)::text FROM resources t WHERE resource_type IN ('Patient', 'Observation') "
        "AND updated_at >= '2026-01-10T00:00:00Z'")}
    got = [row for rows in exported.values() for row in rows]
    assert len(got) == len(expected) > 40_000
    assert {row["id"]: row for row in got} == expected  # each line equals its source row
    assert set(exported) == {"Patient", "Observation"}
    for rtype, rows in exported.items():
        assert all(r["resource_type"] == rtype for r in rows)
    assert not list(out.glob(".*tmp*"))


async def test_export_rejects_bad_names_at_submit(conn: asyncpg.Connection, api_daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    await seed(conn, 10)
    c = ApiClient(api_daemon(CHUNKD_EXPORT_DIR=str(tmp_path), **ALLOW).url)
    base = {"table": "resources", "output": "out"}
    cases = [
        ({"table": "nope"}, "$.table", "no table or view named 'nope'"),
        ({"table": "resources; DROP TABLE resources"}, "$.table", "no table or view"),
        ({"table": 'resources" ; --'}, "$.table", "no table or view"),
        ({"type_column": "kind"}, "$.type_column", "has no column 'kind'"),
        ({"column": "resource_type"}, "$.column", "expected one of ['json', 'jsonb']"),
        ({"id_column": "resource_type"}, "$.id_column", "expected one of"),
        ({"output": "/etc/chunkd"}, "$.output", "below the export root"),
        ({"output": "../escape"}, "$.output", "relative directory name"),
        ({"output": ".hidden"}, "$.output", "relative directory name"),
        ({"table": "pg_authid"}, "$.table", "allow-list"),
        ({"table": "pg_catalog.pg_authid", "type_column": "rolpassword"}, "$.table", "allow-list"),
        ({"table": "pg_stat_activity"}, "$.table", "allow-list"),
        ({"table": "information_schema.tables"}, "$.table", "allow-list"),
        ({"table": "chunkd_instance"}, "$.table", "allow-list"),
        ({"types": ["Patient"]}, "$.types", "types needs type_column"),
    ]
    for override, path, message in cases:
        with pytest.raises(ApiCallError) as e:
            c.call("POST", "/api/v1/instances", body={"job": "chunkd.bulk-export", "parameters": {**base, **override}})
        assert e.value.status == 422 and e.value.details == {"path": path} and message in e.value.message, override
    assert await conn.fetchval("SELECT count(*) FROM chunkd_instance") == 0
    assert await conn.fetchval("SELECT count(*) FROM resources") == 10


async def test_reindex_writes_each_row_once(dsn: str, conn: asyncpg.Connection) -> None:
    await seed(conn, 5000)
    async with running_node(dsn, **ALLOW) as node:
        res = await submit_job(node, "chunkd.reindex", table="resources", source_column="resource",
                               path=["tags", "0"], target="resources_by_tag", chunk_size=300)
        assert await wait_status(conn, res.instance_id, {"COMPLETED", "FAILED"}, 60) == "COMPLETED"
    report = json.loads(await conn.fetchval("SELECT report FROM chunkd_instance WHERE id = $1", res.instance_id))
    assert report == {"rows": 5000, "chunks": 17, "target": "resources_by_tag"}
    assert await conn.fetchval("SELECT count(*) FROM resources_by_tag WHERE writes = 1") == 5000
    wrong = await conn.fetchval("SELECT count(*) FROM resources_by_tag i JOIN resources r ON r.id = i.id "
                                "WHERE i.value IS DISTINCT FROM (r.resource #>> '{tags,0}')")
    assert wrong == 0


async def test_retention_purges_exactly_what_is_past_the_window(dsn: str, conn: asyncpg.Connection) -> None:
    async with running_node(dsn) as node:
        ids = []
        for _ in range(5):
            res = await submit_job(node, "chunkd.synthetic", chunks=50)
            ids.append(res.instance_id)
        for iid in ids:
            assert await wait_status(conn, iid, {"COMPLETED"}, 30) == "COMPLETED"
        old_done, recent_done, failed_kept, failed_old, cancelled_old = ids
        await conn.execute("UPDATE chunkd_instance SET finished_at = now() - interval '8 days' WHERE id = ANY($1)",
                           [old_done, failed_kept, cancelled_old])
        await conn.execute("UPDATE chunkd_instance SET status = 'FAILED' WHERE id = ANY($1)", [failed_kept, failed_old])
        await conn.execute("UPDATE chunkd_instance SET status = 'CANCELLED' WHERE id = $1", cancelled_old)
        await conn.execute("UPDATE chunkd_instance SET finished_at = now() - interval '31 days' WHERE id = $1",
                           failed_old)
        # a job keeps running while retention works
        busy = await submit_job(node, "chunkd.synthetic", chunks=3000, work_ms=1)
        purge = await submit_job(node, "chunkd.retention", keep_seconds=7 * 86400, keep_failed_seconds=30 * 86400)
        assert await wait_status(conn, purge.instance_id, {"COMPLETED", "FAILED"}, 60) == "COMPLETED"
        assert await wait_status(conn, busy.instance_id, {"COMPLETED", "FAILED"}, 60) == "COMPLETED"
    left = {r[0] for r in await conn.fetch("SELECT id FROM chunkd_instance")}
    assert left == {recent_done, failed_kept, busy.instance_id, purge.instance_id}
    gone = [old_done, failed_old, cancelled_old]
    assert await conn.fetchval("SELECT count(*) FROM chunkd_chunk WHERE instance_id = ANY($1)", gone) == 0
    assert await conn.fetchval("SELECT count(*) FROM chunkd_step_counter WHERE instance_id = ANY($1)", gone) == 0
    assert await conn.fetchval("SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1", recent_done) == 101  # plan + 50 work + 50 reduction input
    report = json.loads(await conn.fetchval("SELECT report FROM chunkd_instance WHERE id = $1", purge.instance_id))
    assert report == {"chunks": 3 * 101, "instances": 3}


async def test_export_stays_inside_its_box(dsn: str, conn: asyncpg.Connection, tmp_path: Path) -> None:
    """Symlinks planted under the export root are never followed; files elsewhere stay
    untouched; type values that are not names never reach file names or the report."""
    await seed(conn, 300)
    await conn.execute("UPDATE resources SET resource_type = 'SCRAM-SHA-256$4096:secret' WHERE id % 3 = 0")
    root, elsewhere = tmp_path / "exports", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    victim = elsewhere / "manifest.json"
    victim.write_text("precious")
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)  # a directory symlink
    (root / "out").mkdir()
    (root / "out" / "manifest.json").symlink_to(victim)  # a file symlink at the final name
    async with running_node(dsn, CHUNKD_EXPORT_DIR=str(root), **ALLOW) as node:
        through_link = await submit_job(node, "chunkd.bulk-export", table="resources", output="linked",
                                        type_column="resource_type", chunk_size=100)
        assert await wait_status(conn, through_link.instance_id, {"COMPLETED", "FAILED"}, 60) == "FAILED"
        ok = await submit_job(node, "chunkd.bulk-export", table="resources", output="out",
                              type_column="resource_type", chunk_size=100)
        assert await wait_status(conn, ok.instance_id, {"COMPLETED", "FAILED"}, 60) == "COMPLETED"
    error = await conn.fetchval("SELECT error_message FROM chunkd_instance WHERE id = $1", through_link.instance_id)
    assert "symlinks are never followed" in error
    assert victim.read_text() == "precious" and sorted(p.name for p in elsewhere.iterdir()) == ["manifest.json"]
    manifest = root / "out" / "manifest.json"
    assert not manifest.is_symlink() and json.loads(manifest.read_text())["output"]
    report_text = await conn.fetchval("SELECT report::text FROM chunkd_instance WHERE id = $1", ok.instance_id)
    assert "SCRAM" not in report_text and "secret" not in report_text
    assert {o["type"] for o in json.loads(report_text)["output"]} == {"Patient", "Observation", "Encounter", "other"}
    assert not any("SCRAM" in p.name for p in (root / "out").iterdir())
    # transactionTime is the database's clock (within the run), not the host's
    tt = json.loads(report_text)["transactionTime"]
    db_gap = await conn.fetchval("SELECT extract(epoch FROM now() - $1::text::timestamptz)", tt)
    assert 0 <= db_gap < 120


def _libfaketime() -> str | None:
    import glob
    import os
    found = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    if not found:
        if os.environ.get("CI"):
            raise AssertionError("libfaketime is missing: `make test` installs Debian's faketime")
        return None
    return found[0]


async def test_transaction_time_is_the_database_clock(dsn: str, conn: asyncpg.Connection, tmp_path: Path,
                                                      api_daemon) -> None:  # type: ignore[no-untyped-def]
    """A daemon whose host clock is an hour fast: the export's transactionTime still comes
    from the database, so a client's next `_since` export skips nothing."""
    lib = _libfaketime()
    if lib is None:
        pytest.skip("libfaketime not installed (apt-get install faketime)")
    await seed(conn, 500)
    api = api_daemon(CHUNKD_EXPORT_DIR=str(tmp_path), LD_PRELOAD=lib, FAKETIME="+1h", CHUNKD_LOG_LEVEL="info",
                     FAKETIME_DONT_FAKE_MONOTONIC="1", **ALLOW)
    c = ApiClient(api.url)
    inst = c.call("POST", "/api/v1/instances", body={"job": "chunkd.bulk-export",
                                                     "parameters": {"table": "resources", "output": "skewed"}})
    assert await wait_status(conn, inst["id"], {"COMPLETED", "FAILED"}, 60) == "COMPLETED"
    report = json.loads(await conn.fetchval("SELECT report FROM chunkd_instance WHERE id = $1", inst["id"]))
    gap = await conn.fetchval("SELECT extract(epoch FROM now() - $1::text::timestamptz)", report["transactionTime"])
    assert 0 <= gap < 120, f"transactionTime is {gap:.0f}s from the database's clock"
    # the daemon's clock really is skewed (the test would prove nothing otherwise): its log says so
    from datetime import datetime, timezone
    stamps = [json.loads(line).get("timestamp") for line in api.daemon.log_path.read_text().splitlines()
              if line.startswith("{")]
    assert any(stamps), api.daemon.log_path.read_text()[:1000]
    logged = datetime.fromisoformat(next(t for t in stamps if t).replace("Z", "+00:00"))
    assert (logged - datetime.now(timezone.utc)).total_seconds() > 3000
