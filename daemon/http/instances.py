"""/api/v1/instances: submit, list, show, chunks, throughput, cancel, stop, restart."""
from __future__ import annotations

from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from actors.instances import SubmitError
from actors.registry import UnknownJobError
from daemon.http import models as m
from daemon.http.auth import Scope
from daemon.http.common import (
    MAX_PAGE,
    Api,
    ApiError,
    _body,
    _decode,
    _decode_data,
    _flag,
    _instance_id,
    _int,
    _json,
    _name,
    _no_nul,
    _step_names,
    _time,
    instance_out,
    ok,
    refusal,
)
from daemon.http.throughput import bucket_seconds
from storage.states import RESTARTABLE, C, I

log = structlog.get_logger("chunkd.api")


class Instances:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.submitting = 0

    def routes(self) -> list[Route]:
        g, V, M = self.api.guarded, Scope.VIEW, Scope.MANAGE
        return [
            Route("/api/v1/instances", g(M, self.create), methods=["POST"]),
            Route("/api/v1/instances", g(V, self.list), methods=["GET"]),
            Route("/api/v1/instances/{id:int}", g(V, self.get), methods=["GET"]),
            Route("/api/v1/instances/{id:int}/chunks", g(V, self.chunks), methods=["GET"]),
            Route("/api/v1/instances/{id:int}/throughput", g(V, self.throughput), methods=["GET"]),
            Route("/api/v1/instances/{id:int}/cancel", g(M, self.cancel), methods=["POST"]),
            Route("/api/v1/instances/{id:int}/stop", g(M, self.stop), methods=["POST"]),
            Route("/api/v1/instances/{id:int}/restart", g(M, self.restart), methods=["POST"]),
        ]

    async def create(self, request: Request) -> Response:
        # Shed load rather than queue it: a storm of submissions must not pile up requests
        # (and their memory) behind the connection pool; a refused one wrote nothing.
        if self.submitting >= self.api.node.http.max_submits:
            raise ApiError(429, "too_many_requests", f"{self.submitting} submissions are in progress "
                           f"(CHUNKD_API_MAX_SUBMITS); retry shortly", headers={"Retry-After": "1"})
        self.submitting += 1
        try:
            return await self._create(request)
        finally:
            self.submitting -= 1

    async def _create(self, request: Request) -> Response:
        req = _decode(await _body(request), m.SubmitRequest)  # ranges and lengths: its msgspec constraints
        ops = self.api.ops()
        try:
            res = await ops.submit(req.job, _json.encode(req.parameters), version=req.version,
                                   idempotency_key=req.idempotency_key, priority=req.priority)
        except SubmitError as err:
            raise refusal(err) from None
        if res.created:
            log.info("instance submitted", job=res.job, instance_id=res.instance_id)
        return ok(await self.api.detailed(res.instance_id), 201 if res.created else 200)

    async def list(self, request: Request) -> Response:
        statuses = [s.upper() for s in request.query_params.getlist("status")]  # in_progress works too
        valid = {s.value for s in I}
        bad = [s for s in statuses if s not in valid]
        if bad:
            raise ApiError(400, "bad_request", f"unknown status {bad[0]!r}; one of {', '.join(sorted(valid))}",
                           {"parameter": "status"})
        start = _int(request, "start", 0, 0, 10_000_000)
        count = _int(request, "count", 50, 1, MAX_PAGE)
        total, rows = await self.api.ops().reads.list_instances(
            _no_nul(request.query_params.get("job"), "job"), statuses, _time(request, "created_after"),
            _time(request, "created_before"), start, count)
        return ok(m.InstanceList(total, start, len(rows), [instance_out(r) for r in rows]))

    async def get(self, request: Request) -> Response:
        return ok(await self.api.detailed(_instance_id(request)))

    async def chunks(self, request: Request) -> Response:
        iid = _instance_id(request)
        row = await self.api.load(iid)
        names = _step_names(self.api.node, row["job_name"], row["job_version"])
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
        total, rows = await self.api.ops().reads.list_chunks(iid, step_i, states, with_data, start, count,
                                                                errors_only=_flag(request, "errors"))
        chunks = [m.Chunk(id=r["id"], step=r["step"], step_name=_name(names, r["step"]), status=C(r["state"]).name,
                          attempt=r["attempt"], failures=r["failures"], max_attempts=r["max_attempts"],
                          created_at=r["created_at"], claimed_at=r["claimed_at"], completed_at=r["completed_at"],
                          lease_until=r["lease_until"],
                          next_run_at=r["next_run_at"], error_message=r["error_message"],
                          error_trace=r["error_trace"], error_attempt=r["error_attempt"],
                          data=_decode_data(r["data"]) if with_data else None)
                  for r in rows]
        return ok(m.ChunkList(total, start, len(chunks), chunks))

    async def throughput(self, request: Request) -> Response:
        row = await self.api.load(_instance_id(request))
        store = self.api.ops().reads
        began = row["started_at"] or row["created_at"]
        until = row["finished_at"] or await store.db_now()  # the database's clock, like the rows
        bucket = bucket_seconds((until - began).total_seconds())
        points = await store.throughput(row["id"], bucket)
        return ok(m.Throughput(bucket, [m.ThroughputPoint(at, n) for at, n in points]))

    @staticmethod
    def conflict(row: dict[str, Any], what: str) -> ApiError:
        state = "being purged by retention" if row.get("purging") else row["status"]
        return ApiError(409, "illegal_state", f"cannot {what} instance {row['id']}: it is {state}",
                        {"status": row["status"]})

    async def cancel(self, request: Request) -> Response:
        return await self._stop(request, force=False)

    async def stop(self, request: Request) -> Response:
        if not _flag(request, "force"):
            raise ApiError(400, "bad_request", "stop needs force=true (use cancel to let running chunks finish)",
                           {"parameter": "force"})
        return await self._stop(request, force=True)

    async def _stop(self, request: Request, *, force: bool) -> Response:
        iid = _instance_id(request)
        row = await self.api.load(iid)
        if not await self.api.ops().stop(iid, force=force):
            raise self.conflict(await self.api.load(iid), "stop" if force else "cancel")
        log.info("instance state change", job=row["job_name"], instance_id=iid, status="CANCELLED",
                 **({"forced": True} if force else {}))
        return ok(await self.api.detailed(iid))

    async def restart(self, request: Request) -> Response:
        iid = _instance_id(request)
        row = await self.api.load(iid)
        if row["status"] not in {s.value for s in RESTARTABLE}:
            raise self.conflict(row, "restart")
        try:
            restarted = await self.api.ops().restart(row)
        except UnknownJobError as err:
            raise ApiError(409, "unknown_job", f"cannot restart: {err}") from None
        if not restarted:
            raise self.conflict(await self.api.load(iid), "restart")
        log.info("instance state change", job=row["job_name"], instance_id=iid, status="IN_PROGRESS", restarted=True)
        return ok(await self.api.detailed(iid))
