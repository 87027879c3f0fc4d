"""The seeds' routes, beside chunkd's own API, for scripts written against Smile CDR's
Batch Job Endpoint and hapi-fhir-groovy's `/control/jobs` (HAPI FHIR batch2 `JobInstance`).

Shapes are the seeds' example JSON field by field (tests/fixtures/seeds/, held by
tests/integration/test_seed_routes.py). Same tokens as /api/v1 (VIEW_BATCH_JOBS -> view,
MANAGE_BATCH_JOBS -> manage), same error bodies. How chunkd's model maps onto theirs (README
"Seed-compatible routes"):

- chunkd has one module: `module_id` is accepted, echoed as `moduleId`, and selects nothing.
- A chunkd instance is a Smile job instance with exactly one job execution whose `id` is the
  instance id, and whose `executionUUID` is the instance id as a UUID (`UUID(int=id)`), so a
  script can go from one to the other. A step is a step execution. `recordWriteCount` counts
  completed chunks (of the step, or of the whole execution).
- Statuses and exit codes are Spring Batch's (Smile's job executions are Spring Batch ones):
  `exitStatus` is Spring's ExitStatus object (`exitCode`, `running` = EXECUTING or UNKNOWN),
  the execution's `running` is BatchStatus.isRunning().
- Restart resumes the same instance in place (completed chunks are kept, as Spring Batch does
  for a restarted job instance), so "the new execution" is the same instance: the message
  names its id as the new execution ID, in the words Smile's response uses.
- For HAPI's `JobInstance`, `instanceId` is the chunkd instance id as a string and
  `combinedRecordsProcessed` counts completed chunks.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from actors.registry import UnknownJobError
from daemon.http.auth import Scope
from daemon.http.common import _MAX_ID, Api, ApiError, Handler, _int, check_query, ok
from storage.states import RESTARTABLE, I
from storage.types import StepCounts

# Spring Batch words for chunkd's instance states (Smile's job executions are Spring Batch ones)
_BATCH_STATUS = {"QUEUED": "STARTING", "IN_PROGRESS": "STARTED", "FINALIZE": "STARTED", "ERRORED": "STARTED",
                 "COMPLETED": "COMPLETED", "FAILED": "FAILED", "CANCELLED": "STOPPED"}
# Spring Batch ExitStatus codes: UNKNOWN until the execution starts, EXECUTING while it runs
_EXIT_CODE = {"QUEUED": "UNKNOWN", "COMPLETED": "COMPLETED", "FAILED": "FAILED", "CANCELLED": "STOPPED"}
_RUNNING_EXIT = frozenset({"EXECUTING", "UNKNOWN"})  # Spring's ExitStatus.isRunning()
_RUNNING_BATCH = frozenset({"STARTING", "STARTED", "STOPPING"})  # Spring's BatchStatus.isRunning()


# ---------------------------------------------------------------- Smile CDR shapes
class SmileJobName(msgspec.Struct):
    name: str


class SmileJobNames(msgspec.Struct):
    jobs: list[SmileJobName]


class SmileExitStatus(msgspec.Struct, rename="camel"):
    exit_code: str
    running: bool


class SmileStepExecution(msgspec.Struct, rename="camel"):
    step_name: str
    exit_code: str
    # chunkd's extras beside the seed's two fields
    status: str
    record_write_count: int


class SmileJobExecution(msgspec.Struct, rename="camel"):
    id: int
    module_id: str
    job_name: str
    execution_uuid: str = msgspec.field(name="executionUUID")
    job_parameters: dict[str, str]
    create_time: str | None
    start_time: str | None
    last_updated_time: str | None
    end_time: str | None
    status: str
    exit_status: SmileExitStatus
    running: bool
    record_write_count: int
    step_executions: list[SmileStepExecution]


class SmileJobInstance(msgspec.Struct, rename="camel"):
    job_name: str
    job_executions: list[SmileJobExecution]


class SmileJobInstances(msgspec.Struct, rename="camel"):
    job_instances: list[SmileJobInstance]


class SmileOperation(msgspec.Struct, rename="camel"):
    """Smile's stop/restart answer `{"operation", "success", "message"}`, with the execution as
    it now reads beside it (chunkd's extra)."""
    operation: str
    success: bool
    message: str
    job_execution: SmileJobExecution


# ---------------------------------------------------------------- HAPI FHIR batch2 shapes
class HapiJobInstance(msgspec.Struct, rename="camel", omit_defaults=False):
    job_definition_id: str
    parameters: str
    job_definition_version: int
    instance_id: str
    status: str
    cancelled: bool
    fast_tracking: bool
    create_time: str | None
    start_time: str | None
    end_time: str | None
    update_time: str | None
    combined_records_processed: int
    combined_records_processed_per_second: float | None
    total_elapsed_millis: int | None
    work_chunks_purged: bool
    progress: float
    current_gated_step_id: str | None
    error_message: str | None
    error_count: int
    estimated_completion: str | None
    report: str | None
    warning_messages: str | None
    triggering_username: str | None
    triggering_client_id: str | None


class HapiOperationResult(msgspec.Struct):
    operation: str
    success: bool
    message: str


# ---------------------------------------------------------------- mapping
def _iso(t: datetime | None) -> str | None:
    return t.isoformat(timespec="milliseconds") if t is not None else None


def execution_uuid(iid: int) -> str:
    return str(uuid.UUID(int=iid))


def _param_strings(params_json: str) -> dict[str, str]:
    """Spring Batch job parameters are strings: strings as they are, anything else as JSON."""
    params = json.loads(params_json)
    if not isinstance(params, dict):
        return {"parameters": params_json}
    return {k: v if isinstance(v, str) else json.dumps(v, separators=(",", ":")) for k, v in params.items()}


def _step_status(c: StepCounts, instance_status: str) -> tuple[str, str]:
    """(BatchStatus, ExitStatus code) of one step."""
    if c.failed:
        return "FAILED", "FAILED"
    if c.pending and instance_status == "CANCELLED" or c.cancelled:
        return "STOPPED", "STOPPED"
    if c.pending:
        return "STARTED", "EXECUTING"
    return "COMPLETED", "COMPLETED"


def smile_execution(row: dict[str, Any], module_id: str, names: list[str], counts: list[StepCounts]) -> SmileJobExecution:
    status = row["status"]
    steps = []
    for c in sorted(counts, key=lambda c: c.step):
        batch, exit_code = _step_status(c, status)
        steps.append(SmileStepExecution(step_name=names[c.step] if c.step < len(names) else str(c.step),
                                         exit_code=exit_code, status=batch, record_write_count=c.completed))
    batch_status = _BATCH_STATUS.get(status, "UNKNOWN")
    exit_code = _EXIT_CODE.get(status, "EXECUTING")
    return SmileJobExecution(
        id=row["id"], module_id=module_id, job_name=row["job_name"], execution_uuid=execution_uuid(row["id"]),
        job_parameters=_param_strings(row["params"]), create_time=_iso(row["created_at"]),
        start_time=_iso(row["started_at"]), last_updated_time=_iso(row["updated_at"]),
        end_time=_iso(row["finished_at"]), status=batch_status,
        exit_status=SmileExitStatus(exit_code, exit_code in _RUNNING_EXIT), running=batch_status in _RUNNING_BATCH,
        record_write_count=sum(c.completed for c in counts), step_executions=steps)


def _hhmmss(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    s = int(round(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def hapi_instance(row: dict[str, Any], names: list[str], counts: list[StepCounts]) -> HapiJobInstance:
    began, ended = row["started_at"], row["finished_at"]
    elapsed = None
    if began is not None:
        elapsed = int(((ended or datetime.now(timezone.utc)) - began).total_seconds() * 1000)
    gated_step = None
    if row["gated"] and row["status"] in ("QUEUED", "IN_PROGRESS", "ERRORED"):
        cur = row["current_step"]
        gated_step = names[cur] if cur < len(names) else str(cur)
    return HapiJobInstance(
        job_definition_id=row["job_name"], parameters=row["params"], job_definition_version=row["job_version"],
        instance_id=str(row["id"]), status=row["status"], cancelled=row["status"] == "CANCELLED",
        fast_tracking=False, create_time=_iso(row["created_at"]), start_time=_iso(began), end_time=_iso(ended),
        update_time=_iso(row["updated_at"]), combined_records_processed=sum(c.completed for c in counts),
        combined_records_processed_per_second=row["chunks_per_second"], total_elapsed_millis=elapsed,
        work_chunks_purged=False, progress=row["progress"] or 0.0, current_gated_step_id=gated_step,
        error_message=row["error_message"], error_count=row["error_count"] or 0,
        estimated_completion=_hhmmss(row["eta_seconds"]), report=row["report"], warning_messages=None,
        triggering_username=None, triggering_client_id=None)


def _instance_id(raw: str) -> int:
    """HAPI instance ids are UUIDs; chunkd's are integers. Both spellings of one are accepted:
    `42` and its executionUUID `00000000-0000-0000-0000-00000000002a`."""
    iid = 0
    if raw.isdigit():
        iid = int(raw)
    else:
        try:
            iid = uuid.UUID(raw).int
        except ValueError:
            pass
    if not 1 <= iid <= _MAX_ID:
        raise ApiError(404, "not_found", f"no instance {raw!r} (chunkd instance ids are integers, or that "
                                         "integer as a UUID)")
    return iid


def _status_filter(raw: str | None, name: str) -> list[str]:
    """Case-insensitive: IN_PROGRESS, in_progress and In_Progress are one status."""
    if raw is None or raw == "":
        return []
    want = raw.strip().upper()
    valid = [s.value for s in I]
    if want not in valid:
        raise ApiError(400, "bad_request", f"unknown {name} {raw!r}; one of {', '.join(valid)}", {"parameter": name})
    return [want]


# ---------------------------------------------------------------- routes
class SeedRoutes:
    """Smile CDR's Batch Job Endpoint and hapi-fhir-groovy's /control/jobs over chunkd's instances."""

    def __init__(self, api: Api) -> None:
        self.api = api

    def strict(self, *allowed: str) -> Callable[[Handler], Handler]:
        def wrap(fn: Handler) -> Handler:
            async def handler(request: Request) -> Response:
                check_query(request, frozenset(allowed))
                return await fn(request)
            return handler
        return wrap

    def module(self, request: Request) -> str:
        mid = request.path_params["module_id"]
        if not mid or len(mid) > 200 or "\x00" in mid:
            raise ApiError(400, "bad_request", "module_id must be 1 to 200 characters", {"parameter": "module_id"})
        return mid

    def names_of(self, row: dict[str, Any]) -> list[str]:
        try:
            return [s.name for s in self.api.node.registry.get(row["job_name"], row["job_version"]).steps]
        except UnknownJobError:
            return []

    async def counts_of(self, ids: list[int]) -> dict[int, list[StepCounts]]:
        return await self.api.ops().reads.step_counts(ids) if ids else {}

    def execution_id(self, request: Request) -> int:
        raw = request.path_params["execution_id"]
        if not raw.isdigit() or not 1 <= int(raw) <= _MAX_ID:
            raise ApiError(404, "not_found", f"no job execution {raw!r}")
        return int(raw)

    async def load(self, iid: int, what: str = "job execution") -> dict[str, Any]:
        row = await self.api.ops().reads.get_instance(iid)
        if row is None:
            raise ApiError(404, "not_found", f"no {what} {iid}")
        return row

    async def as_execution(self, row: dict[str, Any], mid: str) -> SmileJobExecution:
        return smile_execution(row, mid, self.names_of(row), (await self.counts_of([row["id"]])).get(row["id"], []))

    # ---- Smile CDR: GET /batch-job/{module_id}
    async def job_names(self, request: Request) -> Response:
        self.module(request)
        return ok(SmileJobNames([SmileJobName(n) for n in self.api.node.registry.names()]))

    # ---- Smile CDR: GET /batch-job/{module_id}/{job_name}?executionUUID=&start=&count=
    async def job_instances(self, request: Request) -> Response:
        mid = self.module(request)
        job = request.path_params["job_name"]
        try:
            self.api.node.registry.get(job)
        except UnknownJobError as e:
            raise ApiError(404, "unknown_job", str(e.args[0] if e.args else e)) from None
        start = _int(request, "start", 0, 0, 10_000_000)
        count = _int(request, "count", 50, 1, 500)
        wanted = request.query_params.get("executionUUID")
        if wanted is not None:
            try:
                iid = uuid.UUID(wanted).int
            except ValueError:
                raise ApiError(400, "bad_request", f"executionUUID {wanted!r} is not a UUID",
                               {"parameter": "executionUUID"}) from None
            row = await self.api.ops().reads.get_instance(iid) if 1 <= iid <= _MAX_ID else None
            rows = [row] if row is not None and row["job_name"] == job else []
        else:
            _, rows = await self.api.ops().reads.list_instances(job, [], None, None, start, count)
        counts = await self.counts_of([r["id"] for r in rows])
        return ok(SmileJobInstances([
            SmileJobInstance(r["job_name"], [smile_execution(r, mid, self.names_of(r), counts.get(r["id"], []))])
            for r in rows]))

    # ---- Smile CDR: POST /batch-job/{module_id}/{job_execution_id}/stop?force=true|false
    async def stop(self, request: Request) -> Response:
        mid = self.module(request)
        iid = self.execution_id(request)
        force = request.query_params.get("force", "false").lower()
        if force not in ("true", "false"):
            raise ApiError(400, "bad_request", "query parameter 'force' must be true or false", {"parameter": "force"})
        row = await self.load(iid)
        if not await self.api.ops().stop(iid, force=force == "true"):
            raise ApiError(409, "illegal_state", f"cannot stop job execution {iid}: it is {row['status']}",
                           {"status": row["status"]})
        # Smile's example is the force form; the unforced one is Spring Batch's graceful stop
        # (no new chunk starts, running steps finish) in the same sentence without "force-".
        message = f"Batch Job {iid} force-stopped." if force == "true" else f"Batch Job {iid} stopped."
        return ok(SmileOperation("stop", True, message, await self.as_execution(await self.load(iid), mid)))

    # ---- Smile CDR: POST /batch-job/{module_id}/{job_execution_id}/restart
    async def restart(self, request: Request) -> Response:
        mid = self.module(request)
        iid = self.execution_id(request)
        row = await self.load(iid)
        if row["status"] not in {s.value for s in RESTARTABLE}:
            raise ApiError(409, "illegal_state", f"cannot restart job execution {iid}: it is {row['status']} "
                           "(only FAILED or CANCELLED ones restart)", {"status": row["status"]})
        try:
            restarted = await self.api.ops().restart(row)
        except UnknownJobError as err:
            raise ApiError(409, "unknown_job", f"cannot restart: {err}") from None
        if not restarted:
            raise ApiError(409, "illegal_state", f"cannot restart job execution {iid}: it changed meanwhile")
        # chunkd restarts in place: the run that follows is the same instance, so its execution
        # id (the one to poll, stop or restart next) is the same id.
        return ok(SmileOperation("restart", True, f"Restarted job execution with ID {iid} - New execution ID is: {iid}",
                                 await self.as_execution(await self.load(iid), mid)))

    # ---- hapi-fhir-groovy: GET /control/jobs?pageStart=&batchSize=&jobStatus=
    async def control_list(self, request: Request) -> Response:
        page = _int(request, "pageStart", 0, 0, 1_000_000)
        size = _int(request, "batchSize", 200, 1, 500)
        statuses = _status_filter(request.query_params.get("jobStatus"), "jobStatus")
        _, rows = await self.api.ops().reads.list_instances(None, statuses, None, None, page * size, size)
        counts = await self.counts_of([r["id"] for r in rows])
        return ok([hapi_instance(r, self.names_of(r), counts.get(r["id"], [])) for r in rows])

    # ---- hapi-fhir-groovy: DELETE /control/jobs?instanceId=
    async def control_cancel(self, request: Request) -> Response:
        raw = request.query_params.get("instanceId")
        if raw is None:
            raise ApiError(400, "bad_request", "query parameter 'instanceId' is required", {"parameter": "instanceId"})
        iid = _instance_id(raw)
        row = await self.load(iid, "instance")
        operation = f"Cancel job instance {iid}"
        if await self.api.ops().stop(iid, force=False):
            return ok(HapiOperationResult(operation, True, f"Job instance <{iid}> successfully cancelled."))
        return ok(HapiOperationResult(operation, False,
                                      f"Job instance <{iid}> is {row['status']}: nothing to cancel."))

    def routes(self) -> list[Route]:
        g, s, V, M = self.api.guarded, self.strict, Scope.VIEW, Scope.MANAGE
        return [
            Route("/batch-job/{module_id}", g(V, s()(self.job_names)), methods=["GET"]),
            Route("/batch-job/{module_id}/{job_name}",
                  g(V, s("executionUUID", "start", "count")(self.job_instances)), methods=["GET"]),
            Route("/batch-job/{module_id}/{execution_id}/stop", g(M, s("force")(self.stop)), methods=["POST"]),
            Route("/batch-job/{module_id}/{execution_id}/restart", g(M, s()(self.restart)), methods=["POST"]),
            Route("/control/jobs", g(V, s("pageStart", "batchSize", "jobStatus")(self.control_list)),
                  methods=["GET"]),
            Route("/control/jobs", g(M, s("instanceId")(self.control_cancel)), methods=["DELETE"]),
        ]
