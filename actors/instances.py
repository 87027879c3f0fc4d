"""Submitting a job: validate everything first, then one transaction, then the hint."""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Annotated, Any, NamedTuple

import msgspec

from actors.job import Job, ParameterError
from actors.registry import Registry
from actors.submit_group import Create
from channels.base import Channel
from storage.codec import DataError, to_json
from storage.reader import Reader
from storage.store import Store
from storage.types import NewInstance


class SubmitError(ValueError):
    """Bad job name, version or parameters: nothing was written."""


class UnknownJob(SubmitError):
    pass


class BadParameters(SubmitError):
    def __init__(self, message: str, path: str | None) -> None:
        super().__init__(message)
        self.path = path


def error_path(e: Exception) -> str:
    """The JSON path (in the parameters) msgspec names in a validation error (`- at `$.rows``);
    an unknown field's own path; else `$`, the parameters as a whole (a check in the Struct's
    __post_init__ names no field to msgspec, but the answer still says where to look)."""
    text = str(e)
    m = re.search(r"- at `([^`]+)`", text)
    if m:
        return m.group(1)
    m = re.search(r"Object contains unknown field `([^`]+)`$", text)
    return f"$.{m.group(1)}" if m else "$"


def validate(registry: Registry, job_name: str, params_json: str | bytes, version: int | None = None) -> tuple[Job, str]:
    """Pure checks. Returns the job and the canonical parameters JSON (defaults filled in)."""
    try:
        job = registry.get(job_name, version)
    except LookupError as e:
        raise UnknownJob(str(e.args[0] if e.args else e)) from None
    return job, canonical_params(job, params_json)


def canonical_params(job: Job, params_json: str | bytes) -> str:
    """The job's parameters decoded (BadParameters naming the path) and encoded back with
    their defaults: what an instance stores."""
    try:
        params = job.decode_params(params_json)
    except DataError as e:
        raise BadParameters(f"job {job.name!r}: {e}", error_path(e)) from None
    canonical = to_json(params)
    if "\\u0000" in canonical:
        raise BadParameters(f"job {job.name!r}: parameters must not contain NUL characters", "$")
    return canonical


async def params_check(job: Job, canonical: str, db: Any) -> None:
    """The job's own params_check, if it has one, over `db` (ctx.db's reader): a refusal is
    BadParameters naming its path. The daemon's checker (`checked`) and a job author's test
    share it."""
    if job.check is None:
        return
    try:
        await job.check(job.decode_params(canonical), db)
    except ParameterError as e:
        raise BadParameters(f"job {job.name!r}: {e}", e.path) from None


class IdempotencyConflict(SubmitError):
    """The idempotency key was first used for a different request (job, version or parameters)."""
    def __init__(self, message: str, differences: list[str]) -> None:
        super().__init__(message)
        self.differences = differences


def _param_differences(first: Any, now: Any, path: str = "$") -> list[str]:
    if isinstance(first, dict) and isinstance(now, dict):
        out: list[str] = []
        for k in sorted(set(first) | set(now)):
            out += _param_differences(first.get(k, _MISSING), now.get(k, _MISSING), f"{path}.{k}")
        return out
    if first == now and type(first) is type(now):
        return []
    show = lambda v: "absent" if v is _MISSING else json.dumps(v)[:80]  # noqa: E731
    return [f"parameters {path}: first {show(first)}, now {show(now)}"]


_MISSING = object()


def idempotency_differences(row: dict[str, Any], job: str, version: int | None, canonical: str) -> list[str]:
    """What differs between the request that first used a key (the instance `row`) and this one."""
    diffs = []
    if row["job_name"] != job:
        diffs.append(f"job: first {row['job_name']!r}, now {job!r}")
    first = json.loads(row["idempotency_request"]) if row.get("idempotency_request") else None
    if first is not None and first.get("version") != version:
        diffs.append(f"version: first {first.get('version') or 'latest'}, now {version or 'latest'}")
    elif first is None and version is not None and row["job_version"] != version:
        diffs.append(f"version: first {row['job_version']}, now {version}")
    if row["job_name"] == job:
        diffs += _param_differences(json.loads(row["params"]), json.loads(canonical))
    return diffs


class Submitted(msgspec.Struct):
    instance_id: int
    created: bool
    job: str
    version: int


# Range checks, declared once as msgspec constraints: the HTTP request Structs use these
# types, so a value out of range is refused by msgspec's validation (a 422 naming the path).
Priority = Annotated[int, msgspec.Meta(ge=-3, le=3)]  # each level doubles the share of claims (0012/0013)
Version = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]


class BadRequest(SubmitError):
    """Text Postgres cannot hold (NUL): refused before the database sees it."""
    def __init__(self, message: str, parameter: str) -> None:
        super().__init__(message)
        self.parameter = parameter


class Submission(msgspec.Struct):
    """One instance to submit, as its caller said it (a request item, a CLI line)."""
    job: str
    params_json: str | bytes = b"{}"
    version: int | None = None
    idempotency_key: str | None = None
    priority: int = 0


class Result(NamedTuple):
    """One submission's outcome, in the order given: an instance, or why nothing was written."""
    submitted: Submitted | None
    error: SubmitError | None


