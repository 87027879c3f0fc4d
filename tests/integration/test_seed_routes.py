"""The seeds' routes (Smile CDR's Batch Job Endpoint, hapi-fhir-groovy's /control/jobs) against a
real daemon: field names held against the seeds' example JSON in tests/fixtures/seeds."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from daemon.cli.client import ApiCallError, ApiClient
from tests.conftest import wait_status

pytestmark = pytest.mark.anyio

SEEDS = Path(__file__).resolve().parent.parent / "fixtures" / "seeds"
VIEW, MANAGE = "view-token-1", "manage-token-2"
TOKENS = f"view:{VIEW},manage:{MANAGE}"


def seed(name: str) -> Any:
    return json.loads((SEEDS / name).read_text())


def keys(d: dict[str, Any]) -> set[str]:
    return set(d)


def err(call: Any) -> ApiCallError:
    with pytest.raises(ApiCallError) as e:
        call()
    return e.value


async def test_smile_batch_job_endpoint_speaks_smiles_fields(conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    api = api_daemon(TOKENS)
    view, manage = ApiClient(api.url, VIEW), ApiClient(api.url, MANAGE)
    done = manage.call("POST", "/api/v1/instances", body={"job": "chunkd.synthetic", "parameters": {"chunks": 4}})
    await wait_status(conn, done["id"], {"COMPLETED"}, 60)

    names = view.call("GET", "/batch-job/persistence")
    example = seed("smile_batch_job_names.json")
    assert keys(names) == keys(example) and keys(names["jobs"][0]) == keys(example["jobs"][0])
    assert {"name": "chunkd.synthetic"} in names["jobs"]

    got = view.call("GET", "/batch-job/persistence/chunkd.synthetic", query={"start": 0, "count": 20})
    ex = seed("smile_batch_job_instances.json")
    inst, ex_inst = got["jobInstances"][0], ex["jobInstances"][0]
    assert keys(got) == keys(ex) and keys(inst) == keys(ex_inst)
    execution, ex_exec = inst["jobExecutions"][0], ex_inst["jobExecutions"][0]
    assert keys(execution) == keys(ex_exec)
    assert keys(execution["stepExecutions"][0]) == keys(ex_exec["stepExecutions"][0])
    assert execution["id"] == done["id"] and execution["moduleId"] == "persistence"  # echoed
    assert execution["status"] == "COMPLETED" and execution["exitStatus"] == "COMPLETED"
    assert execution["jobParameters"]["chunks"] == "4"  # Spring Batch parameters are strings
    work = {s["stepName"]: s for s in execution["stepExecutions"]}["work"]
    assert work["recordWriteCount"] == 4 and work["status"] == "COMPLETED"

    # executionUUID selects that one execution; an unknown one selects nothing
    one = view.call("GET", "/batch-job/persistence/chunkd.synthetic", query={"executionUUID": execution["executionUUID"]})
    assert [i["jobExecutions"][0]["id"] for i in one["jobInstances"]] == [done["id"]]
    none = view.call("GET", "/batch-job/persistence/chunkd.synthetic",
                     query={"executionUUID": "7cafdc19-0eeb-48d9-a0b8-edfcc0ea2cc4"})
    assert none == {"jobInstances": []}
    e = err(lambda: view.call("GET", "/batch-job/persistence/chunkd.synthetic", query={"executionUuid": "x"}))
    assert e.status == 400 and "executionUuid" in e.message
    assert err(lambda: view.call("GET", "/batch-job/persistence/acme.nope")).status == 404

    # stop: view may not; force=false cancels gracefully, the execution reads STOPPED
    slow = manage.call("POST", "/api/v1/instances", body={"job": "chunkd.synthetic",
                                                           "parameters": {"chunks": 5000, "work_ms": 50}})
    assert err(lambda: view.call("POST", f"/batch-job/persistence/{slow['id']}/stop")).status == 403
    stopped = manage.call("POST", f"/batch-job/persistence/{slow['id']}/stop", query={"force": "false"})
    assert stopped["jobExecution"]["status"] == "STOPPED" and str(slow["id"]) in stopped["message"]
    again = err(lambda: manage.call("POST", f"/batch-job/persistence/{slow['id']}/stop", query={"force": "true"}))
    assert again.status == 409
    # restart: the same instance resumes; the message names the new execution id
    restarted = manage.call("POST", f"/batch-job/persistence/{slow['id']}/restart")
    assert f"New execution ID: {slow['id']}" in restarted["message"]
    assert restarted["jobExecution"]["status"] in ("STARTING", "STARTED")
    forced = manage.call("POST", f"/batch-job/persistence/{slow['id']}/stop", query={"force": "true"})
    assert forced["jobExecution"]["status"] == "STOPPED"
    await wait_status(conn, slow["id"], {"CANCELLED"}, 10)


async def test_hapi_control_jobs(conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    api = api_daemon(TOKENS)
    view, manage = ApiClient(api.url, VIEW), ApiClient(api.url, MANAGE)
    done = manage.call("POST", "/api/v1/instances", body={"job": "chunkd.synthetic", "parameters": {"chunks": 2}})
    await wait_status(conn, done["id"], {"COMPLETED"}, 60)
    running = manage.call("POST", "/api/v1/instances", body={"job": "test.poller", "parameters": {"wait": 600}})
    await wait_status(conn, running["id"], {"IN_PROGRESS"}, 60)

    every = view.call("GET", "/control/jobs", query={"pageStart": 0, "batchSize": 200})
    assert {j["instanceId"] for j in every} == {str(done["id"]), str(running["id"])}
    assert all(keys(j) == keys(seed("hapi_job_instance.json")) for j in every)

    for spelling in ("IN_PROGRESS", "in_progress", "In_Progress"):
        only = view.call("GET", "/control/jobs", query={"jobStatus": spelling})
        assert [j["instanceId"] for j in only] == [str(running["id"])], spelling
    e = err(lambda: view.call("GET", "/control/jobs", query={"jobStatus": "RUNNING"}))
    assert e.status == 400 and "IN_PROGRESS" in e.message
    e = err(lambda: view.call("GET", "/control/jobs", query={"status": "IN_PROGRESS"}))
    assert e.status == 400 and e.details == {"parameter": "status"}

    assert err(lambda: view.call("DELETE", "/control/jobs", query={"instanceId": running["id"]})).status == 403
    res = manage.call("DELETE", "/control/jobs", query={"instanceId": running["id"]})
    assert keys(res) == keys(seed("hapi_job_operation_result.json")) and res["success"] is True
    assert await wait_status(conn, running["id"], {"CANCELLED"}, 10) == "CANCELLED"
    twice = manage.call("DELETE", "/control/jobs", query={"instanceId": running["id"]})
    assert twice["success"] is False and "CANCELLED" in twice["message"]
    assert err(lambda: manage.call("DELETE", "/control/jobs", query={"instanceId": "999999"})).status == 404
    assert err(lambda: manage.call("DELETE", "/control/jobs")).status == 400


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
