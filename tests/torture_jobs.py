"""Jobs for the torture test (tests/chaos/torture.py), loaded with CHUNKD_JOBS=tests.torture_jobs.

Every job has the same shape, so the harness can say what its report must be from its
parameters alone: a first step emits `chunks` items 0..chunks-1; a work step turns item
n into Val(n, n + 1) after `step_ms`; a reduction reports {"count": chunks, "total":
chunks * (chunks + 1) / 2}. They differ in what the torture is about:

- the work step is `async def` or a plain function (a worker thread);
- transactional or not: a transactional work step writes (instance, n) into
  `torture_effect` through ctx.tx, so the harness can count each input's effect (no
  unique key on purpose: a duplicate must be visible, not a refused insert);
- how the step reacts once `ctx.cancelled` is set (params.on_cancel): "return" (what
  the README advises a plain-function step to do), "raise", or "ignore" (carry on).

Names: torture.{async|sync}.{tx|plain}.{gated|free}.
"""
from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import msgspec

from chunkd import Context, Job, Sink

SLICE_MS = 5.0  # a step looks at ctx.cancelled this often


class TortureParams(msgspec.Struct, forbid_unknown_fields=True):
    chunks: int
    step_ms: float = 10.0
    on_cancel: str = "ignore"  # "return", "raise" or "ignore"
    tag: str = ""              # makes otherwise equal submits differ (idempotency tests)


class Item(msgspec.Struct, array_like=True):
    n: int


class Val(msgspec.Struct, array_like=True):
    n: int
    v: int


EFFECT = "INSERT INTO torture_effect (instance_id, n, chunk_id, attempt) VALUES ($1, $2, $3, $4)"
REDUCED = "INSERT INTO torture_reduced (instance_id) VALUES ($1)"


class CancelSeen(RuntimeError):
    pass


def _react(params: TortureParams, ctx: Context) -> bool:
    """True: stop now and return. Raises for on_cancel == "raise"."""
    if not ctx.cancelled or params.on_cancel == "ignore":
        return False
    if params.on_cancel == "raise":
        raise CancelSeen(f"ctx.cancelled seen by chunk {ctx.chunk_id}")
    return True


def _finish(params: TortureParams, chunk: Item, ctx: Context, sink: Sink[Val], transactional: bool) -> None:
    if transactional:
        ctx.tx.execute(EFFECT, ctx.instance_id, chunk.n, ctx.chunk_id, ctx.attempt)
    sink.emit(Val(chunk.n, chunk.n + 1))


def _make(name: str, is_async: bool, transactional: bool, gated: bool) -> Job:
    job = Job(name, params=TortureParams, gated=gated)

    @job.first_step(emits=Item)
    async def plan(params: TortureParams, ctx: Context, sink: Sink[Item]) -> None:
        for i in range(params.chunks):
            sink.emit(Item(i))

    if is_async:
        @job.step(consumes=Item, emits=Val, transactional=transactional, max_attempts=3,
                  backoff_base=0.05, backoff_max=0.5)
        async def work(params: TortureParams, chunk: Item, ctx: Context, sink: Sink[Val]) -> None:
            left = params.step_ms
            while left > 0:
                await anyio.sleep(min(SLICE_MS, left) / 1000)
                left -= SLICE_MS
                if _react(params, ctx):
                    return
            _finish(params, chunk, ctx, sink, transactional)
    else:
        @job.step(consumes=Item, emits=Val, transactional=transactional, max_attempts=3,
                  backoff_base=0.05, backoff_max=0.5)
        def work_sync(params: TortureParams, chunk: Item, ctx: Context, sink: Sink[Val]) -> None:
            left = params.step_ms
            while left > 0:
                time.sleep(min(SLICE_MS, left) / 1000)
                left -= SLICE_MS
                if _react(params, ctx):
                    return
            _finish(params, chunk, ctx, sink, transactional)

    @job.reduce(consumes=Val, transactional=transactional)
    async def total(params: TortureParams, chunks: AsyncIterator[Val], ctx: Context) -> dict[str, int]:
        count = acc = 0
        async for c in chunks:
            count += 1
            acc += c.v
        if transactional:
            ctx.tx.execute(REDUCED, ctx.instance_id)
        return {"count": count, "total": acc}

    return job


JOBS = {f"torture.{a}.{t}.{g}": _make(f"torture.{a}.{t}.{g}", a == "async", t == "tx", g == "gated")
        for a in ("async", "sync") for t in ("tx", "plain") for g in ("gated", "free")}
# the registry collects the module's Job globals
globals().update({name.replace(".", "_"): job for name, job in JOBS.items()})

TABLES = """
CREATE TABLE IF NOT EXISTS torture_effect (instance_id bigint NOT NULL, n int NOT NULL, chunk_id bigint,
                                           attempt int, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE INDEX IF NOT EXISTS torture_effect_key ON torture_effect (instance_id, n);
CREATE TABLE IF NOT EXISTS torture_reduced (instance_id bigint NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
"""


def expected_report(chunks: int) -> dict[str, int]:
    return {"count": chunks, "total": chunks * (chunks + 1) // 2}
