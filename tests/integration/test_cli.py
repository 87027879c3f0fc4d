"""The command line against a real database: clear one-line errors, nothing half-written."""
from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import daemon_env, run_cli

pytestmark = pytest.mark.anyio


async def _db_state(conn: asyncpg.Connection) -> tuple[int, int]:
    return (await conn.fetchval("SELECT count(*) FROM chunkd_instance"),
            await conn.fetchval("SELECT count(*) FROM chunkd_chunk"))


@pytest.mark.parametrize("env,args,fragment", [
    ({"CHUNKD_PARTITIONS": "many"}, ["submit", "chunkd.synthetic", "--params", '{"chunks": 3}'],
     "invalid CHUNKD_PARTITIONS='many': expected an integer from 1 to 1024"),
    ({"CHUNKD_LEASE_SECONDS": "0"}, ["run"], "invalid CHUNKD_LEASE_SECONDS='0'"),
    ({"CHUNKD_JOBS": "no_such_module_xyz"}, ["run"], "cannot import job module 'no_such_module_xyz'"),
    ({}, ["submit", "chunkd.synthetic", "--params", '{"chunks": "lots"}'],
     "parameters do not match SyntheticParams: Expected `int`, got `str` - at `$.chunks`"),
    ({}, ["submit", "chunkd.synthetic", "--params", '{"chunks": 3, "bogus": 1}'], "unknown field `bogus`"),
    ({}, ["submit", "chunkd.synthetic", "--params", '{"chunks": -1}'], "chunks must be between 0 and 10000000"),
    ({}, ["submit", "chunkd.synthetic", "--params", "{not json"], "parameters do not match"),
    ({}, ["submit", "acme.nope", "--params", "{}"], "unknown job 'acme.nope'"),
    ({}, ["submit", "chunkd.synthetic", "--version", "7"], "unknown job 'chunkd.synthetic' version 7"),
])
async def test_bad_input_is_one_clear_line_and_changes_nothing(
        dsn: str, conn: asyncpg.Connection, env: dict[str, str], args: list[str], fragment: str) -> None:
    before = await _db_state(conn)
    res = run_cli(*args, env=daemon_env(dsn, **env))
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("chunkd: ") and fragment in lines[0]
    assert "Traceback" not in res.stderr
    assert await _db_state(conn) == before


async def test_submit_status_cancel(dsn: str, conn: asyncpg.Connection) -> None:
    env = daemon_env(dsn)
    res = run_cli("submit", "chunkd.synthetic", "--params", '{"chunks": 10}', "--idempotency-key", "k1", env=env)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    again = json.loads(run_cli("submit", "chunkd.synthetic", "--params", '{"chunks": 10}',
                               "--idempotency-key", "k1", env=env).stdout)
    assert again == {**out, "created": False}
    status = json.loads(run_cli("status", str(out["instance_id"]), env=env).stdout)
    assert status["status"] == "QUEUED" and status["params"]["chunks"] == 10
    assert status["chunks"] == [{"step": 0, "state": "READY", "count": 1}]
    cancelled = json.loads(run_cli("cancel", str(out["instance_id"]), env=env).stdout)
    assert cancelled["cancelled"] is True and cancelled["status"] == "CANCELLED"
    assert await conn.fetchval("SELECT state FROM chunkd_chunk") == 8


async def test_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    env = daemon_env("postgresql://postgres@127.0.0.1:1/nowhere")
    res = run_cli("submit", "chunkd.synthetic", "--params", '{"chunks": 1}', env=env)
    assert res.returncode == 1
    assert res.stderr.startswith("chunkd: cannot use the database") and "Traceback" not in res.stderr


def test_demo_runs_on_the_embedded_postgres(tmp_path: Path) -> None:
    env = daemon_env("")
    del env["CHUNKD_DATABASE_URL"]
    env["CHUNKD_HOME"] = str(tmp_path / "home")
    env["PGHOST"] = "/nonexistent"  # nothing may fall back to a local server
    res = run_cli("demo", "--chunks", "500", env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["status"] == "COMPLETED"
    assert out["report"] == {"chunks": 500, "outputs": 500, "total": 500}
    assert (tmp_path / "home" / "pgdata" / "PG_VERSION").exists()
