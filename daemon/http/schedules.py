"""/api/v1/schedules: clustered schedules created over the API (and those declared in code)."""
from __future__ import annotations

import json

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from actors.instances import SubmitError
from actors.scheduler import row_for, spec_of
from actors.scheduling import ScheduleError, next_after, upcoming
from actors.scheduling import validate as validate_spec
from actors.scheduling import validate_id
from daemon.http import models as m
from daemon.http.auth import Scope
from daemon.http.common import Api, ApiError, Handler, _body, _bounded, _decode, _json, _no_nul, ok, refusal
from daemon.http.limits import MAX_NAME
from storage.schedules import ScheduleRow, Schedules

log = structlog.get_logger("chunkd.api")
NEXT_FIRE_TIMES = 3


def schedule_out(r: ScheduleRow) -> m.Schedule:
    return m.Schedule(id=r.id, job=r.job_name, version=r.job_version, parameters=json.loads(r.params),
                      cron=r.cron, every_seconds=r.interval_seconds, dialect=r.dialect,
                      next_fire_times=upcoming(spec_of(r), r.next_fire_at, NEXT_FIRE_TIMES),
                      timezone=r.timezone, missed=r.missed,
                      paused=r.paused, source=r.source, created_at=r.created_at, next_fire_at=r.next_fire_at,
                      last_fire_at=r.last_fire_at, last_instance_id=r.last_instance_id, orphaned_at=r.orphaned_at)


def declared_conflict(row: ScheduleRow) -> ApiError:
    """Deleting a schedule the code declares would last only until the next daemon start."""
    if row.source == "builtin":
        why = (f"schedule {row.id!r} is chunkd's built-in retention schedule; set CHUNKD_RETENTION_EVERY=0 "
               "to turn it off, or pause it (a pause persists across restarts)")
    else:
        why = (f"schedule {row.id!r} is declared in a job module: remove its Schedule(...) from the code "
               "(it is then marked orphaned and stops firing, and can be deleted), or pause it (a pause "
               "persists across restarts)")
    return ApiError(409, "declared_schedule", why, {"source": row.source})


class ScheduleRoutes:
    def __init__(self, api: Api) -> None:
        self.api = api

    def routes(self) -> list[Route]:
        g, V, M = self.api.guarded, Scope.VIEW, Scope.MANAGE
        return [
            Route("/api/v1/schedules", g(V, self.list), methods=["GET"]),
            Route("/api/v1/schedules", g(M, self.create), methods=["POST"]),
            Route("/api/v1/schedules/{sid}", g(V, self.get), methods=["GET"]),
            Route("/api/v1/schedules/{sid}", g(M, self.delete), methods=["DELETE"]),
            Route("/api/v1/schedules/{sid}/pause", g(M, self.pause_or_resume(True)), methods=["POST"]),
            Route("/api/v1/schedules/{sid}/resume", g(M, self.pause_or_resume(False)), methods=["POST"]),
        ]

    def schedules(self) -> Schedules:
        return self.api.ops().schedules

    async def load(self, sid: str) -> ScheduleRow:
        _no_nul(sid, "id")
        row = await self.schedules().get(sid)
        if row is None:
            raise ApiError(404, "not_found", f"no schedule {sid!r}")
        return row

    async def list(self, request: Request) -> Response:
        return ok(m.ScheduleList([schedule_out(r) for r in await self.schedules().list()]))

    async def create(self, request: Request) -> Response:
        req = _decode(await _body(request), m.ScheduleIn)
        for name in ("id", "job", "cron", "timezone", "missed", "dialect"):
            _bounded(getattr(req, name), name, MAX_NAME)
        if not req.id:
            raise ApiError(422, "invalid_schedule", f"id must be 1 to {MAX_NAME} characters", {"path": "$.id"})
        try:
            validate_id(req.id)
            spec = validate_spec(req.cron, req.every_seconds, req.timezone, req.missed, req.dialect)
        except ScheduleError as err:
            raise ApiError(422, "invalid_schedule", str(err), {"path": err.path}) from None
        try:  # the same checks as a submit (params_check included): refused now, not when it fires
            job, canonical = await self.api.ops().checked(req.job, _json.encode(req.parameters), req.version)
        except SubmitError as err:
            raise refusal(err) from None
        now = await self.schedules().now()
        row = row_for(req.id, job.name, req.version, canonical, spec, "api", now)
        if not await self.schedules().create(row):
            raise ApiError(409, "exists", f"schedule {req.id!r} exists; delete it first", {"status": "exists"})
        log.info("schedule created", schedule=req.id, job=job.name)
        return ok(schedule_out(await self.load(req.id)), 201)

    async def get(self, request: Request) -> Response:
        return ok(schedule_out(await self.load(request.path_params["sid"])))

    async def delete(self, request: Request) -> Response:
        row = await self.load(request.path_params["sid"])
        if not await self.schedules().delete_undeclared(row.id):
            raise declared_conflict(await self.load(row.id))
        log.info("schedule deleted", schedule=row.id)
        return ok(m.Deleted(row.id))

    def pause_or_resume(self, paused: bool) -> Handler:
        async def handler(request: Request) -> Response:
            row = await self.load(request.path_params["sid"])
            now = await self.schedules().now()
            await self.schedules().set_paused(row.id, paused, None if paused else next_after(spec_of(row), now))
            return ok(schedule_out(await self.load(row.id)))
        return handler
