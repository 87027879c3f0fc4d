"""What every resource of the HTTP API shares: errors, request parsing within the limits,
the bearer-token check, and the instance view."""
from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from actors.instances import BadParameters, BadRequest, IdempotencyConflict, SubmitError, UnknownJob
from actors.operations import Operations
from actors.job import Job
from actors.registry import UnknownJobError
from daemon.http import models as m
from daemon.http.auth import Scope, allows, scope_of
from daemon.http.contract import parameters_schema
from daemon.http.limits import MAX_BODY, MAX_JSON_DEPTH, json_depth
from daemon.http.ports import Served
from storage.states import C, I
from storage.types import StepCounts

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
        raise _out_of_bounds(raw, tp, e) or ApiError(400, "bad_request", f"invalid request body: {e}") from None
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


_OUT_OF_BOUNDS = re.compile(r"^Expected `(int|str)` (?:of length )?[<>]=? ?-?\d+ - at `\$\.(\w+)`$")


def _out_of_bounds(raw: bytes, tp: type, e: msgspec.ValidationError) -> ApiError | None:
    """A well-formed value outside the range or length its request Struct declares (msgspec
    constraints, e.g. SubmitRequest.priority): a 422 naming it and its bounds, as for bad
    parameters. Anything else msgspec refuses stays a 400."""
    match = _OUT_OF_BOUNDS.match(str(e))
    if match is None:
        return None
    kind, name = match.groups()
    field = next((f for f in msgspec.inspect.type_info(tp).fields if f.name == name), None)  # type: ignore[attr-defined]
    ftype = field.type if field is not None else None
    if isinstance(ftype, msgspec.inspect.UnionType):
        ftype = next((t for t in ftype.types if not isinstance(t, msgspec.inspect.NoneType)), None)
    value = msgspec.json.decode(raw).get(name)
    if kind == "str" and isinstance(ftype, msgspec.inspect.StrType) and ftype.max_length is not None:
        return ApiError(422, "too_long", f"{name} is {len(value)} characters; the limit is {ftype.max_length}",
                        {"path": f"$.{name}", "limit": ftype.max_length})
    if kind == "int" and isinstance(ftype, msgspec.inspect.IntType):
        return ApiError(422, "out_of_range", f"{name} must be between {ftype.ge} and {ftype.le}, got {value}",
                        {"path": f"$.{name}"})
    return None


def refusal(err: SubmitError) -> ApiError:
    """A refused submission as the API answers it, for the single and the bulk submit alike."""
    if isinstance(err, UnknownJob):
        return ApiError(404, "unknown_job", str(err))
    if isinstance(err, BadParameters):
        return ApiError(422, "invalid_parameters", str(err), {"path": err.path} if err.path else None)
    if isinstance(err, IdempotencyConflict):
        return ApiError(409, "idempotency_conflict", str(err), {"differences": err.differences})
    if isinstance(err, BadRequest):
        return ApiError(400, "bad_request", str(err), {"parameter": err.parameter})
    return ApiError(400, "bad_request", str(err))


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


def _step_names(node: Served, job: str, version: int) -> list[str]:
    try:
        return [s.name for s in node.registry.get(job, version).steps]
    except UnknownJobError:
        return []


def _name(names: list[str], i: int) -> str:
    return names[i] if i < len(names) else str(i)


def instance_out(row: dict[str, Any]) -> m.Instance:
    # The store keeps a cancel's reason where an error would be; shown apart, since a cancel
    # is not an error (a CANCELLED instance has no other error message: the cancel writes it).
    cancelled = row["status"] == I.CANCELLED.value
    return m.Instance(
        id=row["id"], job=row["job_name"], version=row["job_version"], status=row["status"], gated=row["gated"],
        current_step=row["current_step"], parameters=json.loads(row["params"]),
        idempotency_key=row["idempotency_key"], created_at=row["created_at"], started_at=row["started_at"],
        finished_at=row["finished_at"], updated_at=row["updated_at"], progress=row["progress"],
        chunks_per_second=row["chunks_per_second"], eta_seconds=row["eta_seconds"],
        error_message=None if cancelled else row["error_message"], error_count=row["error_count"],
        report=json.loads(row["report"]) if row["report"] is not None else None,
        schedule_id=row.get("schedule_id"), scheduled_for=row.get("scheduled_for"),
        cancel_reason=row["error_message"] if cancelled else None,
        reduction_attempts=row.get("reduction_attempts") or 0, last_error=row.get("last_error"))


