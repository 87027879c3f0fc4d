"""Run a job in memory, in a unit test: no Postgres, no daemon.

    from chunkd.testing import run_job

    async def test_export() -> None:
        run = await run_job(export, {"table": "patients"})
        assert run.report == {"files": 3}
        assert len(run.emitted["plan"]) == 3

`run_job` runs the first step, feeds every chunk it emits through the middle steps and
the reduction, step by step, as a gated instance would. Each chunk is encoded and decoded
with the codecs the daemon uses, so a chunk type that does not survive the trip fails here;
parameters are decoded (defaults, validation) as a submit decodes them; a report is
encoded to JSON and read back as the API would show it. Retries follow each step's
`max_attempts` without waiting out the backoff. What the engine does that this does not:
persistence, leases, concurrency, backoff delays, completion/error handlers.
"""
from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import msgspec
import structlog

from actors.instances import error_path
from actors.job import ChunkTooLarge, Context, Job, ParameterError, PermanentError, RetryLater, Sink, StepDef, StepKind
from storage.codec import DataError, decode, params_from_json, to_json
from storage.types import TxOp

__all__ = ["Call", "JobFailed", "JobRun", "run_job"]

# ctx.retry_later() re-runs a chunk without counting an attempt; past this many it is a bug.
MAX_POLLS = 1000


class Call(msgspec.Struct, frozen=True):
    """One run of a step on one chunk, as `inject` sees it and `JobRun.calls` records it."""
    step: str
    index: int        # the chunk's position among its step's input (0 for the first step)
    chunk: Any        # the decoded input chunk (None for the first step and the reduction)
    attempt: int      # 1 on the first run
    outcome: str = "" # "ok", "error: ...", "failed: ...", "retry later" (empty while it runs)


class JobRun(msgspec.Struct):
    """What a run did. `emitted[step]` holds what that step emitted (decoded); `tx[step]`
    the ctx.tx statements of its committed runs (a failed attempt's statements are
    discarded, as the engine rolls them back); `warnings` holds (step, message)."""
    job: str
    status: str = "COMPLETED"           # or "FAILED"
    report: Any = None                  # the reduction's report as JSON would show it
    error: str | None = None
    emitted: dict[str, list[Any]] = {}
    tx: dict[str, list[TxOp]] = {}
    warnings: list[tuple[str, str]] = []
    calls: list[Call] = []
    failed_chunks: list[str] = []       # chunks that ended FAILED (the job may go on without them)

    def attempts(self, step: str, index: int = 0) -> int:
        """How many times `step` ran on its `index`-th chunk."""
        return sum(1 for c in self.calls if c.step == step and c.index == index and c.outcome != "retry later")


class JobFailed(AssertionError):
    """The run ended FAILED and `check` was on: the message is the instance's error."""


Inject = Callable[[Call], BaseException | None]


async def run_job(job: Job, params: Any = None, *, inject: Inject | None = None, db: Any = None,
                  check: bool = True, max_chunk_bytes: int = 64 << 20) -> JobRun:
    """Run `job` with `params` (its params Struct, a dict, or JSON text) in memory.

    `inject(call)` may return an exception for a step run to raise instead of running the
    step, e.g. `lambda c: RuntimeError("boom") if c.step == "write" and c.attempt == 1 else None`
    to see a retry. `db` is what `ctx.db` (and a `params_check`, which runs only when `db`
    is given) receive. With `check` (the default) a FAILED run raises JobFailed."""
    job.validate()
    run = JobRun(job.name)
    parsed = _params(job, params)
    if job.check is not None and db is not None:
        await job.check(parsed, db)
    inputs: list[bytes] = [b""]
    for step in job.steps:
        if step.kind is StepKind.REDUCE:
            run.report = await _reduce(job, step, parsed, inputs, run, db)
            break
        outputs: list[bytes] = []
        for index, data in enumerate(inputs):
            produced = await _run_chunk(job, step, parsed, index, data, run, inject, db, max_chunk_bytes)
            if produced is not None:
                outputs.extend(produced)
            elif job.fail_instance_on_chunk_failure:  # fail-fast, as the engine: the instance FAILED
                run.status, run.error = "FAILED", run.failed_chunks[-1]
                break
        if run.status == "FAILED":
            break
        inputs = outputs
    if check and run.status == "FAILED":
        raise JobFailed(f"job {job.name!r} FAILED: {run.error}")
    return run


