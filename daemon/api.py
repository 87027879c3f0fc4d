"""The HTTP control API: /api/v1/... on the daemon's Starlette app."""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from actors.scheduler import row_for, spec_of
from storage.schedules import ScheduleRow, Schedules
from storage.states import C, RESTARTABLE, I
from storage.types import StepCounts

from . import api_models as m
from . import control
from .auth import Scope, allows, scope_of
from .limits import MAX_BODY, MAX_IDEMPOTENCY_KEY, MAX_JSON_DEPTH, MAX_NAME, json_depth
from .contract import parameters_schema
from .registry import UnknownJobError
from .sdk import Job
from .scheduling import ScheduleError, next_after
from .scheduling import validate as validate_spec
from .submit import BadParameters, IdempotencyConflict, UnknownJob, submit
from .submit import validate as validate_params
from .throughput import bucket_seconds
from . import bulk as _bulk

if TYPE_CHECKING:
    from .node import Node

log = structlog.get_logger("chunkd.api")

MAX_PAGE = 500
NODE_SEEN_WITHIN = 60.0   # seconds; the cluster view lists daemons that beat this recently
_MAX_ID = (1 << 63) - 1
_json = msgspec.json.Encoder()


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details, self.headers = status, code, message, details, headers


def error_response(err: ApiError) -> Response:
    body = m.ErrorBody(m.ErrorDetail(err.code, err.message, err.details))
    return Response(_json.encode(body), err.status, headers=err.headers, media_type="application/json")


def ok(body: Any, status: int = 200) -> Response:
    return Response(_json.encode(body), status, media_type="application/json")


# ---------------------------------------------------------------- request parsing
def _int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise ApiError(400, "bad_request", f"query parameter {name!r} must be an integer", {"parameter": name}) from None
    if not lo <= v <= hi:
        raise ApiError(400, "bad_request", f"query parameter {name!r} must be between {lo} and {hi}",
                       {"parameter": name})
    return v


def _time(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        v = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, "bad_request", f"query parameter {name!r} must be an ISO 8601 timestamp",
                       {"parameter": name}) from None
    if v.tzinfo is None:
        raise ApiError(400, "bad_request", f"query parameter {name!r} needs a time zone (e.g. Z)",
                       {"parameter": name})
    return v


