"""The command line against a real daemon and database: clear one-line errors, nothing half-written."""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import daemon_env, run_cli, wait_status

pytestmark = pytest.mark.anyio


async def _db_state(conn: asyncpg.Connection) -> tuple[int, int]:
    return (await conn.fetchval("SELECT count(*) FROM chunkd_instance"),
            await conn.fetchval("SELECT count(*) FROM chunkd_chunk"))


@pytest.mark.parametrize("env,args,fragment", [
    ({"CHUNKD_PARTITIONS": "many"}, ["submit", "chunkd.synthetic", "--params", '{"chunks": 3}'],
     "invalid CHUNKD_PARTITIONS='many': expected an integer from 1 to 1024"),
    ({}, ["submit", "chunkd.synthetic", "--params", '{"chunks": "lots"}'],
     "parameters do not match SyntheticParams: Expected `int`, got `str` - at `$.chunks`"),
    ({}, ["submit", "chunkd.synthetic", "--params", '{"chunks": 3, "bogus": 1}'], "unknown field `bogus`"),
    ({}, ["submit", "chunkd.synthetic", "--params", '{"chunks": -1}'], "chunks must be between 0 and 10000000"),
    ({}, ["submit", "chunkd.synthetic", "--params", "{not json"], "--params is not valid JSON"),
    ({}, ["submit", "acme.nope", "--params", "{}"], "unknown job 'acme.nope'"),
    ({}, ["submit", "chunkd.synthetic", "--version", "7"], "unknown job 'chunkd.synthetic' version 7"),
    ({}, ["show", "999999"], "no instance 999999 (HTTP 404 not_found)"),
])
async def test_bad_input_is_one_clear_line_and_changes_nothing(
        conn: asyncpg.Connection, api_daemon, env: dict[str, str], args: list[str], fragment: str) -> None:  # type: ignore[no-untyped-def]
    api = api_daemon()
    before = await _db_state(conn)
    res = run_cli(*args, env=api.cli_env(**env))
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("chunkd: ") and fragment in lines[0]
    assert "Traceback" not in res.stderr
    assert await _db_state(conn) == before


@pytest.mark.parametrize("env,fragment", [
    ({"CHUNKD_LEASE_SECONDS": "0"}, "invalid CHUNKD_LEASE_SECONDS='0'"),
    ({"CHUNKD_JOBS": "no_such_module_xyz"}, "cannot import job module 'no_such_module_xyz'"),
    ({"CHUNKD_HTTP_ADDR": "0.0.0.0:0"}, "refusing to serve the API on a non-loopback address without tokens"),
    ({"CHUNKD_API_TOKENS": "admin:s3cr3t-token"}, "invalid CHUNKD_API_TOKENS"),
    ({"CHUNKD_API_TOKENS_FILE": "/nonexistent/tokens"}, "invalid CHUNKD_API_TOKENS_FILE='/nonexistent/tokens': cannot read it"),
    # each inside its own range, together over what one daemon may hold (issue 14, row 7)
    ({"CHUNKD_PARTITIONS": "1024", "CHUNKD_PARTITION_CONCURRENCY": "10000"},
     "CHUNKD_PARTITIONS x CHUNKD_PARTITION_CONCURRENCY = 10,240,000 step workers; at most 10,000"),
    ({"CHUNKD_PARTITIONS": "1024", "CHUNKD_CLAIM_BATCH": "10000"}, "chunks held in memory; at most 200,000"),
    ({"CHUNKD_POOL_SIZE": "1"}, "invalid CHUNKD_POOL_SIZE='1': at least 2 connections"),
    ({"CHUNKD_MAX_CHUNK_BYTES": "2GiB"}, "invalid CHUNKD_MAX_CHUNK_BYTES='2GiB'"),
    ({"CHUNKD_EXPORT_TABLES": "resources"}, "expected schema.table or schema.*"),
])
async def test_bad_daemon_configuration_exits_2_before_touching_the_database(
        dsn: str, conn: asyncpg.Connection, env: dict[str, str], fragment: str) -> None:
    before = await _db_state(conn)
    res = run_cli("run", env=daemon_env(dsn, **env), timeout=30)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], res.stderr
    assert "s3cr3t" not in res.stderr  # a token never appears in output
    assert await _db_state(conn) == before


