"""Submitting a job: validate everything first, then one transaction, then the hint."""
from __future__ import annotations

import re

import msgspec

from channels.base import Channel
from storage.codec import DataError, to_json
from storage.store import Store

from storage.reader import Reader

from .registry import Registry
from .sdk import Job, ParameterError


class SubmitError(ValueError):
    """Bad job name, version or parameters: nothing was written."""


class UnknownJob(SubmitError):
    pass


class BadParameters(SubmitError):
    def __init__(self, message: str, path: str | None) -> None:
        super().__init__(message)
        self.path = path


def validate(registry: Registry, job_name: str, params_json: str | bytes, version: int | None = None) -> tuple[Job, str]:
    """Pure checks. Returns the job and the canonical parameters JSON (defaults filled in)."""
    try:
        job = registry.get(job_name, version)
    except LookupError as e:
        raise UnknownJob(str(e.args[0] if e.args else e)) from None
    try:
        params = job.decode_params(params_json)
    except DataError as e:
        m = re.search(r"- at `([^`]+)`", str(e))
        raise BadParameters(f"job {job.name!r}: {e}", m.group(1) if m else None) from None
    canonical = to_json(params)
    if "\\u0000" in canonical:
        raise BadParameters(f"job {job.name!r}: parameters must not contain NUL characters", None)
    return job, canonical


class Submitted(msgspec.Struct):
    instance_id: int
    created: bool
    job: str
    version: int


async def submit(store: Store, channel: Channel | None, registry: Registry, job_name: str,
                 params_json: str | bytes, *, version: int | None = None,
                 idempotency_key: str | None = None, reader: Reader | None = None) -> Submitted:
    job, canonical = validate(registry, job_name, params_json, version)
    if job.check is not None:
        own = reader is None
        reader = reader or Reader(store.dsn, max_size=1)
        try:
            await job.check(job.decode_params(canonical), reader)
        except ParameterError as e:
            raise BadParameters(f"job {job.name!r}: {e}", e.path) from None
        finally:
            if own:
                await reader.close()
    first = job.steps[0]
    iid, created, part = await store.create_instance(job.name, job.version, canonical, job.gated,
                                                     idempotency_key, b"", first.max_attempts)
    if part is not None and channel is not None:
        await channel.publish([part])  # after the commit: batch2 #5041 published first and stalled
    return Submitted(iid, created, job.name, job.version)
