"""Bulk submit: `POST /api/v1/instances:batch` and `chunkd submit-batch`.

Body: {"items": [<the body of POST /api/v1/instances>, ...]} (1..MAX_BATCH items).
Answer (200 whenever the body itself is valid): {"results": [...], "created", "existing",
"refused"}, one result per item in order: {"index", "status", "id"} with status 201 (created)
or 200 (its idempotency key named an existing instance), or {"index", "status", "error"} with
the status and error the single submit would have answered (400, 404, 409, 422).

All-or-nothing PER ITEM: an item is created whole (instance, first chunk, counters) or not at
all, and a refused item never affects the others. Every accepted item is written in ONE
transaction, so either all accepted items are created or, if that transaction fails (the
database went away), none is and the request fails as a whole (5xx/503): retrying it with
idempotency keys is then safe. Two items with the same idempotency key: the first decides;
the second answers with the same instance (200) if it asks for the same thing, else 409.
"""
from __future__ import annotations

import json
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from actors.instances import BadParameters, UnknownJob, idempotency_differences
from daemon.http import models as m
from daemon.http.auth import Scope
from daemon.http.common import Api, ApiError, _body, _decode, _json, ok
from daemon.http.limits import MAX_IDEMPOTENCY_KEY, MAX_JSON_DEPTH, MAX_NAME, json_depth
from storage.types import NewInstance

MAX_BATCH = 1000


class BatchRequest(msgspec.Struct, forbid_unknown_fields=True):
    items: list[m.SubmitRequest]


class BatchItem(msgspec.Struct, omit_defaults=True):
    index: int
    status: int
    id: int | None = None
    error: m.ErrorDetail | None = None


class BatchResult(msgspec.Struct):
    results: list[BatchItem]
    created: int
    existing: int
    refused: int


SCHEMA_TYPES = (BatchRequest, BatchResult)


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.item = (status, m.ErrorDetail(code, message, details))


def _text(value: str | None, name: str, limit: int) -> None:
    if value is not None and "\x00" in value:
        raise _Refused(400, "bad_request", f"{name} must not contain NUL characters", {"parameter": name})
    if value is not None and len(value) > limit:
        raise _Refused(422, "too_long", f"{name} is {len(value)} characters; the limit is {limit}",
                       {"path": f"$.{name}", "limit": limit})


async def submit_batch(api: Api, items: list[m.SubmitRequest]) -> BatchResult:
    ops = api.ops()
    results: list[BatchItem | None] = [None] * len(items)
    accepted: list[tuple[int, NewInstance, Any]] = []  # (index, new instance, job)
    first_with_key: dict[str, int] = {}
    same_key_as: dict[int, int] = {}  # index -> index of the first item with its key
    dup_canonical: dict[int, str] = {}  # index -> its canonical parameters (checked like the rest)
    for i, req in enumerate(items):
        try:
            if req.version is not None and not 1 <= req.version <= 2**31 - 1:
                raise _Refused(400, "bad_request", "version must be a positive integer")
            if not -3 <= req.priority <= 3:  # as the single submit answers
                raise _Refused(422, "out_of_range", f"priority must be between -3 and 3, got {req.priority}",
                               {"path": "$.priority"})
            _text(req.job, "job", MAX_NAME)
            _text(req.idempotency_key, "idempotency_key", MAX_IDEMPOTENCY_KEY)
            if json_depth(req.parameters) > MAX_JSON_DEPTH:
                raise _Refused(422, "invalid_parameters", f"parameters are nested more than {MAX_JSON_DEPTH} "
                               "levels deep", {"path": "$.parameters", "limit": MAX_JSON_DEPTH})
            try:  # the single submit's checks, params_check included (actors.instances.checked)
                job, canonical = await ops.checked(req.job, _json.encode(req.parameters), req.version)
            except UnknownJob as err:
                raise _Refused(404, "unknown_job", str(err)) from None
            except BadParameters as err:
                raise _Refused(422, "invalid_parameters", str(err), {"path": err.path} if err.path else None) from None
        except _Refused as r:
            results[i] = BatchItem(i, r.item[0], error=r.item[1])
            continue
        key = req.idempotency_key
        request = json.dumps({"version": req.version})
        if key is not None and key in first_with_key:
            same_key_as[i] = first_with_key[key]
            dup_canonical[i] = canonical
            continue
        if key is not None:
            first_with_key[key] = i
        accepted.append((i, NewInstance(job.name, job.version, canonical, job.gated, key, request,
                                        job.steps[0].max_attempts, req.priority), (req, canonical)))
    created, partitions = await ops.create_instances([a[1] for a in accepted])
    for (i, new, (req, canonical)), res in zip(accepted, created):
        if not res.created:  # the key existed before this batch: the single submit's conflict rule
            row = await ops.reads.get_instance(res.instance_id)
            diffs = idempotency_differences(row, req.job, req.version, canonical) if row is not None else []
            if diffs:
                results[i] = BatchItem(i, 409, error=m.ErrorDetail(
                    "idempotency_conflict", f"idempotency key {new.idempotency_key!r} was first used for instance "
                    f"{res.instance_id} with a different request: {'; '.join(diffs)}", {"differences": diffs}))
                continue
        results[i] = BatchItem(i, 201 if res.created else 200, id=res.instance_id)
    by_index = {a[0]: a for a in accepted}
    for i, first in same_key_as.items():
        results[i] = _same_key(i, first, items[i], results[first], by_index[first][2], dup_canonical[i])
    if partitions:
        await ops.publish(partitions)  # after the commit
    done = [r for r in results if r is not None]
    return BatchResult(done, created=sum(r.status == 201 for r in done), existing=sum(r.status == 200 for r in done),
                       refused=sum(r.status >= 400 for r in done))


def _same_key(i: int, first: int, req: m.SubmitRequest, base: BatchItem | None, first_req: tuple[Any, str],
              canonical: str) -> BatchItem:
    """An item whose idempotency key an earlier item of the batch used: the same instance if
    it asks for the same thing (200), else 409."""
    assert base is not None
    freq, fcanon = first_req
    diffs = ([f"job: first {freq.job!r}, now {req.job!r}"] if freq.job != req.job else []) + \
            ([f"version: first {freq.version or 'latest'}, now {req.version or 'latest'}"]
             if freq.version != req.version else []) + \
            ([f"parameters differ from item {first}"] if freq.job == req.job and fcanon != canonical else [])
    if diffs or base.id is None:
        return BatchItem(i, 409, error=m.ErrorDetail(
            "idempotency_conflict", f"idempotency key {req.idempotency_key!r} was used by item {first} "
            f"of this batch with a different request: {'; '.join(diffs)}" if diffs else
            f"idempotency key {req.idempotency_key!r}: item {first} of this batch was refused",
            {"differences": diffs}))
    return BatchItem(i, 200, id=base.id)


class BulkRoutes:
    def __init__(self, api: Api) -> None:
        self.api = api

    def routes(self) -> list[Route]:
        return [Route("/api/v1/instances:batch", self.api.guarded(Scope.MANAGE, self.create), methods=["POST"])]

    async def create(self, request: Request) -> Response:
        self.api.ops()  # 503 while the daemon starts, before reading the body
        req = _decode(await _body(request), BatchRequest)
        if not 1 <= len(req.items) <= MAX_BATCH:
            raise ApiError(400, "bad_request", f"items must hold 1 to {MAX_BATCH} submissions, not {len(req.items)}")
        return ok(await submit_batch(self.api, req.items))