def _decode_data(data: bytes | None) -> Any:
    if not data:
        return None
    try:
        return msgspec.msgpack.decode(data)
    except msgspec.DecodeError:
        return {"undecodable_bytes": len(data)}


# ---------------------------------------------------------------- routes
Handler = Callable[[Request], Awaitable[Response]]
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="chunkd"'}


def bearer(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value, or None."""
    kind, _, presented = authorization.partition(" ")
    return presented.strip() or None if kind.lower() == "bearer" else None


def bearer_scope(tokens: dict[str, Scope], authorization: str) -> Scope:
    """The scope of a presented bearer token; 401 if there is none or it is unknown. Shared by
    the route check and the request guard, which runs it first for state-changing requests."""
    presented = bearer(authorization)
    if presented is None:
        raise ApiError(401, "unauthorized", "missing bearer token", headers=_CHALLENGE)
    have = scope_of(tokens, presented)
    if have is None:
        raise ApiError(401, "unauthorized", "unknown token", headers=_CHALLENGE)
    return have


class Api:
    """The node and tokens every resource's routes need, and the checks they all make."""

    def __init__(self, node: Served, tokens: dict[str, Scope]) -> None:
        self.node = node
        self.tokens = tokens

    def presented_scope(self, request: Request) -> Scope:
        """The scope of the request's bearer token; raises 401 if there is none or it is unknown."""
        return bearer_scope(self.tokens, request.headers.get("authorization", ""))

    def guarded(self, need: Scope, fn: Handler) -> Handler:
        async def handler(request: Request) -> Response:
            if self.tokens:
                have = self.presented_scope(request)
                if not allows(have, need):
                    raise ApiError(403, "forbidden", f"this token has the {have.value} scope; "
                                                     f"this operation needs {need.value}")
            return await fn(request)
        return handler

    def ops(self) -> Operations:
        """The daemon's operations (reads, submit, stop/restart), or 503 while it starts."""
        if self.node.ops is None:
            raise ApiError(503, "unavailable", "the daemon is starting", headers={"Retry-After": "1"})
        return self.node.ops

    async def load(self, iid: int) -> dict[str, Any]:
        row = await self.ops().reads.get_instance(iid)
        if row is None:
            raise ApiError(404, "not_found", f"no instance {iid}")
        return row

    async def detailed(self, iid: int) -> m.Instance:
        """The full view of one instance (one query), or 404."""
        d = await self.ops().reads.instance_detail(iid)
        if d is None:
            raise ApiError(404, "not_found", f"no instance {iid}")
        row = d.row
        out = instance_out(row)
        names = _step_names(self.node, row["job_name"], row["job_version"])
        by_state: dict[int, dict[str, int]] = {}
        for step, state, n in d.chunk_states:
            by_state.setdefault(step, {})[C(state).name] = n
        out.steps = [m.StepProgress(c.step, _name(names, c.step), c.created, c.completed, c.failed, c.cancelled,
                                    c.errors, by_state.get(c.step, {}))
                     for c in d.counters]
        out.warnings = d.warnings
        if row["status"] == I.ERRORED.value and out.last_error is None:
            # chunks failing and retrying: the latest error says why (their attempts are on /chunks)
            last = await self.ops().reads.last_error(iid)
            if last is not None:
                out.last_error = f"step {_name(names, last[0])!r}: {last[1]}"
        return out
