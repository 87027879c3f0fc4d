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

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from actors.instances import Result, Submission
from daemon.http import models as m
from daemon.http.auth import Scope
from daemon.http.common import Api, ApiError, _body, _decode, _json, ok, refusal

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


class _Items(msgspec.Struct, forbid_unknown_fields=True):
    """The body as read: each item is decoded on its own (`_item`), so that one item's value
    out of range refuses that item, not the batch."""
    items: list[msgspec.Raw]


def _item(i: int, raw: msgspec.Raw) -> m.SubmitRequest | ApiError:
    """An item as the single submit decodes its body: a 422 naming the path is the item's
    answer; a malformed item (a 400) is the whole request's, as when the batch was one Struct,
    and its message says which item, whether or not msgspec named a path inside it."""
    try:
        return _decode(bytes(raw), m.SubmitRequest)  # type: ignore[no-any-return]
    except ApiError as err:
        if err.status == 400:
            where = f"- at `$.items[{i}]"
            err.message = (err.message.replace("- at `$", where) if "- at `$" in err.message
                           else f"{err.message} {where}`")
            raise
        return err


def _answer(i: int, res: Result) -> BatchItem:
    if res.submitted is not None:
        return BatchItem(i, 201 if res.submitted.created else 200, id=res.submitted.instance_id)
    err = refusal(res.error)  # type: ignore[arg-type]
    return BatchItem(i, err.status, error=m.ErrorDetail(err.code, err.message, err.details))


async def submit_batch(api: Api, raw_items: list[msgspec.Raw]) -> BatchResult:
    """One result per item, in order: the submit service (actors.instances.submit_many)
    answers those that decode; each refusal is the single submit's error."""
    decoded = [_item(i, raw) for i, raw in enumerate(raw_items)]
    ok_items = [(i, d) for i, d in enumerate(decoded) if isinstance(d, m.SubmitRequest)]
    results = await api.ops().submit_many([
        Submission(d.job, _json.encode(d.parameters), d.version, d.idempotency_key, d.priority) for _, d in ok_items],
        positions=[i for i, _ in ok_items])
    done: list[BatchItem] = [BatchItem(i, d.status, error=m.ErrorDetail(d.code, d.message, d.details))
                             for i, d in enumerate(decoded) if isinstance(d, ApiError)]
    done += [_answer(i, res) for (i, _), res in zip(ok_items, results)]
    done.sort(key=lambda r: r.index)
    return BatchResult(done, created=sum(r.status == 201 for r in done), existing=sum(r.status == 200 for r in done),
                       refused=sum(r.status >= 400 for r in done))


class BulkRoutes:
    def __init__(self, api: Api) -> None:
        self.api = api

    def routes(self) -> list[Route]:
        return [Route("/api/v1/instances:batch", self.api.guarded(Scope.MANAGE, self.create), methods=["POST"])]

    async def create(self, request: Request) -> Response:
        self.api.ops()  # 503 while the daemon starts, before reading the body
        req = _decode(await _body(request), _Items)
        if not 1 <= len(req.items) <= MAX_BATCH:
            raise ApiError(400, "bad_request", f"items must hold 1 to {MAX_BATCH} submissions, not {len(req.items)}")
        return ok(await submit_batch(self.api, req.items))
