"""An example job module for the chunkd image: CHUNKD_JOBS=acme_jobs.export.

Days between two dates, one chunk per day, summed by a reduction; it uses
python-dateutil (the third-party package the example Dockerfile adds)."""
from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import msgspec
from dateutil.parser import isoparse

from daemon.sdk import Context, Job, Sink


class DaysParams(msgspec.Struct, forbid_unknown_fields=True):
    first: str   # ISO date, e.g. 2026-01-01
    last: str


class Day(msgspec.Struct, array_like=True):
    iso: str


class Count(msgspec.Struct):
    days: int


job = Job("acme.days", version=1, params=DaysParams, gated=True)


@job.first_step(emits=Day)
async def plan(params: DaysParams, ctx: Context, sink: Sink[Day]) -> None:
    day, last = isoparse(params.first).date(), isoparse(params.last).date()
    while day <= last:
        sink.emit(Day(day.isoformat()))
        day += timedelta(days=1)


@job.step(consumes=Day, emits=Day)
async def touch(params: DaysParams, chunk: Day, ctx: Context, sink: Sink[Day]) -> None:
    sink.emit(chunk)  # the real work for one day goes here


@job.reduce(consumes=Day)
async def count(params: DaysParams, chunks: AsyncIterator[Day], ctx: Context) -> Count:
    n = 0
    async for _ in chunks:
        n += 1
    return Count(n)