def _flag(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise ApiError(400, "bad_request", f"query parameter {name!r} must be true or false", {"parameter": name})
    return raw in ("true", "1")


def _no_nul(value: str | None, name: str) -> str | None:
    """Postgres text cannot hold NUL: refuse it here instead of failing in the database."""
    if value is not None and "\x00" in value:
        raise ApiError(400, "bad_request", f"{name} must not contain NUL characters", {"parameter": name})
    return value


def _instance_id(request: Request) -> int:
    v = request.path_params["id"]
    if not 1 <= v <= _MAX_ID:
        raise ApiError(404, "not_found", f"no instance {v}")
    return v


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise ApiError(413, "too_large", f"request body over {MAX_BODY} bytes")
    chunks, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > MAX_BODY:
            raise ApiError(413, "too_large", f"request body over {MAX_BODY} bytes")
        chunks.append(part)
    return b"".join(chunks)


def _decode(raw: bytes, tp: type) -> Any:
    """A request body as `tp`: 400 for malformed or over-nested JSON, naming the problem."""
    try:
        req = msgspec.json.decode(raw, type=tp)
    except msgspec.ValidationError as e:
        raise ApiError(400, "bad_request", f"invalid request body: {e}") from None
    except msgspec.DecodeError as e:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise ApiError(400, "too_deep", f"request body is nested more than {MAX_JSON_DEPTH} levels deep",
                       {"limit": MAX_JSON_DEPTH}) from None
    params = getattr(req, "parameters", None)
    if params is not None and json_depth(params) > MAX_JSON_DEPTH:
        raise ApiError(422, "invalid_parameters", f"parameters are nested more than {MAX_JSON_DEPTH} levels deep",
                       {"path": "$.parameters", "limit": MAX_JSON_DEPTH})
    return req


def _bounded(value: str | None, name: str, limit: int) -> str | None:
    """Refuse NUL and over-long text before the database sees it."""
    _no_nul(value, name)
    if value is not None and len(value) > limit:
        raise ApiError(422, "too_long", f"{name} is {len(value)} characters; the limit is {limit}",
                       {"path": f"$.{name}", "limit": limit})
    return value


# Query parameters each route understands; any other is a 400 naming it (a typo such as
# `?jobStatus=` must not silently return everything). Routes missing here are not checked.
QUERY_PARAMS: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/api/v1/instances"): frozenset({"job", "status", "start", "count", "created_after", "created_before"}),
    ("GET", "/api/v1/instances/{id:int}/chunks"): frozenset({"step", "status", "data", "start", "count", "errors"}),
    ("POST", "/api/v1/instances/{id:int}/stop"): frozenset({"force"}),
    **{(method, path): frozenset() for method, path in [
        ("GET", "/api/v1/schedules"), ("POST", "/api/v1/schedules"), ("GET", "/api/v1/schedules/{sid}"),
        ("DELETE", "/api/v1/schedules/{sid}"), ("POST", "/api/v1/schedules/{sid}/pause"),
        ("POST", "/api/v1/schedules/{sid}/resume"), ("GET", "/api/v1/jobs"), ("POST", "/api/v1/instances"),
        ("GET", "/api/v1/instances/{id:int}"), ("GET", "/api/v1/instances/{id:int}/throughput"),
        ("GET", "/api/v1/cluster"), ("GET", "/api/v1/whoami"), ("POST", "/api/v1/instances/{id:int}/cancel"),
        ("POST", "/api/v1/instances/{id:int}/restart"), ("POST", "/api/v1/instances:batch")]},
}


