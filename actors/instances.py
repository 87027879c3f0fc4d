"""Submitting a job: validate everything first, then one transaction, then the hint."""
from __future__ import annotations

import json
import re
from typing import Any

import msgspec

from actors.job import Job, ParameterError
from actors.registry import Registry
from channels.base import Channel
from storage.codec import DataError, to_json
from storage.reader import Reader
from storage.store import Store


class SubmitError(ValueError):
    """Bad job name, version or parameters: nothing was written."""


class UnknownJob(SubmitError):
    pass


class BadParameters(SubmitError):
    def __init__(self, message: str, path: str | None) -> None:
        super().__init__(message)
        self.path = path


def error_path(e: Exception) -> str | None:
    """The JSON path msgspec names in a validation error (`- at `$.rows``), if any."""
    m = re.search(r"- at `([^`]+)`", str(e))
    return m.group(1) if m else None


def validate(registry: Registry, job_name: str, params_json: str | bytes, version: int | None = None) -> tuple[Job, str]:
    """Pure checks. Returns the job and the canonical parameters JSON (defaults filled in)."""
    try:
        job = registry.get(job_name, version)
    except LookupError as e:
        raise UnknownJob(str(e.args[0] if e.args else e)) from None
    try:
        params = job.decode_params(params_json)
    except DataError as e:
        raise BadParameters(f"job {job.name!r}: {e}", error_path(e)) from None
    canonical = to_json(params)
    if "\\u0000" in canonical:
        raise BadParameters(f"job {job.name!r}: parameters must not contain NUL characters", None)
    return job, canonical


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
            await job.check(job.decode_params(canonical), reader)
        except ParameterError as e:
            raise BadParameters(f"job {job.name!r}: {e}", e.path) from None
        finally:
            if own:
                await reader.close()
    return job, canonical


async def submit(store: Store, channel: Channel | None, registry: Registry, job_name: str,
                 params_json: str | bytes, *, version: int | None = None,
                 idempotency_key: str | None = None, reader: Reader | None = None, priority: int = 0) -> Submitted:
    job, canonical = await checked(registry, job_name, params_json, version, reader, store.dsn)
    first = job.steps[0]
    iid, created, part = await store.create_instance(job.name, job.version, canonical, job.gated,
                                                     idempotency_key, b"", first.max_attempts,
                                                     json.dumps({"version": version}), priority=priority)
    if not created and idempotency_key is not None:
        row = await store.get_instance(iid)
        diffs = idempotency_differences(row, job_name, version, canonical) if row is not None else []
        if diffs:
            raise IdempotencyConflict(f"idempotency key {idempotency_key!r} was first used for instance {iid} with "
                                      f"a different request: {'; '.join(diffs)}", diffs)
    if part is not None and channel is not None:
        await channel.publish([part])  # after the commit: batch2 #5041 published first and stalled
    return Submitted(iid, created, job.name, job.version)
