"""The seeds' routes (Smile CDR's Batch Job Endpoint, hapi-fhir-groovy's /control/jobs) against a
real daemon: each answer held field by field against the seeds' own example JSON in
tests/fixtures/seeds (see its README for the seed file and section of each), and the seeds' own
calls (bodyless POST/DELETE with a bearer token) made with real curl."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from daemon.cli.client import ApiCallError, ApiClient
from tests.conftest import wait_status

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
SEEDS = ROOT / "tests" / "fixtures" / "seeds"
VIEW, MANAGE = "view-token-1", "manage-token-2"
TOKENS = f"view:{VIEW},manage:{MANAGE}"
SMILE = "003_12b046a0535b4fd2.txt"  # Smile CDR v2023.05, "33.2 Batch Job Endpoint"
GROOVY = "002_59690ee69724fc40.txt"  # hapi-fhir-groovy, "Heavy Lifting: Managing Background Jobs"
ISO_WITH_OFFSET = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?[+-]\d\d:\d\d")
MAPS = (".jobParameters",)  # objects whose keys are the job's, not the seed's
UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def seed(name: str) -> Any:
    return json.loads((SEEDS / name).read_text())


def keys(d: dict[str, Any]) -> set[str]:
    return set(d)


def err(call: Any) -> ApiCallError:
    with pytest.raises(ApiCallError) as e:
        call()
    return e.value


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}[type(v)]


def same_shape(got: Any, example: Any, path: str = "$") -> None:
    """Every key of the example present in `got` with the example's JSON type and nesting; each
    item of a list held against every item of the example's; timestamps ISO 8601 with an
    offset, UUIDs as UUIDs. Extra keys in `got` are allowed."""
    assert _kind(got) == _kind(example), f"{path}: seed has {_kind(example)} {example!r}, chunkd {_kind(got)} {got!r}"
    if isinstance(example, dict) and path.endswith(MAPS):
        # a map whose keys are data (the job's parameter names): every value of the seed's type
        kinds = {_kind(v) for v in example.values()}
        assert all(_kind(v) in kinds for v in got.values()), f"{path}: values {got!r} are not all {kinds}"
    elif isinstance(example, dict):
        for k, v in example.items():
            assert k in got, f"{path}: chunkd lacks the seed's key {k!r} (has {sorted(got)})"
            same_shape(got[k], v, f"{path}.{k}")
    elif isinstance(example, list):
        assert got, f"{path}: the seed's list has items, chunkd's is empty"
        for i, item in enumerate(got):
            for ex in example:
                same_shape(item, ex, f"{path}[{i}]")
    elif isinstance(example, str):
        if ISO_WITH_OFFSET.fullmatch(example):
            assert ISO_WITH_OFFSET.fullmatch(got), f"{path}: {got!r} is not ISO 8601 with an offset"
            assert datetime.fromisoformat(got).utcoffset() is not None
        elif UUID_TEXT.fullmatch(example):
            assert str(uuid.UUID(got)) == got, f"{path}: {got!r} is not a UUID"


def test_same_shape_catches_last_rounds_differences() -> None:
    # Smile "Fetch All Instances" (seed 003, 33.2.2): a string exitStatus and steps without exitCode
    # were what chunkd served before; the checker must refuse both.
    ex = seed("smile_batch_job_instances.json")["jobInstances"][0]["jobExecutions"][0]
    with pytest.raises(AssertionError, match="exitStatus"):
        same_shape({**ex, "exitStatus": "COMPLETED"}, ex)
    with pytest.raises(AssertionError, match="exitCode"):
        same_shape({**ex, "stepExecutions": [{"stepName": "x", "status": "COMPLETED"}]}, ex)
    with pytest.raises(AssertionError, match="offset"):
        same_shape({**ex, "endTime": "2021-05-29T18:36:17.675"}, ex)
    same_shape({**ex, "extra": 1}, ex)


# the workspace's ../shared/seeds, where the issue keeps them (from the main checkout or a worktree under wt/)
SEED_DIR = next((p for p in (ROOT.parent / "shared" / "seeds", ROOT.parent.parent / "shared" / "seeds") if p.exists()),
                ROOT.parent / "shared" / "seeds")


def test_fixtures_are_the_seed_pages_own_examples() -> None:
    # seed 003, 33.2.1-33.2.4: every JSON example on the page, in order, is a fixture, unchanged
    page = SEED_DIR / SMILE
    if not page.exists():
        pytest.skip(f"the seed documents are not at {SEED_DIR}")
    examples, depth, buf = [], 0, []
    for line in page.read_text().splitlines():
        if depth or line.startswith("{"):
            buf.append(line)
            depth += line.count("{") - line.count("}")
            if not depth:
                examples.append(json.loads("\n".join(buf)))
                buf = []
    assert examples == [seed(n) for n in ("smile_batch_job_names.json", "smile_batch_job_instances.json",
                                          "smile_stop_job_execution.json", "smile_restart_job_execution.json")]


# ---------------------------------------------------------------- real curl, exactly as typed
def curl(*args: str) -> tuple[int, Any]:
    """Run curl (or, without it, urllib sending no Content-Type and no body); (status, JSON body)."""
    if shutil.which("curl"):
        out = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *args], capture_output=True, text=True,
                             timeout=60, check=True).stdout
        body, _, status = out.rpartition("\n")
        return int(status), json.loads(body) if body else None
    method, headers, url = "GET", {}, ""
    it = iter(args)
    for a in it:
        if a == "-X":
            method = next(it)
        elif a == "-H":
            k, _, v = next(it).partition(": ")
            headers[k] = v
        else:
            url = a
    req = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def bearer(token: str) -> str:
    return f"Authorization: Bearer {token}"


# ---------------------------------------------------------------- Smile CDR
async def test_smile_job_names_and_instances_have_the_seeds_fields(conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    api = api_daemon(TOKENS)
    view, manage = ApiClient(api.url, VIEW), ApiClient(api.url, MANAGE)
    ids = [manage.call("POST", "/api/v1/instances", body={"job": "chunkd.synthetic", "parameters": {"chunks": n}})["id"]
           for n in (4, 2, 3)]
    for iid in ids:
        await wait_status(conn, iid, {"COMPLETED"}, 60)

    # seed 003, 33.2.1 Fetch Batch Job Names: GET /batch-job/{module_id}
    names = view.call("GET", "/batch-job/persistence")
    same_shape(names, seed("smile_batch_job_names.json"))
    assert {"name": "chunkd.synthetic"} in names["jobs"]

    # seed 003, 33.2.2 Fetch All Instances, the page's own URL: ?count=20&start=0
    got = view.call("GET", "/batch-job/persistence/chunkd.synthetic", query={"count": 20, "start": 0})
    same_shape(got, seed("smile_batch_job_instances.json"))
    by_id = {i["jobExecutions"][0]["id"]: i for i in got["jobInstances"]}
    assert set(by_id) == set(ids)
    first = by_id[ids[0]]
    assert first["jobName"] == "chunkd.synthetic" and len(first["jobExecutions"]) == 1  # at least one execution
    execution = first["jobExecutions"][0]
    assert execution["moduleId"] == "persistence" and execution["jobName"] == "chunkd.synthetic"
    assert execution["status"] == "COMPLETED"
    assert execution["exitStatus"] == {"exitCode": "COMPLETED", "running": False}
    assert execution["running"] is False
    assert execution["jobParameters"]["chunks"] == "4"  # Spring Batch parameters are strings
    steps = {s["stepName"]: s for s in execution["stepExecutions"]}
    assert all(s["exitCode"] == "COMPLETED" for s in steps.values())
    assert steps["work"]["recordWriteCount"] == 4
    # a COMPLETED execution's recordWriteCount counts what it wrote: every completed chunk
    detail = view.call("GET", f"/api/v1/instances/{ids[0]}")
    assert execution["recordWriteCount"] == sum(s["completed"] for s in detail["steps"]) >= 4
    assert execution["endTime"] is not None and execution["endTime"] >= execution["startTime"]

    # seed 003, 33.2.2: "executionUUID=[uuid] – only the execution with this UUID will be returned"
    for iid in ids:
        uid = by_id[iid]["jobExecutions"][0]["executionUUID"]
        one = view.call("GET", "/batch-job/persistence/chunkd.synthetic", query={"executionUUID": uid})
        assert [i["jobExecutions"][0]["id"] for i in one["jobInstances"]] == [iid]
        assert [i["jobExecutions"][0]["executionUUID"] for i in one["jobInstances"]] == [uid]
    # the seed's own example UUID names no execution here
    none = view.call("GET", "/batch-job/persistence/chunkd.synthetic",
                     query={"executionUUID": "7cafdc19-0eeb-48d9-a0b8-edfcc0ea2cc4"})
    assert none == {"jobInstances": []}

    # seed 003, 33.2.2: "start=[int] – The index of the first result", "count=[int] – The number of results"
    pages = [view.call("GET", "/batch-job/persistence/chunkd.synthetic", query={"start": s, "count": 2})
             for s in (0, 2, 4)]
    paged = [[i["jobExecutions"][0]["id"] for i in p["jobInstances"]] for p in pages]
    assert [len(p) for p in paged] == [2, 1, 0]
    assert paged[0] + paged[1] == sorted(ids, reverse=True)  # newest first, no overlap, nothing lost

    e = err(lambda: view.call("GET", "/batch-job/persistence/chunkd.synthetic", query={"executionUuid": "x"}))
    assert e.status == 400 and "executionUuid" in e.message
    assert err(lambda: view.call("GET", "/batch-job/persistence/acme.nope")).status == 404


async def test_smile_stop_and_restart_called_as_the_seed_calls_them(conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    api = api_daemon(TOKENS)
    manage = ApiClient(api.url, MANAGE)
    slow = manage.call("POST", "/api/v1/instances", body={"job": "chunkd.synthetic",
                                                           "parameters": {"chunks": 5000, "work_ms": 5000}})["id"]
    await wait_status(conn, slow, {"IN_PROGRESS"}, 60)
    stop = f"{api.url}/batch-job/persistence/{slow}/stop?force=true"
    restart = f"{api.url}/batch-job/persistence/{slow}/restart"

    # credentials before anything: no token 401, a view token 403 (MANAGE_BATCH_JOBS), never 415
    for url in (stop, restart):
        assert curl("-X", "POST", url)[0] == 401
        assert curl("-X", "POST", "-H", bearer(VIEW), url)[0] == 403
    assert await conn.fetchval("SELECT status FROM chunkd_instance WHERE id = $1", slow) == "IN_PROGRESS"

    # seed 003, 33.2.3 Stop Job Execution: POST …/{job_execution_id}/stop?force=true, no body
    status, body = curl("-X", "POST", "-H", bearer(MANAGE), stop)
    assert status == 200, body
    same_shape(body, seed("smile_stop_job_execution.json"))
    assert {k: body[k] for k in ("operation", "success", "message")} == {
        "operation": "stop", "success": True, "message": f"Batch Job {slow} force-stopped."}
    assert body["jobExecution"]["status"] == "STOPPED"
    assert body["jobExecution"]["exitStatus"] == {"exitCode": "STOPPED", "running": False}
    await wait_status(conn, slow, {"CANCELLED"}, 10)
    again = curl("-X", "POST", "-H", bearer(MANAGE), stop)
    assert again[0] == 409, again

    # seed 003, 33.2.4 Restart Job Execution: POST …/{job_execution_id}/restart, no body
    status, body = curl("-X", "POST", "-H", bearer(MANAGE), restart)
    assert status == 200, body
    same_shape(body, seed("smile_restart_job_execution.json"))
    assert body["operation"] == "restart" and body["success"] is True
    assert body["message"] == f"Restarted job execution with ID {slow} - New execution ID is: {slow}"
    # a script that parses the seed's sentence gets an id that names the restarted run
    new_id = int(re.search(r"New execution ID is: (\d+)", body["message"]).group(1))  # type: ignore[union-attr]
    assert body["jobExecution"]["id"] == new_id and body["jobExecution"]["status"] in ("STARTING", "STARTED")
    assert body["jobExecution"]["running"] is True

    # seeds silent on the unforced stop: Spring Batch's graceful stop, Smile's sentence without "force-"
    status, body = curl("-X", "POST", "-H", bearer(MANAGE), f"{api.url}/batch-job/persistence/{new_id}/stop")
    assert status == 200, body
    same_shape(body, seed("smile_stop_job_execution.json"))
    assert body["message"] == f"Batch Job {new_id} stopped." and body["jobExecution"]["status"] == "STOPPED"
    await wait_status(conn, slow, {"CANCELLED"}, 10)


# ---------------------------------------------------------------- hapi-fhir-groovy
async def test_hapi_control_jobs(conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    api = api_daemon(TOKENS)
    view, manage = ApiClient(api.url, VIEW), ApiClient(api.url, MANAGE)
    done = manage.call("POST", "/api/v1/instances", body={"job": "chunkd.synthetic", "parameters": {"chunks": 2}})
    await wait_status(conn, done["id"], {"COMPLETED"}, 60)
    running = manage.call("POST", "/api/v1/instances", body={"job": "test.poller", "parameters": {"wait": 600}})
    await wait_status(conn, running["id"], {"IN_PROGRESS"}, 60)

    every = view.call("GET", "/control/jobs", query={"pageStart": 0, "batchSize": 200})
    assert {j["instanceId"] for j in every} == {str(done["id"]), str(running["id"])}
    for j in every:  # HAPI's JobInstance (not a seed file: see tests/fixtures/seeds/README.md)
        same_shape(j, {k: v for k, v in seed("hapi_job_instance.json").items()
                       if v is not None and j[k] is not None and k != "instanceId"})
        assert keys(j) == keys(seed("hapi_job_instance.json"))

    # seed 002, "Step 1: Monitor Running Jobs": GET /control/jobs?jobStatus=IN_PROGRESS
    for spelling in ("IN_PROGRESS", "in_progress", "In_Progress"):
        only = view.call("GET", "/control/jobs", query={"jobStatus": spelling})
        assert [j["instanceId"] for j in only] == [str(running["id"])], spelling
        assert only[0]["startTime"] and ISO_WITH_OFFSET.fullmatch(only[0]["startTime"])
    e = err(lambda: view.call("GET", "/control/jobs", query={"jobStatus": "RUNNING"}))
    assert e.status == 400 and "IN_PROGRESS" in e.message
    e = err(lambda: view.call("GET", "/control/jobs", query={"status": "IN_PROGRESS"}))
    assert e.status == 400 and e.details == {"parameter": "status"}

    # seed 002, "Step 2: Canceling a 'Runaway' Job": DELETE /control/jobs?instanceId=…, as curl sends it
    url = f"{api.url}/control/jobs?instanceId={running['id']}"
    assert curl("-X", "DELETE", url)[0] == 401
    assert curl("-X", "DELETE", "-H", bearer(VIEW), url)[0] == 403
    status, res = curl("-X", "DELETE", "-H", bearer(MANAGE), url)
    assert status == 200, res
    same_shape(res, seed("hapi_job_operation_result.json"))
    assert res["success"] is True
    assert await wait_status(conn, running["id"], {"CANCELLED"}, 10) == "CANCELLED"
    status, twice = curl("-X", "DELETE", "-H", bearer(MANAGE), url)
    assert status == 200 and twice["success"] is False and "CANCELLED" in twice["message"]
    # HAPI instance ids are UUIDs: the instance's executionUUID names it too
    as_uuid = str(uuid.UUID(int=done["id"]))
    status, res = curl("-X", "DELETE", "-H", bearer(MANAGE), f"{api.url}/control/jobs?instanceId={as_uuid}")
    assert status == 200 and res["success"] is False and "COMPLETED" in res["message"]
    assert err(lambda: manage.call("DELETE", "/control/jobs", query={"instanceId": "999999"})).status == 404
    assert err(lambda: manage.call("DELETE", "/control/jobs", query={"instanceId": "7c74a5c8..."})).status == 404
    assert err(lambda: manage.call("DELETE", "/control/jobs")).status == 400


async def test_credentials_come_before_content_type(conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    # Before: a request with no token, or a valid token and no Content-Type, got 415 first.
    # Seed 003, 33.2.3/33.2.4 ("This method requires the MANAGE_BATCH_JOBS permission"): the
    # permission is what decides, whatever the request's body or Content-Type.
    api = api_daemon(TOKENS)
    url = f"{api.url}/api/v1/instances"
    body = json.dumps({"job": "chunkd.synthetic", "parameters": {"chunks": 1}})
    assert curl("-X", "POST", url)[0] == 401
    assert curl("-X", "POST", "-H", "Content-Type: text/plain", "-d", body, url)[0] == 401
    assert curl("-X", "POST", "-H", "Authorization: Bearer wrong", url)[0] == 401
    assert curl("-X", "POST", "-H", bearer(VIEW), "-d", body, url)[0] == 403
    assert await conn.fetchval("SELECT count(*) FROM chunkd_instance") == 0
    # curl -d sends application/x-www-form-urlencoded: with a bearer token that is no forgery
    status, made = curl("-X", "POST", "-H", bearer(MANAGE), "-d", body, url)
    assert status == 201, made


async def test_without_tokens_a_bearer_header_is_what_lifts_the_content_type_rule(conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    # Seed 003, 33.2.3 Stop Job Execution (POST …/stop?force=true, no body), sent without tokens configured.
    # No-token mode (loopback): a page can send a bodyless or form POST but not an Authorization
    # header (that needs a CORS preflight, never granted), so only the header lifts the rule.
    # (tests/integration/test_trust.py::test_browser_pages_cannot_drive_the_api keeps the rest.)
    api = api_daemon()
    slow = ApiClient(api.url).call("POST", "/api/v1/instances", body={
        "job": "chunkd.synthetic", "parameters": {"chunks": 5000, "work_ms": 5000}})["id"]
    stop = f"{api.url}/batch-job/persistence/{slow}/stop?force=true"
    assert curl("-X", "POST", stop)[0] == 415
    assert curl("-X", "POST", "-H", "Origin: http://evil.example", stop)[0] == 415
    assert curl("-X", "POST", "-H", "Content-Type: application/json", "-H", "Sec-Fetch-Site: cross-site",
                stop)[0] == 403
    assert await conn.fetchval("SELECT status FROM chunkd_instance WHERE id = $1", slow) != "CANCELLED"
    status, body = curl("-X", "POST", "-H", "Authorization: Bearer anything", stop)
    assert status == 200 and body["message"] == f"Batch Job {slow} force-stopped."


async def test_unknown_query_parameters_are_400_on_chunkds_own_routes(api_daemon) -> None:  # type: ignore[no-untyped-def]
    # before: ?jobStatus=IN_PROGRESS on /api/v1/instances was ignored and listed everything
    api = api_daemon()
    c = ApiClient(api.url)
    e = err(lambda: c.call("GET", "/api/v1/instances", query={"jobStatus": "IN_PROGRESS"}))
    assert e.status == 400 and e.code == "unknown_parameter" and "'jobStatus'" in e.message
    assert e.details == {"parameter": "jobStatus"}
    assert err(lambda: c.call("GET", "/api/v1/jobs", query={"x": "1"})).status == 400
    # statuses are case-insensitive
    assert c.call("GET", "/api/v1/instances", query={"status": "in_progress"})["total"] == 0


# ---------------------------------------------------------------- the README's curl lines, run as written
def readme_curl_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Seed-compatible routes", 1)[1].split("\n### ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [ln for ln in block.splitlines() if ln.startswith("curl ")]


async def test_readme_curl_lines_work_as_written(conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    # The README's block: seed 003 33.2.1-33.2.4 (names, instances with ?count=20&start=0, stop
    # force=true, restart) and seed 002 "Tutorial: Controlling Native Jobs" (list, DELETE cancel).
    if not shutil.which("curl"):
        pytest.skip("no curl on this machine")
    lines = readme_curl_lines()
    assert len(lines) >= 6
    api = api_daemon(TOKENS)
    manage = ApiClient(api.url, MANAGE)
    # the README's lines name instance 1 (a fresh database's first) and chunkd.synthetic
    first = manage.call("POST", "/api/v1/instances", body={"job": "chunkd.synthetic",
                                                            "parameters": {"chunks": 5000, "work_ms": 5000}})["id"]
    assert first == 1
    await wait_status(conn, first, {"IN_PROGRESS"}, 60)
    env = {**os.environ, "CHUNKD_API_URL": api.url, "TOKEN": MANAGE}
    answers: dict[str, Any] = {}
    for line in lines:
        out = subprocess.run(["bash", "-c", line], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, (line, out.stderr)
        body = json.loads(out.stdout)
        assert not (isinstance(body, dict) and "error" in body), (line, body)
        answers[line] = body
    by_path = {re.search(r'\$CHUNKD_API_URL(/[^"?]*)', ln).group(1) + (" DELETE" if "DELETE" in ln else ""): b  # type: ignore[union-attr]
               for ln, b in answers.items()}
    same_shape(by_path["/batch-job/persistence"], seed("smile_batch_job_names.json"))
    same_shape(by_path["/batch-job/persistence/1/stop"], seed("smile_stop_job_execution.json"))
    assert by_path["/batch-job/persistence/1/stop"]["message"] == "Batch Job 1 force-stopped."
    assert by_path["/batch-job/persistence/1/restart"]["message"] == \
        "Restarted job execution with ID 1 - New execution ID is: 1"
    assert by_path["/control/jobs DELETE"]["success"] is True
    assert await wait_status(conn, first, {"CANCELLED"}, 10) == "CANCELLED"


# ---------------------------------------------------------------- cron dialects through the API and the CLI
async def test_schedules_say_their_dialect_and_next_fire_times(conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import run_cli
    api = api_daemon()
    env = api.cli_env()
    add = ("schedules", "add", "mondays", "chunkd.synthetic", "--params", '{"chunks": 1}', "--cron", "0 0 1 * * 1")
    # seed 002 is Spring's @Scheduled, seed 004 Smile's Quartz: "1" is Monday to one, Sunday to the other
    refused = run_cli(*add, env=env)
    assert refused.returncode != 0
    assert "quartz reads SUN" in refused.stderr and "spring reads MON" in refused.stderr, refused.stderr
    assert "--dialect" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert await conn.fetchval("SELECT count(*) FROM chunkd_schedule") == 0

    made = run_cli(*add, "--dialect", "spring", "--json", env=env)
    assert made.returncode == 0, made.stderr
    row = json.loads(made.stdout)
    assert row["dialect"] == "spring" and len(row["next_fire_times"]) == 3
    assert [datetime.fromisoformat(t.replace("Z", "+00:00")).strftime("%a %H:%M:%S") for t in row["next_fire_times"]] \
        == ["Mon 01:00:00"] * 3
    # seed 002's nightly, no dialect: the same in both, stored as Quartz
    nightly = ApiClient(api.url).call("POST", "/api/v1/schedules", body={
        "id": "nightly", "job": "chunkd.synthetic", "parameters": {"chunks": 1}, "cron": "0 0 1 * * ?"})
    assert nightly["dialect"] == "quartz"
    times = [datetime.fromisoformat(t.replace("Z", "+00:00")) for t in nightly["next_fire_times"]]
    assert [t.strftime("%H:%M:%S") for t in times] == ["01:00:00"] * 3
    assert [(b - a).days for a, b in zip(times, times[1:])] == [1, 1]
    sundays = ApiClient(api.url).call("POST", "/api/v1/schedules", body={
        "id": "sundays", "job": "chunkd.synthetic", "cron": "0 0 1 * * 1", "dialect": "quartz"})
    assert {datetime.fromisoformat(t.replace("Z", "+00:00")).strftime("%a") for t in sundays["next_fire_times"]} \
        == {"Sun"}
    e = err(lambda: ApiClient(api.url).call("POST", "/api/v1/schedules", body={
        "id": "x", "job": "chunkd.synthetic", "cron": "0 0 1 * * 1"}))
    assert e.status == 422 and e.details == {"path": "$.cron"} and "spring reads MON" in e.message
    assert await conn.fetchval("SELECT dialect FROM chunkd_schedule WHERE id = 'mondays'") == "spring"

    listed = run_cli("schedules", env=env)
    assert listed.returncode == 0, listed.stderr
    lines = {ln.split()[0]: ln for ln in listed.stdout.splitlines() if ln.split()}
    assert "DIALECT" in lines["ID"] and "NEXT_FIRE_TIMES" in lines["ID"]
    assert " spring " in lines["mondays"] and " quartz " in lines["nightly"] and " quartz " in lines["sundays"]
    assert lines["mondays"].count("T01:00:00") == 3


async def test_migration_0015_says_the_dialect_old_rows_were_read_in(conn: asyncpg.Connection) -> None:
    # Seed 004 (Smile, "6.25.5 Clustered Scheduled Jobs": Quartz) is what 6-7 field rows meant before.
    # Rows from before 0015 were read by field count (5 unix, else quartz): they keep that meaning.
    from storage.migrate import migrate
    await conn.execute("ALTER TABLE chunkd_schedule DROP CONSTRAINT chunkd_schedule_dialect_with_cron")
    await conn.execute("ALTER TABLE chunkd_schedule DROP COLUMN dialect")
    await conn.execute("DELETE FROM chunkd_migration WHERE version = 15")
    for sid, cron, every in (("u", " 0 1 * *  1", None), ("q", "0 0 1 * * 1", None), ("y", "0 0 1 ? * 2 2030", None),
                             ("e", None, 60.0)):
        await conn.execute("INSERT INTO chunkd_schedule (id, job_name, params, cron, interval_seconds, next_fire_at) "
                           "VALUES ($1, 'chunkd.synthetic', '{}', $2, $3, now())", sid, cron, every)
    assert await migrate(conn) == ["0015_schedule_dialect.sql"]
    got = dict(await conn.fetch("SELECT id, dialect FROM chunkd_schedule"))  # type: ignore[arg-type]
    assert got == {"u": "unix", "q": "quartz", "y": "quartz", "e": None}
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute("UPDATE chunkd_schedule SET dialect = 'cronos' WHERE id = 'q'")
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute("UPDATE chunkd_schedule SET dialect = NULL WHERE id = 'q'")
