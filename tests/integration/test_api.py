"""Every endpoint of the control API over real sockets, against a real daemon and Postgres."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from daemon.cli.client import ApiCallError, ApiClient
from storage.states import C
from tests.conftest import wait_status

pytestmark = pytest.mark.anyio

VIEW, MANAGE = "view-token-1", "manage-token-2"
TOKENS = f"view:{VIEW},manage:{MANAGE}"


def status_of(call: Any) -> int:
    try:
        call()
    except ApiCallError as e:
        return e.status
    return 200


async def test_auth_scopes(api_daemon) -> None:  # type: ignore[no-untyped-def]
    api = api_daemon(TOKENS)
    anon, wrong = ApiClient(api.url), ApiClient(api.url, "nope")
    view, manage = ApiClient(api.url, VIEW), ApiClient(api.url, MANAGE)
    body = {"job": "chunkd.synthetic", "parameters": {"chunks": 1}}
    with pytest.raises(ApiCallError) as e:
        anon.call("GET", "/api/v1/jobs")
    assert e.value.status == 401 and e.value.code == "unauthorized"
    assert status_of(lambda: wrong.call("GET", "/api/v1/jobs")) == 401
    assert status_of(lambda: view.call("POST", "/api/v1/instances", body=body)) == 403
    assert status_of(lambda: view.call("GET", "/api/v1/jobs")) == 200
    inst = manage.call("POST", "/api/v1/instances", body=body)  # manage implies view
    assert manage.call("GET", f"/api/v1/instances/{inst['id']}")["id"] == inst["id"]
    assert status_of(lambda: view.call("POST", f"/api/v1/instances/{inst['id']}/cancel")) == 403
    # health and metrics need no token; the document says which routes do
    assert anon.call("GET", "/healthz")["status"] == "ok"
    doc = anon.call("GET", "/api/v1/openapi.json")
    assert doc["paths"]["/api/v1/jobs"]["get"]["security"] == [{"bearer": []}]


async def test_endpoints_and_error_statuses(conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    api = api_daemon()
    c = ApiClient(api.url)
    jobs = {(j["name"], j["version"]): j for j in c.call("GET", "/api/v1/jobs")["jobs"]}
    syn = jobs[("chunkd.synthetic", 1)]
    assert syn["latest"] and [s["name"] for s in syn["steps"]] == ["plan", "work", "summarize"]
    assert syn["steps"][1]["consumes"] == "Work" and syn["steps"][2]["kind"] == "reduce"
    assert jobs[("test.versioned", 1)]["latest"] is False and jobs[("test.versioned", 2)]["latest"] is True

    # submit: 201, then the same idempotency key gives the existing instance (200)
    body = {"job": "chunkd.synthetic", "parameters": {"chunks": 30}, "idempotency_key": "k-1"}
    created = c.call("POST", "/api/v1/instances", body=body)
    assert created["status"] in ("QUEUED", "IN_PROGRESS") and created["parameters"]["chunks"] == 30
    again = c.call("POST", "/api/v1/instances", body=body)
    assert again["id"] == created["id"]
    assert await wait_status(conn, created["id"], {"COMPLETED"}, 30) == "COMPLETED"
    got = c.call("GET", f"/api/v1/instances/{created['id']}")
    assert got["progress"] == 1.0 and got["report"] == {"chunks": 30, "outputs": 30, "total": 30}
    steps = {s["name"]: s for s in got["steps"]}
    assert steps["work"]["completed"] == 30 and steps["work"]["states"] == {"COMPLETED": 30}

    # list: filters, paging, newest first, total
    second = c.call("POST", "/api/v1/instances", body={"job": "test.poller", "parameters": {"wait": 60}})
    page = c.call("GET", "/api/v1/instances", query={"count": 1})
    assert page["total"] == 2 and page["count"] == 1 and page["instances"][0]["id"] == second["id"]
    page = c.call("GET", "/api/v1/instances", query={"job": "chunkd.synthetic", "status": ["COMPLETED", "FAILED"]})
    assert [i["id"] for i in page["instances"]] == [created["id"]]
    future = c.call("GET", "/api/v1/instances", query={"created_after": "2999-01-01T00:00:00Z"})
    assert future["total"] == 0 and future["instances"] == []

    # chunks: filters, no data unless asked
    ch = c.call("GET", f"/api/v1/instances/{created['id']}/chunks", query={"step": 1, "count": 5})
    assert ch["total"] == 30 and len(ch["chunks"]) == 5 and all(x["data"] is None for x in ch["chunks"])
    assert all(x["claimed_at"] and x["attempt"] == 1 for x in ch["chunks"])
    ch = c.call("GET", f"/api/v1/instances/{created['id']}/chunks", query={"step": 2, "data": "true", "count": 2})
    assert ch["chunks"][0]["data"] is None  # reduction input is cleared once consumed
    await anyio.sleep(0.5)
    waiting = c.call("GET", f"/api/v1/instances/{second['id']}/chunks", query={"status": "POLL_WAITING", "data": "true"})
    assert waiting["total"] == 1 and waiting["chunks"][0]["data"] == [0]  # Item(0), array_like

    # cancel, 409 on a second cancel, stop needs force, restart, force-stop
    iid = second["id"]
    assert c.call("POST", f"/api/v1/instances/{iid}/cancel")["status"] == "CANCELLED"
    with pytest.raises(ApiCallError) as e:
        c.call("POST", f"/api/v1/instances/{iid}/cancel")
    assert e.value.status == 409 and e.value.details == {"status": "CANCELLED"}
    with pytest.raises(ApiCallError) as e:
        c.call("POST", f"/api/v1/instances/{created['id']}/restart")
    assert e.value.status == 409  # COMPLETED work is never redone
    assert c.call("POST", f"/api/v1/instances/{iid}/restart")["status"] == "IN_PROGRESS"
    with pytest.raises(ApiCallError) as e:
        c.call("POST", f"/api/v1/instances/{iid}/stop")
    assert e.value.status == 400
    assert c.call("POST", f"/api/v1/instances/{iid}/stop", query={"force": "true"})["status"] == "CANCELLED"

    # errors: JSON bodies with the right status
    def err(method: str, path: str, **kw: Any) -> ApiCallError:
        with pytest.raises(ApiCallError) as e:
            c.call(method, path, **kw)
        return e.value
    assert err("POST", "/api/v1/instances", body=b"{nope").code == "malformed_json"
    assert err("POST", "/api/v1/instances", body=b"{nope").status == 400
    assert err("POST", "/api/v1/instances", body={"job": 5}).status == 400
    bad = err("POST", "/api/v1/instances", body={"job": "chunkd.synthetic", "parameters": {"chunks": "x"}})
    assert bad.status == 422 and bad.details == {"path": "$.chunks"}
    assert err("POST", "/api/v1/instances", body={"job": "nope.job"}).status == 404
    assert err("POST", "/api/v1/instances", body={"job": "chunkd.synthetic", "idempotency_key": "a\x00b"}).status == 400
    assert err("GET", "/api/v1/instances", query={"job": "a\x00"}).status == 400
    # 413: the server answers from the declared length, before reading (or waiting for) the body
    import http.client
    h = http.client.HTTPConnection("127.0.0.1", int(api.url.rsplit(":", 1)[1]), timeout=10)
    h.putrequest("POST", "/api/v1/instances")
    h.putheader("Content-Type", "application/json")
    h.putheader("Content-Length", str(2 << 20))
    h.endheaders()
    r = h.getresponse()
    assert r.status == 413 and json.loads(r.read())["error"]["code"] == "too_large"
    h.close()
    assert err("GET", "/api/v1/instances/123456789").status == 404
    assert err("GET", "/api/v1/instances/99999999999999999999999").status == 404
    assert err("GET", "/api/v1/instances", query={"count": 501}).status == 400
    assert err("GET", "/api/v1/instances", query={"status": "SLEEPING"}).status == 400
    assert err("GET", "/api/v1/instances", query={"created_after": "yesterday"}).status == 400
    assert err("GET", "/api/v1/nothing-here").code == "not_found"
    assert err("DELETE", "/api/v1/jobs").status == 405
    assert await conn.fetchval("SELECT count(*) FROM chunkd_instance") == 2  # errors wrote nothing


async def test_restart_reruns_only_what_did_not_complete(conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    await conn.execute("CREATE TABLE test_fix (fixed boolean NOT NULL); INSERT INTO test_fix VALUES (false)")
    await conn.execute("CREATE TABLE test_runs (n int NOT NULL, ok boolean NOT NULL)")
    await conn.execute("CREATE TABLE test_ledger (chunk_id bigint, attempt int, n int, pid int)")
    api = api_daemon()
    c = ApiClient(api.url)
    n = 60
    inst = c.call("POST", "/api/v1/instances", body={"job": "test.fixable", "parameters": {"chunks": n}})
    assert await wait_status(conn, inst["id"], {"FAILED", "COMPLETED"}, 30) == "FAILED"
    failed = c.call("GET", f"/api/v1/instances/{inst['id']}")
    assert "is broken until test_fix.fixed" in failed["error_message"]
    await anyio.sleep(0.5)  # chunks already running when it failed finish
    done_before = {r[0] for r in await conn.fetch("SELECT n FROM test_ledger")}
    await conn.execute("UPDATE test_fix SET fixed = true")
    assert c.call("POST", f"/api/v1/instances/{inst['id']}/restart")["status"] == "IN_PROGRESS"
    assert await wait_status(conn, inst["id"], {"FAILED", "COMPLETED"}, 30) == "COMPLETED"
    final = c.call("GET", f"/api/v1/instances/{inst['id']}")
    assert final["report"] == {"count": n, "total": n * (n - 1) // 2}
    runs = await conn.fetch("SELECT n, count(*) FILTER (WHERE ok) AS good, count(*) AS runs FROM test_runs GROUP BY n")
    assert len(runs) == n and all(r["good"] == 1 for r in runs)  # each item succeeded exactly once
    rerun = {r["n"] for r in runs if r["runs"] > 1}
    assert rerun and rerun.isdisjoint(done_before)  # only what had not completed ran again
    assert await conn.fetchval("SELECT count(*) FROM test_ledger") == n


async def test_no_claims_after_cancel_returns(conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    api = api_daemon()
    c = ApiClient(api.url)
    inst = c.call("POST", "/api/v1/instances", body={"job": "chunkd.synthetic",
                                                      "parameters": {"chunks": 20_000, "work_ms": 2}})
    while await conn.fetchval(f"SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND step = 1 AND state = {C.COMPLETED:d}",
                              inst["id"]) < 1000:
        await anyio.sleep(0.02)
    assert c.call("POST", f"/api/v1/instances/{inst['id']}/cancel")["status"] == "CANCELLED"
    returned = await conn.fetchval("SELECT clock_timestamp()")
    await anyio.sleep(1.5)
    late = await conn.fetchval("SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND claimed_at > $2",
                               inst["id"], returned)
    assert late == 0
    assert await conn.fetchval("SELECT status FROM chunkd_instance WHERE id = $1", inst["id"]) == "CANCELLED"
    assert await conn.fetchval(f"SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND state IN ({C.GATE_WAITING:d}, {C.READY:d})",
                               inst["id"]) == 0


def test_schemathesis_finds_no_server_errors_or_schema_violations(api_daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    st = Path(sys.executable).with_name("st")
    if not st.exists():
        pytest.skip("schemathesis is not installed (it is in requirements-dev.lock)")
    api = api_daemon(TOKENS)
    started = time.monotonic()
    res = subprocess.run(
        [str(st), "run", f"{api.url}/api/v1/openapi.json", "--max-examples", "25", "--workers", "2",
         "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance,"
                     "content_type_conformance,response_headers_conformance",
         "-H", f"Authorization: Bearer {MANAGE}", "--generation-deterministic", "--no-color"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
    assert time.monotonic() - started < 600


async def test_schedules_api_and_cli(conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import run_cli
    api = api_daemon(CHUNKD_RETENTION_EVERY="300")
    c = ApiClient(api.url)
    ids = {s["id"] for s in c.call("GET", "/api/v1/schedules")["schedules"]}
    assert "chunkd.retention" in ids  # the built-in retention schedule
    body = {"id": "nightly", "job": "chunkd.synthetic", "parameters": {"chunks": 2},
            "cron": "30 2 * * *", "timezone": "Europe/Berlin"}
    made = c.call("POST", "/api/v1/schedules", body=body)
    assert made["next_fire_at"] and made["paused"] is False and made["parameters"]["chunks"] == 2
    with pytest.raises(ApiCallError) as e:
        c.call("POST", "/api/v1/schedules", body=body)
    assert e.value.status == 409
    for bad, path in (({"cron": "61 * * * *"}, "$.cron"), ({"timezone": "Mars/Olympus"}, "$.timezone"),
                      ({"parameters": {"chunks": "x"}}, "$.chunks"),
                      # the job's params_check runs too (the same path as a submit): refused now, not at 2:30
                      ({"job": "chunkd.bulk-export", "parameters": {"table": "no_such_table", "output": "n"}},
                       "$.table")):
        with pytest.raises(ApiCallError) as e:
            c.call("POST", "/api/v1/schedules", body={**body, "id": "x", **bad})
        assert e.value.status == 422 and e.value.details == {"path": path}, (bad, e.value.details, e.value.message)
    assert c.call("POST", "/api/v1/schedules/nightly/pause")["paused"] is True
    assert c.call("POST", "/api/v1/schedules/nightly/resume")["paused"] is False
    assert c.call("DELETE", "/api/v1/schedules/nightly") == {"deleted": "nightly"}
    with pytest.raises(ApiCallError) as e:
        c.call("GET", "/api/v1/schedules/nightly")
    assert e.value.status == 404

    env = api.cli_env()
    res = run_cli("schedules", "add", "tick", "chunkd.synthetic", "--every", "1", "--params", '{"chunks": 1}', env=env)
    assert res.returncode == 0, res.stderr
    bad = run_cli("schedules", "add", "t2", "chunkd.synthetic", "--cron", "* * * * 9", env=env)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "bad cron expression" in bad.stderr
    tz = run_cli("schedules", "add", "t3", "chunkd.synthetic", "--every", "5", "--timezone", "Nowhere/Land", env=env)
    assert tz.returncode == 2 and "unknown timezone 'Nowhere/Land'" in tz.stderr
    deadline = time.monotonic() + 10
    while True:
        shown = json.loads(run_cli("schedules", "show", "tick", "--json", env=env).stdout)
        if shown["last_instance_id"]:
            break
        assert time.monotonic() < deadline
        await anyio.sleep(0.3)
    assert shown["last_fire_at"] and shown["next_fire_at"] > shown["last_fire_at"]
    listing = run_cli("schedules", env=env).stdout
    assert "tick" in listing and "every 1s" in listing


async def test_dashboard_endpoints(conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    api = api_daemon(TOKENS)
    view, manage = ApiClient(api.url, VIEW), ApiClient(api.url, MANAGE)
    assert view.call("GET", "/api/v1/whoami") == {"scope": "view", "auth_required": True}
    assert manage.call("GET", "/api/v1/whoami")["scope"] == "manage"
    assert status_of(lambda: ApiClient(api.url).call("GET", "/api/v1/whoami")) == 401

    iid = manage.call("POST", "/api/v1/instances",
                      body={"job": "test.flaky", "parameters": {"chunks": 5, "bad": 2, "permanent": True}})["id"]
    await wait_status(conn, iid, {"FAILED"}, 30)
    errs = view.call("GET", f"/api/v1/instances/{iid}/chunks?errors=true")
    assert errs["total"] == 1 and "item 2 can never work" in errs["chunks"][0]["error_message"]
    assert view.call("GET", f"/api/v1/instances/{iid}/chunks")["total"] == 6  # plan + 5 items

    series = view.call("GET", f"/api/v1/instances/{iid}/throughput")
    completed = await conn.fetchval(f"SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND state = {C.COMPLETED:d}", iid)
    assert series["bucket_seconds"] >= 1 and sum(p["completed"] for p in series["points"]) == completed == 5
    assert status_of(lambda: view.call("GET", "/api/v1/instances/999999/throughput")) == 404

    deadline = time.monotonic() + 10
    while not (nodes := view.call("GET", "/api/v1/cluster")["nodes"]) or not nodes[0]["partitions"]:
        assert time.monotonic() < deadline, nodes  # the first heartbeat records the partitions
        await anyio.sleep(0.2)
    me = await conn.fetchrow("SELECT id, pid FROM chunkd_node")
    assert [(n["id"], n["pid"]) for n in nodes] == [(me["id"], me["pid"])]
    assert nodes[0]["partitions"] == [0, 1, 2, 3] and nodes[0]["in_flight"] == 0
    assert nodes[0]["leader"] is True and nodes[0]["seen_seconds_ago"] < 10


async def test_dashboard_is_served_with_a_strict_policy(api_daemon) -> None:  # type: ignore[no-untyped-def]
    import urllib.request
    api = api_daemon(TOKENS)
    with urllib.request.urlopen(api.url + "/ui") as r:  # no token needed for the page itself
        html = r.read().decode()
        csp = r.headers["Content-Security-Policy"]
    assert r.url.endswith("/ui/") and '<script type="module" src="/ui/app.js">' in html
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp
    for asset, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        with urllib.request.urlopen(f"{api.url}/ui/{asset}") as r:
            assert r.headers["Content-Type"].startswith(kind) and r.read()
    assert "http" not in html.replace("http-equiv", "")  # nothing fetched from elsewhere