async def test_submit_wait_show_instances_chunks_cancel(conn: asyncpg.Connection, api_daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    api = api_daemon()
    env = api.cli_env()
    params = tmp_path / "p.json"
    params.write_text('{"chunks": 25}')
    res = run_cli("submit", "chunkd.synthetic", "--params", f"@{params}", "--wait", "--json", env=env)
    assert res.returncode == 0, res.stderr
    inst = json.loads(res.stdout)
    assert inst["status"] == "COMPLETED" and inst["report"] == {"chunks": 25, "outputs": 25, "total": 25}
    shown = run_cli("show", str(inst["id"]), env=env)
    assert shown.returncode == 0 and "COMPLETED" in shown.stdout and "summarize" in shown.stdout
    listed = json.loads(run_cli("instances", "--status", "COMPLETED", "--json", env=env).stdout)
    assert listed["total"] == 1 and listed["instances"][0]["id"] == inst["id"]
    chunks = json.loads(run_cli("chunks", str(inst["id"]), "--step", "1", "--data", "--json", env=env).stdout)
    assert chunks["total"] == 25 and all(c["status"] == "COMPLETED" for c in chunks["chunks"])
    table = run_cli("jobs", env=env).stdout
    assert "chunkd.synthetic" in table and "plan -> work -> summarize" in table

    slow = json.loads(run_cli("submit", "chunkd.synthetic", "--params", '{"chunks": 5000, "work_ms": 5000}',
                              "--json", env=env).stdout)
    cancelled = run_cli("cancel", str(slow["instance_id"]), "--json", env=env)
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["status"] == "CANCELLED"
    again = run_cli("cancel", str(slow["instance_id"]), env=env)
    assert again.returncode == 1 and "it is CANCELLED (HTTP 409 illegal_state)" in again.stderr
    restarted = run_cli("restart", str(slow["instance_id"]), "--json", env=env)
    assert restarted.returncode == 0 and json.loads(restarted.stdout)["status"] == "IN_PROGRESS"
    stopped = run_cli("stop", str(slow["instance_id"]), "--force", "--json", env=env)
    assert stopped.returncode == 0 and json.loads(stopped.stdout)["status"] == "CANCELLED"
    await wait_status(conn, slow["instance_id"], {"CANCELLED"}, 5)


async def test_unreachable_api_is_a_clear_error() -> None:
    env = daemon_env("postgresql://postgres@127.0.0.1:1/nowhere", CHUNKD_API_URL="http://127.0.0.1:1")
    res = run_cli("submit", "chunkd.synthetic", "--params", '{"chunks": 1}', env=env)
    assert res.returncode == 1
    assert res.stderr.startswith("chunkd: cannot reach the chunkd API at http://127.0.0.1:1")
    assert "Traceback" not in res.stderr


async def test_unreachable_database_is_a_clear_error() -> None:
    res = run_cli("migrate", env=daemon_env("postgresql://postgres@127.0.0.1:1/nowhere"))
    assert res.returncode == 1
    assert res.stderr.startswith("chunkd: cannot use the database") and "Traceback" not in res.stderr


def test_demo_runs_on_the_embedded_postgres(tmp_path: Path) -> None:
    env = daemon_env("")
    del env["CHUNKD_DATABASE_URL"]
    env["CHUNKD_HOME"] = str(tmp_path / "home")
    env["PGHOST"] = "/nonexistent"  # nothing may fall back to a local server
    res = run_cli("demo", "--rows", "3000", env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    manifest = json.loads(res.stdout)  # stdout is the manifest
    assert sum(o["count"] for o in manifest["output"]) == 3000
    assert {o["type"] for o in manifest["output"]} == {"Patient", "Observation"}
    export = tmp_path / "home" / "exports" / "demo"
    lines = [json.loads(line) for f in export.glob("*.ndjson") for line in f.read_text().splitlines()]
    assert len(lines) == 3000 and {r["resourceType"] for r in lines} == {"Patient", "Observation"}
    assert (tmp_path / "home" / "pgdata" / "PG_VERSION").exists()
    assert "exported 3,000 resources" in res.stderr


def test_piped_demo_writes_only_log_shaped_lines(dsn: str, tmp_path: Path) -> None:
    """Piped, stderr is one format (issue 24 row 8): progress and summary are JSON records
    like the log lines around them, never a terminal bar between them."""
    env = daemon_env(dsn, CHUNKD_HOME=str(tmp_path / "home"))
    env.pop("CHUNKD_LOG_LEVEL", None)  # as a user pipes it: info logs and the demo's lines interleave
    res = run_cli("demo", "--rows", "2000", env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert sum(o["count"] for o in json.loads(res.stdout)["output"]) == 2000
    assert "\r" not in res.stderr and "[#" not in res.stderr and "%]" not in res.stderr
    records = [json.loads(line) for line in res.stderr.splitlines() if line.strip()]  # each line one JSON object
    progress = [r for r in records if r.get("event") == "progress" and r.get("command") == "demo"]
    assert progress and progress[-1]["status"] == "COMPLETED" and progress[-1]["progress_percent"] == 100.0
    assert any(r["event"].startswith("exported 2,000 resources") for r in records), records
    files = next(r for r in records if r.get("event") == "files written")
    assert sum(files["resources_per_type"].values()) == 2000


async def test_invalid_declared_schedule_stops_the_daemon_with_one_line(dsn: str, conn: asyncpg.Connection) -> None:
    # before: logged and dropped while the daemon started, so the nightly job never ran
    res = run_cli("run", env=daemon_env(dsn, CHUNKD_JOBS="tests.bad_schedule_jobs"), timeout=60)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "schedule 'nightly-bad'" in lines[0] and "hour 25 is outside 0-23" in lines[0]
    assert await conn.fetchval("SELECT count(*) FROM chunkd_schedule") == 0


async def test_quartz_schedule_via_cli(api_daemon) -> None:  # type: ignore[no-untyped-def]
    api = api_daemon()
    env = api.cli_env()
    res = run_cli("schedules", "add", "nightly", "chunkd.synthetic", "--params", '{"chunks": 1}',
                  "--cron", "0 0 1 * * ?", "--json", env=env)
    assert res.returncode == 0, res.stderr
    row = json.loads(res.stdout)
    assert row["cron"] == "0 0 1 * * ?" and row["next_fire_at"].endswith(("T01:00:00Z", "T01:00:00+00:00"))


async def test_jobs_job_shows_the_contract(api_daemon) -> None:  # type: ignore[no-untyped-def]
    api = api_daemon()
    env = api.cli_env()
    res = run_cli("jobs", "chunkd.synthetic", env=env)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "parameters (SyntheticParams; unknown fields refused)" in out
    assert [ln.split()[:3] for ln in out.splitlines() if ln.startswith("chunks ")] == [["chunks", "integer", "1000"]]
    assert "work_ms" in out and "fail_rate" in out
    work = [ln.split() for ln in out.splitlines() if ln.startswith("1 ")][0]
    assert work[:6] == ["1", "work", "middle", "Work", "Tally", "5"]
    as_json = json.loads(run_cli("jobs", "chunkd.synthetic", "--json", env=env).stdout)
    assert as_json["parameters_schema"]["properties"]["chunks"] == {"type": "integer", "default": 1000}
    bad = run_cli("jobs", "acme.nope", env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("chunkd: unknown job 'acme.nope'")


def test_version_and_app_dir(dsn: str, tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import CHUNKD
    res = run_cli("--version", env=daemon_env(dsn))
    assert res.returncode == 0 and res.stdout.strip().startswith("chunkd 0.")
    # a job module in the working directory loads without PYTHONPATH, as with uvicorn/celery
    (tmp_path / "nujobs.py").write_text(
        "from chunkd import Schedule\n"
        "tick = Schedule(name='nu.tick', job='chunkd.synthetic', params={'chunks': 1}, every=3600)\n")
    env = daemon_env(dsn, CHUNKD_JOBS="nujobs")
    ok = subprocess.run([CHUNKD, "migrate"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    bad = subprocess.run([CHUNKD, "migrate"], env=env, cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "No module named 'nujobs'" in bad.stderr and "--app-dir" in bad.stderr
    by_flag = subprocess.run([CHUNKD, "migrate", "--app-dir", str(tmp_path)], env=env, cwd=elsewhere,
                             capture_output=True, text=True, timeout=120)
    assert by_flag.returncode == 0, by_flag.stderr
    # the folder is right, the package is there, its submodule is not: say that (issue 24 row 8)
    (tmp_path / "nu_acme").mkdir()
    (tmp_path / "nu_acme" / "__init__.py").write_text("")
    sub = subprocess.run([CHUNKD, "migrate"], env={**env, "CHUNKD_JOBS": "nu_acme.jobs"}, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert sub.returncode == 2 and len(sub.stderr.strip().splitlines()) == 1, sub.stderr
    assert (f"the package 'nu_acme' was found at {tmp_path / 'nu_acme'}, but it has no submodule 'jobs': no jobs.py "
            "or jobs/ in it") in sub.stderr, sub.stderr
    assert "run chunkd from the folder" not in sub.stderr


async def test_cli_reads_well(conn: asyncpg.Connection, api_daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    from tests.conftest import CHUNKD
    api = api_daemon()
    env = api.cli_env()
    done = json.loads(run_cli("submit", "chunkd.synthetic", "--params", '{"chunks": 3}', "--wait", "--json",
                              env=env).stdout)
    shown = run_cli("show", str(done["id"]), env=env).stdout
    assert "started " in shown and "ended " in shown and "duration " in shown
    assert "fired by" not in shown
    listed = run_cli("instances", env=env).stdout
    assert "100.0%" in listed and "1.0 " not in listed  # a percentage, not a fraction

    # --watch redraws until the end (here not a TTY: one frame after another)
    slow = json.loads(run_cli("submit", "chunkd.synthetic", "--params", '{"chunks": 3, "work_ms": 1500}',
                              "--json", env=env).stdout)["instance_id"]
    watched = run_cli("show", str(slow), "--watch", "--interval", "0.2", env=env)
    assert watched.returncode == 0, watched.stderr
    frames = watched.stdout.count(f"instance {slow} ")
    assert frames >= 2 and watched.stdout.split(f"instance {slow} ")[-1].split("\n")[0].split()[2] == "COMPLETED"

    # a reader that leaves early: quiet, no traceback
    long = json.loads(run_cli("submit", "chunkd.synthetic", "--params", '{"chunks": 2000, "work_ms": 60000}',
                              "--json", env=env).stdout)["instance_id"]
    piped = subprocess.run(f"{CHUNKD} show {long} --watch --interval 0.1 2>err.txt | head -2; cat err.txt",
                           shell=True, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert len(piped.stdout.strip().splitlines()) == 2, piped.stdout
    assert "Traceback" not in piped.stdout and "BrokenPipe" not in piped.stdout + piped.stderr

    # stop without --force: a graceful stop, said so
    stopped = run_cli("stop", str(long), "--json", env=env)
    assert stopped.returncode == 0 and json.loads(stopped.stdout)["status"] == "CANCELLED"
    assert "without --force cancels" in stopped.stderr

    # schedules show: a table, values as JSON; an instance says which schedule fired it
    run_cli("schedules", "add", "tick", "chunkd.synthetic", "--params", '{"chunks": 1}', "--every", "1", env=env)
    table_out = run_cli("schedules", "show", "tick", env=env).stdout
    assert table_out.splitlines()[0].split() == ["FIELD", "VALUE"] and '"chunks": 1' in table_out and "{'" not in table_out
    deadline = time.monotonic() + 60
    while (iid := await conn.fetchval("SELECT id FROM chunkd_instance WHERE schedule_id = 'tick' LIMIT 1")) is None:
        assert time.monotonic() < deadline, "the schedule never fired"
        await asyncio.sleep(0.2)
    assert "fired by schedule tick" in run_cli("show", str(iid), env=env).stdout
    assert json.loads(run_cli("show", str(iid), "--json", env=env).stdout)["schedule_id"] == "tick"


async def test_401_names_the_variable(api_daemon) -> None:  # type: ignore[no-untyped-def]
    api = api_daemon("view:v-token-1,manage:m-token-2")
    res = run_cli("jobs", env=api.cli_env())
    assert res.returncode == 1 and "set CHUNKD_API_TOKEN" in res.stderr
    res = run_cli("jobs", env=api.cli_env("wrong"))
    assert res.returncode == 1 and "the token in CHUNKD_API_TOKEN is not one of the daemon's" in res.stderr
    res = run_cli("cancel", "1", env=api.cli_env("v-token-1"))
    assert res.returncode == 1 and "use a manage token" in res.stderr


def _demo_on_a_tty(env: dict[str, str], rows: int) -> str:
    import shlex
    import subprocess

    from tests.conftest import CHUNKD
    # `script` gives the demo a real terminal (a pty) and copies what it shows to stdout
    res = subprocess.run(["script", "-qfec", f"{shlex.quote(CHUNKD)} demo --rows {rows}", "/dev/null"],
                         env=env, capture_output=True, timeout=300)  # bytes: keep the \r redraws
    out = res.stdout.decode(errors="replace")
    assert res.returncode == 0, out[-3000:] + res.stderr.decode(errors="replace")[-3000:]
    return out


def test_demo_first_screen_on_a_tty(dsn: str, tmp_path: Path) -> None:
    if not Path("/usr/bin/script").exists():
        pytest.skip("util-linux script is not installed")
    env = daemon_env(dsn, CHUNKD_HOME=str(tmp_path / "home"))
    env.pop("CHUNKD_LOG_LEVEL", None)  # as a user runs it: no log settings
    first = _demo_on_a_tty(env, 3000)
    manifest_line = next(ln for ln in first.replace("\r\n", "\n").split("\n") if ln.startswith("manifest: "))
    export = Path(manifest_line.removeprefix("manifest: ").strip()).parent
    (export / "Patient-stale-from-last-run.ndjson").write_text("{}\n")  # what a previous run left

    shown = _demo_on_a_tty(env, 2000)
    lines = shown.replace("\r\n", "\n").split("\n")
    bars = [ln for ln in lines if "%" in ln and "[" in ln]
    assert len(bars) == 1 and bars[0].count("\r[") >= 2, bars  # one line, redrawn in place
    assert "COMPLETED" in bars[0].rsplit("\r", 1)[-1]
    after = [ln for ln in lines[lines.index(bars[0]) + 1:] if ln.strip()]
    assert len(after) <= 12, after  # the rest fits on one screen
    assert not [ln for ln in lines if ln.lstrip().startswith("{")], "JSON (logs or the manifest) on the terminal"
    assert after[0].split() == ["TYPE", "FILES", "RESOURCES"]
    assert any(ln.startswith("manifest: ") and ln.endswith("manifest.json") for ln in after)
    assert any(ln.startswith("exported 2,000 resources") for ln in after)
    # the export folder holds this run's files only
    manifest = json.loads((export / "manifest.json").read_text())
    assert sorted(p.name for p in export.glob("*.ndjson")) == sorted(
        Path(o["url"].removeprefix("file://")).name for o in manifest["output"])
    assert sum(len(p.read_text().splitlines()) for p in export.glob("*.ndjson")) == 2000


async def test_resubmit_says_already_submitted_and_cluster_names_the_leader(api_daemon) -> None:  # type: ignore[no-untyped-def]
    """The CLI's words match the API's 201/200 (issue 24 row 8), and `chunkd cluster` shows
    the daemons and the maintenance leader from GET /api/v1/cluster."""
    api = api_daemon(CHUNKD_NODE_ID="alpha")
    env = api.cli_env()
    submit = ["submit", "chunkd.synthetic", "--params", '{"chunks": 1}', "--idempotency-key", "once"]
    first = run_cli(*submit, env=env)
    assert first.returncode == 0 and first.stdout.startswith("submitted instance "), first.stdout + first.stderr
    iid = int(first.stdout.split()[-1])
    again = run_cli(*submit, env=env)
    assert again.returncode == 0 and again.stdout.strip() == f"already submitted: instance {iid}", again.stdout
    as_json = json.loads(run_cli(*submit, "--json", env=env).stdout)
    assert as_json["instance_id"] == iid and as_json["created"] is False
    fresh = json.loads(run_cli("submit", "chunkd.synthetic", "--params", '{"chunks": 1}', "--json", env=env).stdout)
    assert fresh["created"] is True

    deadline = time.monotonic() + 30
    while "leader: alpha" not in (shown := run_cli("cluster", env=env)).stdout:
        assert time.monotonic() < deadline, shown.stdout + shown.stderr
        await asyncio.sleep(0.2)
    assert shown.returncode == 0
    header, row = shown.stdout.splitlines()[:2]
    assert header.split() == ["ID", "NAME", "PID", "PARTITIONS", "IN_FLIGHT", "LEADER", "STARTED_AT", "SEEN"]
    assert row.split()[1:3] == ["alpha", str(api.daemon.proc.pid)] and "yes" in row.split()
    nodes = json.loads(run_cli("cluster", "--json", env=env).stdout)
    assert [(n["name"], n["leader"]) for n in nodes] == [("alpha", True)]
