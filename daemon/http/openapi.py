"""The OpenAPI 3.1 document for /api/v1, built from the msgspec bodies the server uses."""
from __future__ import annotations

from typing import Any

import msgspec

from daemon.http import models as m
from storage.states import C, I

_REF = "#/components/schemas/{name}"


def _ref(tp: type) -> dict[str, str]:
    return {"$ref": _REF.format(name=tp.__name__)}


def _json(tp: type) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": _ref(tp)}}}


def _errors(*codes: int) -> dict[str, Any]:
    words = {400: "Bad request", 401: "Missing or unknown token", 403: "Token lacks the scope, or a cross-origin request",
             404: "Not found", 409: "Conflict: an illegal state change, an idempotency key first used for another request, "
                                       "or a schedule declared in code",
             413: "Body too large",
             415: "A state-changing request without Content-Type: application/json (CSRF guard)",
             421: "Host is not this daemon's (DNS-rebinding guard; see CHUNKD_API_ALLOWED_HOSTS)",
             422: "Parameters fail the job's schema, or a field is out of range (details.path)",
             429: "Too many submissions in progress; see Retry-After",
             503: "Not ready"}
    return {str(c): {"description": words[c], **_json(m.ErrorBody)} for c in codes}


def _q(name: str, schema: dict[str, Any], desc: str, *, array: bool = False) -> dict[str, Any]:
    p: dict[str, Any] = {"name": name, "in": "query", "required": False, "description": desc,
                         "schema": {"type": "array", "items": schema} if array else schema}
    if array:
        p["style"], p["explode"] = "form", True
    return p


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
_AUTH = _errors(401, 403)
_SID = {"name": "sid", "in": "path", "required": True, "schema": {"type": "string"}}


_MODULE = {"name": "module_id", "in": "path", "required": True, "description": "accepted and echoed (chunkd has one "
           "module)", "schema": {"type": "string", "minLength": 1, "maxLength": 200}}
_EXEC = {"name": "execution_id", "in": "path", "required": True, "description": "the chunkd instance id",
         "schema": {"type": "integer", "minimum": 1}}


def _seed_paths(op: Any) -> dict[str, Any]:
    """Smile CDR's Batch Job Endpoint and hapi-fhir-groovy's /control/jobs (daemon/http/seed_routes.py)."""
    from daemon.http import seed_routes as seeds

    def json_of(tp: type, what: str) -> dict[str, Any]:
        return {"200": {"description": what, **_json(tp)}}
    hapi_list = {"200": {"description": "HAPI FHIR batch2 JobInstance objects, newest first", "content": {
        "application/json": {"schema": {"type": "array", "items": _ref(seeds.HapiJobInstance)}}}}}
    status = {"type": "string", "description": "case-insensitive", "examples": [s.value for s in I]}
    return {
        "/batch-job/{module_id}": {"get": op("Smile CDR: batch job names", json_of(seeds.SmileJobNames, "Job names"),
                                             400, params=[_MODULE])},
        "/batch-job/{module_id}/{job_name}": {"get": op(
            "Smile CDR: instances of a job, each with its one execution",
            json_of(seeds.SmileJobInstances, "Job instances"), 400, 404, params=[
                _MODULE, {"name": "job_name", "in": "path", "required": True, "schema": {"type": "string"}},
                _q("executionUUID", {"type": "string", "format": "uuid"}, "only this execution"),
                _q("start", {"type": "integer", "minimum": 0, "maximum": 10_000_000}, "offset"),
                _q("count", {"type": "integer", "minimum": 1, "maximum": 500}, "page size")])},
        "/batch-job/{module_id}/{execution_id}/stop": {"post": op(
            "Smile CDR: stop (force=true also cancels running steps)", json_of(seeds.SmileOperation, "Stopped"),
            400, 404, 409, params=[_MODULE, _EXEC, _q("force", {"type": "boolean"}, "default false")])},
        "/batch-job/{module_id}/{execution_id}/restart": {"post": op(
            "Smile CDR: restart a FAILED or CANCELLED execution (resumed in place: the new execution id is the "
            "same)", json_of(seeds.SmileOperation, "Restarted"), 400, 404, 409, params=[_MODULE, _EXEC])},
        "/control/jobs": {
            "get": op("hapi-fhir-groovy: job instances", hapi_list, 400, params=[
                _q("pageStart", {"type": "integer", "minimum": 0, "maximum": 1_000_000}, "page index"),
                _q("batchSize", {"type": "integer", "minimum": 1, "maximum": 500}, "page size"),
                _q("jobStatus", status, "only this status")]),
            "delete": op("hapi-fhir-groovy: cancel an instance",
                         json_of(seeds.HapiOperationResult, "What happened (success false: nothing to cancel)"),
                         400, 404, params=[{**_q("instanceId", {"type": "string"}, "the instance id"),
                                            "required": True}]),
        },
    }