def _params(job: Job, params: Any) -> Any:
    """Decoded as a submit decodes them; refused as the submit's 422 is: `chunkd.ParameterError`
    with the message and `path` (`$.rows`) the API would give, not a storage-internal error."""
    if isinstance(params, job.params):
        params = to_json(params)  # through JSON all the same: defaults and checks as at submit
    elif params is None or isinstance(params, dict):
        params = json.dumps(params or {})
    try:
        return params_from_json(params, job.params)
    except DataError as e:
        raise ParameterError(f"job {job.name!r}: {e}", error_path(e)) from None


async def _run_chunk(job: Job, step: StepDef, params: Any, index: int, data: bytes, run: JobRun,
                     inject: Inject | None, db: Any, max_chunk_bytes: int) -> list[bytes] | None:
    """Run one chunk to success (its children) or to FAILED (None), retrying as the engine does."""
    item = None
    if step.kind is not StepKind.FIRST:
        try:
            item = decode(data, step.consumes)  # type: ignore[arg-type]
        except DataError as e:
            return _failed(run, step, index, None, 1, str(e))
    attempt, polls = 1, 0
    while True:
        call = Call(step.name, index, item, attempt)
        ctx = Context(job.name, 1, index, step.name, attempt, structlog.get_logger("chunkd.testing"),
                      step.transactional, db)
        sink: Sink[Any] | None = Sink(step.emits, max_chunk_bytes) if step.emits is not None else None
        try:
            injected = inject(call) if inject is not None else None
            if injected is not None:
                raise injected
            args = (params, ctx, sink) if step.kind is StepKind.FIRST else (
                (params, item, ctx, sink) if sink is not None else (params, item, ctx))
            result = step.fn(*args)
            if inspect.isawaitable(result):
                await result
            if sink is not None and sink.too_large:
                raise ChunkTooLarge(sink.too_large)
        except RetryLater:
            polls += 1
            run.calls.append(msgspec.structs.replace(call, outcome="retry later"))
            if polls > MAX_POLLS:
                return _failed(run, step, index, item, attempt, f"retried later {MAX_POLLS} times")
            continue
        except PermanentError as e:
            return _failed(run, step, index, item, attempt, f"permanent error: {type(e).__name__}: {e}")
        except Exception as e:  # noqa: BLE001 - a step's failure is a retry or a FAILED chunk, as in the engine
            message = f"{type(e).__name__}: {e}"
            if attempt >= step.max_attempts:
                return _failed(run, step, index, item, attempt, message)
            run.calls.append(msgspec.structs.replace(call, outcome=f"error: {message}"))
            attempt += 1
            continue
        run.calls.append(msgspec.structs.replace(call, outcome="ok"))
        run.warnings.extend((step.name, w) for w in ctx.warnings)
        run.tx.setdefault(step.name, []).extend(ctx.tx.ops)
        children = sink.encoded if sink is not None else []
        if sink is not None:
            run.emitted.setdefault(step.name, []).extend(_shown(c, step.emits) for c in children)  # type: ignore[arg-type]
        return children


def _shown(data: bytes, tp: type) -> Any:
    """An emitted chunk as the next step will see it (its raw bytes if it does not decode:
    the next step then fails on it, as it would in the daemon)."""
    try:
        return decode(data, tp)
    except DataError:
        return data


def _failed(run: JobRun, step: StepDef, index: int, item: Any, attempt: int, message: str) -> None:
    run.calls.append(Call(step.name, index, item, attempt, f"failed: {message}"))
    run.failed_chunks.append(f"step {step.name!r} chunk {index}: {message}")


async def _reduce(job: Job, step: StepDef, params: Any, inputs: list[bytes], run: JobRun, db: Any) -> Any:
    items = [decode(d, step.consumes) for d in inputs]  # type: ignore[arg-type]
    ctx = Context(job.name, 1, None, step.name, 1, structlog.get_logger("chunkd.testing"), step.transactional, db)
    try:
        if step.is_async:
            report = await step.fn(params, _aiter(items), ctx)
        else:
            report = step.fn(params, iter(items), ctx)
        report_json = to_json(report)
    except Exception as e:  # noqa: BLE001 - the reduction's failure fails the instance, as in the engine
        _failed(run, step, 0, None, 1, f"{type(e).__name__}: {e}")
        run.status, run.error = "FAILED", run.failed_chunks[-1]
        return None
    run.calls.append(Call(step.name, 0, None, 1, "ok"))
    run.warnings.extend((step.name, w) for w in ctx.warnings)
    run.tx.setdefault(step.name, []).extend(ctx.tx.ops)
    return json.loads(report_json)


async def _aiter(items: Iterable[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item