def check_query(request: Request, allowed: frozenset[str]) -> None:
    unknown = sorted(set(request.query_params.keys()) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise ApiError(400, "unknown_parameter", f"unknown query parameter {unknown[0]!r} (this route takes: {known})",
                       {"parameter": unknown[0]})


def strict_routes(table: list[Route]) -> list[Route]:
    out = []
    for r in table:
        method = sorted((r.methods or {"GET"}) - {"HEAD"})[0]
        allowed = QUERY_PARAMS.get((method, r.path))
        if allowed is None:
            out.append(r)
            continue

        def wrap(fn: Handler, allowed: frozenset[str] = allowed) -> Handler:
            async def handler(request: Request) -> Response:
                check_query(request, allowed)
                return await fn(request)
            return handler
        out.append(Route(r.path, wrap(r.endpoint), methods=list(r.methods or [])))
    return out


# ---------------------------------------------------------------- representations
def job_info(job: Job, latest: bool) -> m.JobInfo:
    return m.JobInfo(
        name=job.name, version=job.version, latest=latest, gated=job.gated, description=job.description,
        concurrency=job.concurrency,
        steps=[m.StepInfo(s.index, s.name, s.kind.value, s.consumes.__name__ if s.consumes else None,
                          s.emits.__name__ if s.emits else None, s.max_attempts, s.transactional, s.weight)
               for s in job.steps],
        parameters_type=job.params.__name__, parameters_schema=parameters_schema(job))


def _step_names(node: "Node", job: str, version: int) -> list[str]:
    try:
        return [s.name for s in node.registry.get(job, version).steps]
    except UnknownJobError:
        return []


def _name(names: list[str], i: int) -> str:
    return names[i] if i < len(names) else str(i)


def instance_out(row: dict[str, Any]) -> m.Instance:
    return m.Instance(
        id=row["id"], job=row["job_name"], version=row["job_version"], status=row["status"], gated=row["gated"],
        current_step=row["current_step"], parameters=json.loads(row["params"]),
        idempotency_key=row["idempotency_key"], created_at=row["created_at"], started_at=row["started_at"],
        finished_at=row["finished_at"], updated_at=row["updated_at"], progress=row["progress"],
        chunks_per_second=row["chunks_per_second"], eta_seconds=row["eta_seconds"],
        error_message=row["error_message"], error_count=row["error_count"],
        report=json.loads(row["report"]) if row["report"] is not None else None,
        schedule_id=row.get("schedule_id"), scheduled_for=row.get("scheduled_for"))


def _decode_data(data: bytes | None) -> Any:
    if not data:
        return None
    try:
        return msgspec.msgpack.decode(data)
    except msgspec.DecodeError:
        return {"undecodable_bytes": len(data)}


# ---------------------------------------------------------------- routes
Handler = Callable[[Request], Awaitable[Response]]


def routes(node: "Node", tokens: dict[str, Scope]) -> list[Route]:
    def presented_scope(request: Request) -> Scope | None:
        """The scope of the request's bearer token; raises 401 if there is none or it is unknown."""
        kind, _, presented = request.headers.get("authorization", "").partition(" ")
        if kind.lower() != "bearer" or not presented:
            raise ApiError(401, "unauthorized", "missing bearer token",
                           headers={"WWW-Authenticate": 'Bearer realm="chunkd"'})
        return scope_of(tokens, presented.strip())

    def guarded(need: Scope, fn: Handler) -> Handler:
        async def handler(request: Request) -> Response:
            if tokens:
                have = presented_scope(request)
                if have is None:
                    raise ApiError(401, "unauthorized", "unknown token",
                                   headers={"WWW-Authenticate": 'Bearer realm="chunkd"'})
                if not allows(have, need):
                    raise ApiError(403, "forbidden", f"this token has the {have.value} scope; "
                                                     f"this operation needs {need.value}")
            return await fn(request)
        return handler

    def engine():  # type: ignore[no-untyped-def]
        if node.engine is None:
            raise ApiError(503, "unavailable", "the daemon is starting", headers={"Retry-After": "1"})
        return node.engine

    async def load(iid: int) -> dict[str, Any]:
        row = await engine().store.get_instance(iid)
        if row is None:
            raise ApiError(404, "not_found", f"no instance {iid}")
        return row

    async def detailed(row: dict[str, Any]) -> m.Instance:
        e = engine()
        out = instance_out(row)
        names = _step_names(node, row["job_name"], row["job_version"])
        counts = (await e.store.step_counts([row["id"]])).get(row["id"], [])
        by_state: dict[int, dict[str, int]] = {}
        for step, state, n in await e.store.chunk_counts(row["id"]):
            by_state.setdefault(step, {})[C(state).name] = n
        steps: dict[int, StepCounts] = {c.step: c for c in counts}
        out.steps = [m.StepProgress(i, _name(names, i), c.created, c.completed, c.failed, c.cancelled, c.errors,
                                    by_state.get(i, {}))
                     for i, c in sorted(steps.items())]
        out.warnings = await e.store.warnings(row["id"])
        return out

    async def list_jobs(request: Request) -> Response:
        jobs = node.registry.jobs()
        latest = {j.name: max(x.version for x in jobs if x.name == j.name) for j in jobs}
        return ok(m.JobList([job_info(j, j.version == latest[j.name]) for j in jobs]))

    submitting = 0

    async def create_instance(request: Request) -> Response:
        # Shed load rather than queue it: a storm of submissions must not pile up requests
        # (and their memory) behind the connection pool; a refused one wrote nothing.
        nonlocal submitting
        if submitting >= node.cfg.api_max_submits:
            raise ApiError(429, "too_many_requests", f"{submitting} submissions are in progress "
                           f"(CHUNKD_API_MAX_SUBMITS); retry shortly", headers={"Retry-After": "1"})
        submitting += 1
        try:
            return await _create_instance(request)
        finally:
            submitting -= 1

    async def _create_instance(request: Request) -> Response:
        req = _decode(await _body(request), m.SubmitRequest)
        if req.version is not None and not 1 <= req.version <= 2**31 - 1:
            raise ApiError(400, "bad_request", "version must be a positive integer")
        _bounded(req.job, "job", MAX_NAME)
        _bounded(req.idempotency_key, "idempotency_key", MAX_IDEMPOTENCY_KEY)
        if not -3 <= req.priority <= 3:
            raise ApiError(400, "bad_request", "priority must be between -3 and 3")
        e = engine()
        try:
            res = await submit(e.store, e.channel, node.registry, req.job, _json.encode(req.parameters),
                               version=req.version, idempotency_key=req.idempotency_key, reader=e.reader,
                               priority=req.priority)
        except UnknownJob as err:
            raise ApiError(404, "unknown_job", str(err)) from None
        except BadParameters as err:
            raise ApiError(422, "invalid_parameters", str(err),
                           {"path": err.path} if err.path else None) from None
        except IdempotencyConflict as err:
            raise ApiError(409, "idempotency_conflict", str(err), {"differences": err.differences}) from None
        row = await load(res.instance_id)
        if res.created:
            log.info("instance submitted", job=res.job, instance_id=res.instance_id)
        return ok(await detailed(row), 201 if res.created else 200)

    async def list_instances(request: Request) -> Response:
        statuses = [s.upper() for s in request.query_params.getlist("status")]  # in_progress works too
        valid = {s.value for s in I}
        bad = [s for s in statuses if s not in valid]
        if bad:
            raise ApiError(400, "bad_request", f"unknown status {bad[0]!r}; one of {', '.join(sorted(valid))}",
                           {"parameter": "status"})
        start = _int(request, "start", 0, 0, 10_000_000)
        count = _int(request, "count", 50, 1, MAX_PAGE)
        total, rows = await engine().store.list_instances(
            _no_nul(request.query_params.get("job"), "job"), statuses, _time(request, "created_after"),
            _time(request, "created_before"), start, count)
        return ok(m.InstanceList(total, start, len(rows), [instance_out(r) for r in rows]))

    async def get_instance(request: Request) -> Response:
        return ok(await detailed(await load(_instance_id(request))))

    async def list_chunks(request: Request) -> Response:
        iid = _instance_id(request)
        row = await load(iid)
        names = _step_names(node, row["job_name"], row["job_version"])
        step = request.query_params.get("step")
        step_i = None if step is None else _int(request, "step", 0, 0, 32767)
        states = []
        for s in (x.upper() for x in request.query_params.getlist("status")):
            if s not in C.__members__:
                raise ApiError(400, "bad_request", f"unknown chunk status {s!r}; one of {', '.join(C.__members__)}",
                               {"parameter": "status"})
            states.append(int(C[s]))
        with_data = _flag(request, "data")
        start = _int(request, "start", 0, 0, 100_000_000)
        count = _int(request, "count", 100, 1, MAX_PAGE)
        total, rows = await engine().store.list_chunks(iid, step_i, states, with_data, start, count,
                                                       errors_only=_flag(request, "errors"))
        chunks = [m.Chunk(id=r["id"], step=r["step"], step_name=_name(names, r["step"]), status=C(r["state"]).name,
                          attempt=r["attempt"], failures=r["failures"], max_attempts=r["max_attempts"],
                          created_at=r["created_at"], claimed_at=r["claimed_at"], completed_at=r["completed_at"],
                          lease_until=r["lease_until"],
                          next_run_at=r["next_run_at"], error_message=r["error_message"],
                          error_trace=r["error_trace"],
                          data=_decode_data(r["data"]) if with_data else None)
                  for r in rows]
        return ok(m.ChunkList(total, start, len(chunks), chunks))

    async def throughput(request: Request) -> Response:
        row = await load(_instance_id(request))
        began = row["started_at"] or row["created_at"]
        until = row["finished_at"] or await engine().store.db_now()  # the database's clock, like the rows
        bucket = bucket_seconds((until - began).total_seconds())
        points = await engine().store.throughput(row["id"], bucket)
        return ok(m.Throughput(bucket, [m.ThroughputPoint(at, n) for at, n in points]))

    async def cluster(request: Request) -> Response:
        rows = await engine().store.nodes(NODE_SEEN_WITHIN)
        return ok(m.Cluster([m.Node(**r) for r in rows]))

    async def whoami(request: Request) -> Response:
        if not tokens:
            return ok(m.WhoAmI(Scope.MANAGE.value, False))
        have = presented_scope(request)  # guarded: known by now
        assert have is not None
        return ok(m.WhoAmI(have.value, True))

    def conflict(row: dict[str, Any], what: str) -> ApiError:
        state = "being purged by retention" if row.get("purging") else row["status"]
        return ApiError(409, "illegal_state", f"cannot {what} instance {row['id']}: it is {state}",
                        {"status": row["status"]})

    async def cancel(request: Request) -> Response:
        iid = _instance_id(request)
        row = await load(iid)
        if not await control.stop(engine(), iid, force=False):
            raise conflict(await load(iid), "cancel")
        log.info("instance state change", job=row["job_name"], instance_id=iid, status="CANCELLED")
        return ok(await detailed(await load(iid)))

    async def stop(request: Request) -> Response:
        iid = _instance_id(request)
        if not _flag(request, "force"):
            raise ApiError(400, "bad_request", "stop needs force=true (use cancel to let running chunks finish)",
                           {"parameter": "force"})
        row = await load(iid)
        if not await control.stop(engine(), iid, force=True):
            raise conflict(await load(iid), "stop")
        log.info("instance state change", job=row["job_name"], instance_id=iid, status="CANCELLED", forced=True)
        return ok(await detailed(await load(iid)))

    async def restart(request: Request) -> Response:
        iid = _instance_id(request)
        row = await load(iid)
        if row["status"] not in {s.value for s in RESTARTABLE}:
            raise conflict(row, "restart")
        try:
            restarted = await control.restart(engine(), node.registry, row)
        except UnknownJobError as err:
            raise ApiError(409, "unknown_job", f"cannot restart: {err}") from None
        if not restarted:
            raise conflict(await load(iid), "restart")
        log.info("instance state change", job=row["job_name"], instance_id=iid, status="IN_PROGRESS", restarted=True)
        return ok(await detailed(await load(iid)))

    # ---------------------------------------------------------------- schedules
    def schedule_out(r: ScheduleRow) -> m.Schedule:
        return m.Schedule(id=r.id, job=r.job_name, version=r.job_version, parameters=json.loads(r.params),
                          cron=r.cron, every_seconds=r.interval_seconds, timezone=r.timezone, missed=r.missed,
                          paused=r.paused, source=r.source, created_at=r.created_at, next_fire_at=r.next_fire_at,
                          last_fire_at=r.last_fire_at, last_instance_id=r.last_instance_id)

    def schedules() -> Schedules:
        return Schedules(engine().store.pool)

    async def load_schedule(sid: str) -> ScheduleRow:
        _no_nul(sid, "id")
        row = await schedules().get(sid)
        if row is None:
            raise ApiError(404, "not_found", f"no schedule {sid!r}")
        return row

    async def list_schedules(request: Request) -> Response:
        return ok(m.ScheduleList([schedule_out(r) for r in await schedules().list()]))

    async def create_schedule(request: Request) -> Response:
        req = _decode(await _body(request), m.ScheduleIn)
        for name in ("id", "job", "cron", "timezone", "missed"):
            _bounded(getattr(req, name), name, MAX_NAME)
        if not req.id:
            raise ApiError(422, "invalid_schedule", f"id must be 1 to {MAX_NAME} characters", {"path": "$.id"})
        if req.version is not None and not 1 <= req.version <= 2**31 - 1:
            raise ApiError(400, "bad_request", "version must be a positive integer")
        try:
            spec = validate_spec(req.cron, req.every_seconds, req.timezone, req.missed)
        except ScheduleError as err:
            raise ApiError(422, "invalid_schedule", str(err), {"path": err.path}) from None
        try:
            job, canonical = validate_params(node.registry, req.job, _json.encode(req.parameters), req.version)
        except UnknownJob as err:
            raise ApiError(404, "unknown_job", str(err)) from None
        except BadParameters as err:
            raise ApiError(422, "invalid_parameters", str(err), {"path": err.path} if err.path else None) from None
        now = await schedules().now()
        row = row_for(req.id, job.name, req.version, canonical, spec, "api", now)
        if not await schedules().create(row):
            raise ApiError(409, "exists", f"schedule {req.id!r} exists; delete it first", {"status": "exists"})
        log.info("schedule created", schedule=req.id, job=job.name)
        return ok(schedule_out(await load_schedule(req.id)), 201)

    async def get_schedule(request: Request) -> Response:
        return ok(schedule_out(await load_schedule(request.path_params["sid"])))

    async def delete_schedule(request: Request) -> Response:
        row = await load_schedule(request.path_params["sid"])
        await schedules().delete(row.id)
        return ok(m.Deleted(row.id))

    def pause_or_resume(paused: bool) -> Handler:
        async def handler(request: Request) -> Response:
            row = await load_schedule(request.path_params["sid"])
            now = await schedules().now()
            await schedules().set_paused(row.id, paused, None if paused else next_after(spec_of(row), now))
            return ok(schedule_out(await load_schedule(row.id)))
        return handler

    V, M = Scope.VIEW, Scope.MANAGE
    from .seed_routes import seed_routes  # imported here: it builds on this module's helpers
    return strict_routes([
        Route("/api/v1/schedules", guarded(V, list_schedules), methods=["GET"]),
        Route("/api/v1/schedules", guarded(M, create_schedule), methods=["POST"]),
        Route("/api/v1/schedules/{sid}", guarded(V, get_schedule), methods=["GET"]),
        Route("/api/v1/schedules/{sid}", guarded(M, delete_schedule), methods=["DELETE"]),
        Route("/api/v1/schedules/{sid}/pause", guarded(M, pause_or_resume(True)), methods=["POST"]),
        Route("/api/v1/schedules/{sid}/resume", guarded(M, pause_or_resume(False)), methods=["POST"]),
        Route("/api/v1/jobs", guarded(V, list_jobs), methods=["GET"]),
        Route("/api/v1/instances", guarded(M, create_instance), methods=["POST"]),
        Route("/api/v1/instances:batch", guarded(M, _bulk.route(node)), methods=["POST"]),  # daemon/bulk.py
        Route("/api/v1/instances", guarded(V, list_instances), methods=["GET"]),
        Route("/api/v1/instances/{id:int}", guarded(V, get_instance), methods=["GET"]),
        Route("/api/v1/instances/{id:int}/chunks", guarded(V, list_chunks), methods=["GET"]),
        Route("/api/v1/instances/{id:int}/throughput", guarded(V, throughput), methods=["GET"]),
        Route("/api/v1/cluster", guarded(V, cluster), methods=["GET"]),
        Route("/api/v1/whoami", guarded(V, whoami), methods=["GET"]),
        Route("/api/v1/instances/{id:int}/cancel", guarded(M, cancel), methods=["POST"]),
        Route("/api/v1/instances/{id:int}/stop", guarded(M, stop), methods=["POST"]),
        Route("/api/v1/instances/{id:int}/restart", guarded(M, restart), methods=["POST"]),
        *seed_routes(node, guarded, engine),
    ])