async def checked(registry: Registry, job_name: str, params_json: str | bytes, version: int | None,
                  reader: Reader | None, dsn: str) -> tuple[Job, str]:
    """Everything an instance must pass before it exists, whoever creates it (a submit, a
    bulk submit, a schedule being created, a schedule firing): the job and version exist,
    the parameters decode, and the job's params_check accepts them. Returns the job and
    canonical JSON."""
    job, canonical = validate(registry, job_name, params_json, version)
    if job.check is not None:
        own = reader is None
        reader = reader or Reader(dsn, max_size=1)
        try:
            await params_check(job, canonical, reader)
        finally:
            if own:
                await reader.close()
    return job, canonical


def _no_nul(item: Submission) -> None:
    for name in ("job", "idempotency_key"):
        value = getattr(item, name)
        if value is not None and "\x00" in value:
            raise BadRequest(f"{name} must not contain NUL characters", name)


def _conflict(key: str, first: str, diffs: list[str]) -> IdempotencyConflict:
    """The one idempotency conflict message: `first` names what first used the key."""
    return IdempotencyConflict(f"idempotency key {key!r} was {first} with a different request: "
                               f"{'; '.join(diffs)}", diffs)


def _same_key_differences(first: Submission, first_canonical: str, now: Submission, canonical: str,
                          first_index: int) -> list[str]:
    return ([f"job: first {first.job!r}, now {now.job!r}"] if first.job != now.job else []) + \
           ([f"version: first {first.version or 'latest'}, now {now.version or 'latest'}"]
            if first.version != now.version else []) + \
           ([f"parameters differ from item {first_index}"]
            if first.job == now.job and first_canonical != canonical else [])


async def submit_many(store: Store, channel: Channel | None, registry: Registry, items: Sequence[Submission],
                      reader: Reader | None = None, create: Create | None = None,
                      positions: Sequence[int] | None = None) -> list[Result]:
    """Submits every item that passes its checks, all in ONE transaction, then publishes
    their partitions (after the commit: batch2 #5041 published first and stalled). One
    result per item, in order. A refused item writes nothing and affects no other; if the
    transaction fails (the database went away) none is created and the error is raised,
    so retrying with idempotency keys is safe. Two items with one idempotency key: the
    first decides, the second gets its instance if it asks for the same thing, else a
    conflict. A single submit is a batch of one (`submit`). `create`: what creates the
    accepted instances (default: the store's create_instances, in a transaction of their own;
    the API passes a SubmitGroup's, shared with concurrent submits, which publishes itself).
    `positions`: each item's number in the caller's request, which messages name (default:
    its index here; a bulk request leaves out the items it refused itself)."""
    at = positions if positions is not None else range(len(items))
    results: list[Result | None] = [None] * len(items)
    accepted: list[tuple[int, NewInstance, str]] = []  # (index, new instance, canonical parameters)
    first_with_key: dict[str, int] = {}
    same_key: list[tuple[int, int, str]] = []  # (index, index of the first item with its key, canonical)
    for i, item in enumerate(items):
        try:
            _no_nul(item)
            job, canonical = await checked(registry, item.job, item.params_json, item.version, reader, store.dsn)
        except SubmitError as e:
            results[i] = Result(None, e)
            continue
        key = item.idempotency_key
        if key is not None and key in first_with_key:
            same_key.append((i, first_with_key[key], canonical))
            continue
        if key is not None:
            first_with_key[key] = i
        accepted.append((i, NewInstance(job.name, job.version, canonical, job.gated, key,
                                        json.dumps({"version": item.version}), job.steps[0].max_attempts,
                                        item.priority), canonical))
    created, partitions = await (create or store.create_instances)([a[1] for a in accepted]) if accepted \
        else ([], set())
    for (i, new, canonical), res in zip(accepted, created):
        if not res.created and new.idempotency_key is not None:  # the key existed before: same request?
            row = await store.get_instance(res.instance_id)
            diffs = idempotency_differences(row, items[i].job, items[i].version, canonical) if row else []
            if diffs:
                results[i] = Result(None, _conflict(new.idempotency_key, f"first used for instance "
                                                    f"{res.instance_id}", diffs))
                continue
        results[i] = Result(Submitted(res.instance_id, res.created, new.job_name, new.version), None)
    canonicals = {i: c for i, _, c in accepted}
    for i, first, canonical in same_key:
        key = items[i].idempotency_key
        assert key is not None
        base = results[first]
        diffs = _same_key_differences(items[first], canonicals.get(first, ""), items[i], canonical, at[first])
        if diffs:
            results[i] = Result(None, _conflict(key, f"used by item {at[first]} of this batch", diffs))
        elif base is None or base.submitted is None:
            results[i] = Result(None, IdempotencyConflict(
                f"idempotency key {key!r}: item {at[first]} of this batch was refused", []))
        else:
            results[i] = Result(msgspec.structs.replace(base.submitted, created=False), None)
    if partitions and channel is not None:
        await channel.publish(sorted(partitions))
    return [r for r in results if r is not None]


async def submit(store: Store, channel: Channel | None, registry: Registry, job_name: str,
                 params_json: str | bytes, *, version: int | None = None,
                 idempotency_key: str | None = None, reader: Reader | None = None, priority: int = 0,
                 create: Create | None = None) -> Submitted:
    """One submission: a batch of one. Raises its SubmitError."""
    (res,) = await submit_many(store, channel, registry,
                               [Submission(job_name, params_json, version, idempotency_key, priority)], reader,
                               create)
    if res.error is not None:
        raise res.error
    assert res.submitted is not None
    return res.submitted
