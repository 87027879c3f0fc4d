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
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from storage.bulk import NewInstance, create_instances

from . import api_models as m
from .limits import MAX_IDEMPOTENCY_KEY, MAX_JSON_DEPTH, MAX_NAME, json_depth
from .submit import BadParameters, ParameterError, UnknownJob, idempotency_differences, validate

if TYPE_CHECKING:
    from .node import Node

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


async def submit_batch(node: "Node", items: list[m.SubmitRequest]) -> BatchResult:
    from .api import _json  # the API's encoder (parameters as the single submit encodes them)
    e = node.engine
    assert e is not None
    results: list[BatchItem | None] = [None] * len(items)
    accepted: list[tuple[int, NewInstance, Any]] = []  # (index, new instance, job)
    first_with_key: dict[str, int] = {}
    same_key_as: dict[int, int] = {}  # index -> index of the first item with its key
    for i, req in enumerate(items):
        try:
            if req.version is not None and not 1 <= req.version <= 2**31 - 1:
                raise _Refused(400, "bad_request", "version must be a positive integer")
            if not -3 <= req.priority <= 3:
                raise _Refused(400, "bad_request", "priority must be between -3 and 3")
            _text(req.job, "job", MAX_NAME)
            _text(req.idempotency_key, "idempotency_key", MAX_IDEMPOTENCY_KEY)
            if json_depth(req.parameters) > MAX_JSON_DEPTH:
                raise _Refused(422, "invalid_parameters", f"parameters are nested more than {MAX_JSON_DEPTH} "
                               "levels deep", {"path": "$.parameters", "limit": MAX_JSON_DEPTH})
            try:
                job, canonical = validate(node.registry, req.job, _json.encode(req.parameters), req.version)
                if job.check is not None:
                    await job.check(job.decode_params(canonical), e.reader)
            except UnknownJob as err:
                raise _Refused(404, "unknown_job", str(err)) from None
            except BadParameters as err:
                raise _Refused(422, "invalid_parameters", str(err), {"path": err.path} if err.path else None) from None
            except ParameterError as err:
                raise _Refused(422, "invalid_parameters", f"job {job.name!r}: {err}",
                               {"path": err.path} if err.path else None) from None
        except _Refused as r:
            results[i] = BatchItem(i, r.item[0], error=r.item[1])
            continue
        key = req.idempotency_key
        request = json.dumps({"version": req.version})
        if key is not None and key in first_with_key:
            same_key_as[i] = first_with_key[key]
            continue
        if key is not None:
            first_with_key[key] = i
        accepted.append((i, NewInstance(job.name, job.version, canonical, job.gated, key, request,
                                        job.steps[0].max_attempts, req.priority), (req, canonical)))
    created, partitions = await create_instances(e.store, [a[1] for a in accepted])
    for (i, new, (req, canonical)), res in zip(accepted, created):
        if not res.created:  # the key existed before this batch: the single submit's conflict rule
            row = await e.store.get_instance(res.instance_id)
            diffs = idempotency_differences(row, req.job, req.version, canonical) if row is not None else []
            if diffs:
                results[i] = BatchItem(i, 409, error=m.ErrorDetail(
                    "idempotency_conflict", f"idempotency key {new.idempotency_key!r} was first used for instance "
                    f"{res.instance_id} with a different request: {'; '.join(diffs)}", {"differences": diffs}))
                continue
        results[i] = BatchItem(i, 201 if res.created else 200, id=res.instance_id)
    by_index = {a[0]: a for a in accepted}
    for i, first in same_key_as.items():
        base = results[first]
        assert base is not None
        req, (freq, fcanon) = items[i], by_index[first][2]
        _, canonical = validate(node.registry, req.job, _json.encode(req.parameters), req.version)
        diffs = ([f"job: first {freq.job!r}, now {req.job!r}"] if freq.job != req.job else []) + \
                ([f"version: first {freq.version or 'latest'}, now {req.version or 'latest'}"]
                 if freq.version != req.version else []) + \
                ([f"parameters differ from item {first}"] if freq.job == req.job and fcanon != canonical else [])
        if diffs or base.id is None:
            results[i] = BatchItem(i, 409, error=m.ErrorDetail(
                "idempotency_conflict", f"idempotency key {req.idempotency_key!r} was used by item {first} "
                f"of this batch with a different request: {'; '.join(diffs)}" if diffs else
                f"idempotency key {req.idempotency_key!r}: item {first} of this batch was refused",
                {"differences": diffs}))
        else:
            results[i] = BatchItem(i, 200, id=base.id)
    if partitions:
        await e.channel.publish(sorted(partitions))  # after the commit
    done = [r for r in results if r is not None]
    return BatchResult(done, created=sum(r.status == 201 for r in done), existing=sum(r.status == 200 for r in done),
                       refused=sum(r.status >= 400 for r in done))


def route(node: "Node"):  # type: ignore[no-untyped-def]
    """The handler of POST /api/v1/instances:batch (wired in daemon/api.py)."""
    from .api import ApiError, _body, _decode, ok

    async def create_batch(request: Request) -> Response:
        if node.engine is None:
            raise ApiError(503, "unavailable", "the daemon is starting", headers={"Retry-After": "1"})
        req = _decode(await _body(request), BatchRequest)
        if not 1 <= len(req.items) <= MAX_BATCH:
            raise ApiError(400, "bad_request", f"items must hold 1 to {MAX_BATCH} submissions, not {len(req.items)}")
        return ok(await submit_batch(node, req.items))
    return create_batch


def cli_submit_batch(client: Any, path: str, as_json: bool) -> int:
    """`chunkd submit-batch FILE`: FILE (or - for stdin) holds one submit body per line (JSON
    Lines) or a JSON array; sent in batches of MAX_BATCH. Exit 1 if any item was refused."""
    import sys
    text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    stripped = text.lstrip()
    items = json.loads(text) if stripped.startswith("[") else [json.loads(line) for line in text.splitlines()
                                                               if line.strip()]
    refused = created = existing = 0
    for start in range(0, len(items), MAX_BATCH):
        res = client.call("POST", "/api/v1/instances:batch", body={"items": items[start:start + MAX_BATCH]})
        for r in res["results"]:
            r["index"] += start
            if as_json:
                print(json.dumps(r))
            elif r["status"] >= 400:
                print(f"item {r['index']}: {r['status']} {r['error']['code']}: {r['error']['message']}",
                      file=sys.stderr)
        created, existing, refused = created + res["created"], existing + res["existing"], refused + res["refused"]
    if not as_json:
        print(f"{created} created, {existing} existing, {refused} refused")
    return 1 if refused else 0