# One long literal on purpose: the document reads top to bottom as the spec it is.
def document(secured: bool) -> dict[str, Any]:
    from daemon.http import seed_routes as seeds
    seed_types = (seeds.SmileJobNames, seeds.SmileJobInstances, seeds.SmileOperation, seeds.HapiJobInstance,
                  seeds.HapiOperationResult)
    from daemon.http import bulk
    _, components = msgspec.json.schema_components((*m.SCHEMA_TYPES, *seed_types, *bulk.SCHEMA_TYPES),
                                                   ref_template=_REF)
    security = [{"bearer": []}] if secured else []

    def op(summary: str, ok: dict[str, Any], *errors: int, params: list[dict[str, Any]] | None = None,
           body: type | None = None) -> dict[str, Any]:
        o: dict[str, Any] = {"summary": summary, "security": security, "parameters": params or [],
                             "responses": {**ok, **_errors(*errors), **(_AUTH if secured else {})}}
        if body is not None:
            o["requestBody"] = {"required": True, **_json(body)}
        return o

    inst = {"200": {"description": "The instance", **_json(m.Instance)}}
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "chunkd control API", "version": "1"},
        "paths": {
            "/api/v1/jobs": {"get": op("Job definitions", {"200": {"description": "Jobs", **_json(m.JobList)}})},
            "/api/v1/instances": {
                "post": op("Submit an instance",
                           {"201": {"description": "Created", **_json(m.Instance)},
                            "200": {"description": "Existing instance (same idempotency key, same request)",
                                    **_json(m.Instance)}},
                           400, 404, 409, 413, 422, 429, body=m.SubmitRequest),
                "get": op("List instances, newest first", {"200": {"description": "A page", **_json(m.InstanceList)}},
                          400, params=[
                              _q("job", {"type": "string"}, "job name"),
                              _q("status", {"type": "string", "enum": [s.value for s in I]}, "status", array=True),
                              _q("created_after", {"type": "string", "format": "date-time"}, "inclusive"),
                              _q("created_before", {"type": "string", "format": "date-time"}, "exclusive"),
                              _q("start", {"type": "integer", "minimum": 0, "maximum": 10_000_000}, "offset"),
                              _q("count", {"type": "integer", "minimum": 1, "maximum": 500}, "page size")]),
            },
            "/api/v1/instances/{id}": {"get": op("One instance with per-step counts", inst, 404, params=[_ID])},
            "/api/v1/instances/{id}/chunks": {"get": op(
                "Chunks of an instance", {"200": {"description": "A page", **_json(m.ChunkList)}}, 400, 404,
                params=[_ID,
                        _q("step", {"type": "integer", "minimum": 0, "maximum": 32767}, "step index"),
                        _q("status", {"type": "string", "enum": list(C.__members__)}, "chunk status", array=True),
                        _q("data", {"type": "boolean"}, "include the decoded chunk data"),
                        _q("errors", {"type": "boolean"}, "only chunks with an error message"),
                        _q("start", {"type": "integer", "minimum": 0, "maximum": 100_000_000}, "offset"),
                        _q("count", {"type": "integer", "minimum": 1, "maximum": 500}, "page size")])},
            "/api/v1/instances/{id}/throughput": {"get": op(
                "Completed chunks per time bucket (about 60 buckets over the instance's life)",
                {"200": {"description": "The series", **_json(m.Throughput)}}, 404, params=[_ID])},
            "/api/v1/cluster": {"get": op(
                "Daemons seen in the last minute: partitions, chunks in flight, the maintenance leader",
                {"200": {"description": "The daemons", **_json(m.Cluster)}})},
            "/api/v1/whoami": {"get": op(
                "The scope of the presented token", {"200": {"description": "The scope", **_json(m.WhoAmI)}})},
            "/api/v1/instances/{id}/cancel": {"post": op("Cancel", inst, 404, 409, params=[_ID])},
            "/api/v1/instances/{id}/stop": {"post": op(
                "Force-stop (running chunks are cancelled too)", inst, 400, 404, 409,
                params=[_ID, {**_q("force", {"type": "boolean"}, "must be true"), "required": True}])},
            "/api/v1/instances/{id}/restart": {"post": op(
                "Restart a FAILED or CANCELLED instance; completed work is not redone", inst, 404, 409,
                params=[_ID])},
            "/api/v1/schedules": {
                "get": op("Schedules", {"200": {"description": "All schedules", **_json(m.ScheduleList)}}),
                "post": op("Create a schedule", {"201": {"description": "Created", **_json(m.Schedule)}},
                           400, 404, 409, 413, 422, body=m.ScheduleIn),
            },
            "/api/v1/schedules/{sid}": {
                "get": op("One schedule", {"200": {"description": "The schedule", **_json(m.Schedule)}}, 400, 404,
                          params=[_SID]),
                "delete": op("Delete a schedule (409 for one declared in a job module or built in, unless "
                             "orphaned: remove it from the code, or pause it)",
                             {"200": {"description": "Deleted", **_json(m.Deleted)}}, 400, 404, 409, params=[_SID]),
            },
            "/api/v1/schedules/{sid}/pause": {"post": op(
                "Pause", {"200": {"description": "The schedule", **_json(m.Schedule)}}, 400, 404, params=[_SID])},
            "/api/v1/schedules/{sid}/resume": {"post": op(
                "Resume (from the next occurrence; missed ones are not replayed)",
                {"200": {"description": "The schedule", **_json(m.Schedule)}}, 400, 404, params=[_SID])},
            **_seed_paths(op),
            "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {
                "200": {"description": "Alive", **_json(m.Health)}, "503": {"description": "Wedged", **_json(m.Health)}}}},
            "/readyz": {"get": {"summary": "Readiness", "security": [], "responses": {
                "200": {"description": "Ready", **_json(m.Health)}, "503": {"description": "Not ready", **_json(m.Health)}}}},
        },
        "components": {"schemas": components},
    }
    doc["paths"]["/api/v1/instances:batch"] = {"post": op(
        "Submit many instances: one result per item (see daemon/http/bulk.py)",
        {"200": {"description": "One result per item, in order", **_json(bulk.BatchResult)}},
        400, 413, 503, body=bulk.BatchRequest)}
    for path, ops in doc["paths"].items():  # the request guard (daemon/http/guard.py) answers for every route
        if path in ("/healthz", "/readyz"):
            continue
        for method, o in ops.items():
            extra = (403, 415, 421) if method in ("post", "put", "patch", "delete") else (421,)
            o["responses"] = {**_errors(*extra), **o["responses"]}
            if 403 in extra and "403" in o["responses"] and not secured:
                o["responses"]["403"]["description"] = "Cross-origin request refused (CSRF guard)"
    if secured:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc
