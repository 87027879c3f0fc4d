"""Step executor: runs the user's step for one claimed chunk and turns what happened
into an Outcome for the completer. Never raises for a step's own failure."""
from __future__ import annotations

import asyncio
import functools
import time
import traceback
from collections import deque
from typing import Any, Protocol

import anyio
import anyio.lowlevel
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream

from actors.engine import Engine, Outcome, StepSlot
from actors.job import Context, PermanentError, RetryLater, Sink, StepDef, StepKind
from actors.registry import UnknownJobError
from metrics import STEP_SECONDS
from storage.codec import DataError, decode
from storage.errors import TRANSIENT
from storage.retry import after_error
from storage.states import SETBACK_BY_ATTEMPTS, C
from storage.types import ClaimedChunk, Setback, Success

log = structlog.get_logger("chunkd.executor")


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"  # made storable (NUL, length) by the store


def _trace(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))  # bounded by the store (storage.text.MAX_TRACE)


async def _call(step: StepDef, *args: Any) -> None:
    if step.is_async:
        await step.fn(*args)
    else:
        # Nothing can interrupt a thread: when the worker is cancelled (the shutdown grace
        # ended) it stops waiting and the step runs on unobserved; its chunk is handed back
        # and whatever it returns is dropped (issue 22 row 6).
        await anyio.to_thread.run_sync(functools.partial(step.fn, *args), abandon_on_cancel=True)


# One function on purpose: it runs once per chunk, and every call or closure split out of it
# costs the drain benchmark measurably (see StepSlot for the price of a CancelScope).
async def run_chunk(engine: Engine, chunk: ClaimedChunk, partition: int, slot: StepSlot) -> Outcome:
    job_name, step_name = "?", str(chunk.step)

    def setback(state: C, message: str | None, *, failure: bool, delay: float = 0.0,
                exc: BaseException | None = None) -> Outcome:
        return Outcome(Setback(chunk.id, chunk.attempt, chunk.instance_id, chunk.step, int(state),
                               failure, delay, message, _trace(exc) if exc is not None else None),
                       job_name, step_name, partition, chunk.claimed_at)

    if chunk.instance_id in engine.stops.ended:
        # Cancelled (or failed) after this chunk was claimed: it never starts.
        return setback(C.CANCELLED, None, failure=False)

    try:
        rt = engine.cached_runtime(chunk.instance_id) or await engine.runtime(chunk.instance_id)
    except TRANSIENT as e:
        # the database is away: try this chunk again soon, without counting a failure
        return setback(C.POLL_WAITING, f"could not load the instance: {e!r}", failure=False, delay=1.0)
    except (UnknownJobError, LookupError) as e:
        # Perhaps another daemon has this job loaded: retry, and fail only after max attempts.
        state, delay = after_error(chunk.failures, 3, permanent=False, base=5.0, cap=60.0)
        return setback(state, f"cannot run: {e}", failure=True, delay=delay)
    except DataError as e:
        return setback(C.FAILED, f"instance parameters are invalid: {e}", failure=True)
    job = rt.job
    job_name = job.name
    if chunk.step >= len(job.steps) or job.steps[chunk.step].kind is StepKind.REDUCE:
        return setback(C.FAILED, f"job {job.name} v{job.version} has no runnable step {chunk.step}", failure=True)
    step = job.steps[chunk.step]
    step_name = step.name
    ctx = Context(job.name, chunk.instance_id, chunk.id, step.name, chunk.attempt, log,
                  step.transactional, engine.reader)
    if step.emits is not None:
        limits = engine.settings.steps
        sink: Sink[Any] | None = Sink(step.emits, limits.max_chunk_bytes, limits.max_chunks_per_run,
                                      limits.max_emit_bytes_per_run)
    else:
        sink = None
    if chunk.orphaned:
        # A worker already died holding it: record that this attempt really starts, so that
        # if this process dies now the blame falls on it and not on chunks still waiting.
        try:
            await engine.store.mark_chunk_started(chunk.id, chunk.attempt)
        except TRANSIENT as e:
            return setback(C.POLL_WAITING, f"could not record the start: {e!r}", failure=False, delay=1.0)
    started = time.perf_counter()
    # The stopper interrupts an async step at its next await when the instance ends
    # (cancel, force-stop, fail-fast); see StepSlot for why natively.
    slot.begin(chunk.instance_id, ctx, step.is_async)
    try:
        try:
            if step.kind is StepKind.FIRST:
                await _call(step, rt.params, ctx, sink)
            else:
                item = decode(chunk.data, step.consumes)  # type: ignore[arg-type]
                if sink is not None:
                    await _call(step, rt.params, item, ctx, sink)
                else:
                    await _call(step, rt.params, item, ctx)
        except asyncio.CancelledError:
            # Ours (the instance ended) unless somebody else, shutdown say, cancels too
            # (a sync step's thread is never cancelled by us: any cancellation is theirs).
            if not slot.stop_requested or slot.task is None or slot.settle():
                raise
    except RetryLater as r:
        return setback(C.POLL_WAITING, None, failure=False, delay=max(0.0, r.seconds))
    except DataError as e:
        return setback(C.FAILED, str(e), failure=True)
    except PermanentError as e:
        return setback(C.FAILED, f"permanent error: {_error_text(e)}", failure=True, exc=e)
    except Exception as e:  # noqa: BLE001 - any step failure becomes a retry or a FAILED chunk
        if slot.stop_requested:  # it gave up because its instance ended: not a failure, never retried
            return setback(C.CANCELLED, f"the instance ended while this step ran; the step then raised "
                                        f"{_error_text(e)}", failure=False)
        if sink is not None and sink.too_large:
            return setback(C.FAILED, sink.too_large, failure=True)
        state, delay = after_error(chunk.failures, step.max_attempts, permanent=False,
                                   base=step.backoff_base, cap=step.backoff_max)
        ctx.log.debug("step raised", error=_error_text(e), next_state=state.name)
        return setback(state, _error_text(e), failure=True, delay=delay, exc=e)
    finally:
        slot.end()
        step_seconds(job_name, step_name).observe(time.perf_counter() - started)
    if slot.stop_requested:
        return setback(C.CANCELLED, "the instance ended while this step ran; the step was cancelled", failure=False)
    if sink is not None and sink.too_large:  # the step swallowed ChunkTooLarge or EmitLimitExceeded: still a failure
        return setback(C.FAILED, sink.too_large, failure=True)
    nxt = chunk.step + 1
    return Outcome(Success(
        chunk_id=chunk.id, attempt=chunk.attempt, instance_id=chunk.instance_id, step=chunk.step,
        children=sink.encoded if sink is not None else [],
        child_gated=job.child_gated(chunk.step),
        child_max_attempts=job.steps[nxt].max_attempts if nxt < len(job.steps) else 1,
        tx_ops=ctx.tx.ops, warnings=ctx.warnings), job_name, step_name, partition, chunk.claimed_at,
        job.step_closes_a_move(chunk.step, bool(sink is not None and sink.encoded)))


@functools.lru_cache(maxsize=4096)
def step_seconds(job: str, step: str):  # type: ignore[no-untyped-def]
    return STEP_SECONDS.labels(job, step)  # the labelled child, looked up once


async def execute_partition(engine: Engine, partition: int, inbox: MemoryObjectReceiveStream[ClaimedChunk],
                            pool: Retiring | None = None) -> None:
    """One executor worker; a partition runs CHUNKD_PARTITION_CONCURRENCY of them (or, unset,
    as many as its steps need: actors/pipeline.py WorkerPool)."""
    slot = StepSlot(asyncio.current_task(), partition)
    engine.stops.slots.add(slot)
    try:
        await _work(engine, partition, inbox, slot, pool)
    finally:
        engine.stops.slots.discard(slot)


class Retiring(Protocol):
    workers: int
    retire: int   # idle workers that should return rather than wait


async def _work(engine: Engine, partition: int, inbox: MemoryObjectReceiveStream[ClaimedChunk], slot: StepSlot,
                pool: Retiring | None) -> None:
    streak = 0
    while True:
        # Take what is already there without a scheduling round trip; yield now and then so
        # steps that never await cannot monopolise the loop.
        try:
            chunk = inbox.receive_nowait()
            streak += 1
            if streak >= 64:
                streak = 0
                await anyio.lowlevel.checkpoint()
        except anyio.WouldBlock:
            streak = 0
            if pool is not None and pool.retire > 0:  # idle, and the pool shrinks: holds no chunk
                pool.retire -= 1
                pool.workers -= 1
                return
            try:
                chunk = await inbox.receive()
            except anyio.EndOfStream:
                return
        except anyio.EndOfStream:
            return
        if engine.stopping:
            continue  # not started: stays held and is released at shutdown
        await _run_with_slots(engine, partition, chunk, slot)


async def _run_with_slots(engine: Engine, partition: int, chunk: ClaimedChunk, slot: StepSlot) -> None:
    try:
        rt = engine.cached_runtime(chunk.instance_id) or await engine.runtime(chunk.instance_id)
    except Exception:  # noqa: BLE001 - run_chunk loads it again and reports the problem
        rt = None
    if rt is not None and not engine.slots.try_take(rt.job):
        engine.slots.parked.setdefault(rt.job.name, deque()).append((partition, chunk))
        return
    try:
        while True:
            try:
                outcome = await run_chunk(engine, chunk, partition, slot)
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:  # noqa: BLE001 - ours, not the step's (run_chunk turns those into outcomes)
                # Dying here would strand the job's parked chunks (held, leases extended, nobody
                # to run them: the slot is given back only to whoever takes it next) and keep
                # this chunk held: count its attempt as failed instead and go on.
                log.error("internal error running a chunk; its attempt counts as failed", chunk_id=chunk.id,
                          instance_id=chunk.instance_id, exc_info=True)
                outcome = Outcome(Setback(chunk.id, chunk.attempt, chunk.instance_id, chunk.step,
                                          SETBACK_BY_ATTEMPTS, True, 1.0, f"chunkd internal error: {_error_text(exc)}",
                                          _trace(exc)),
                                  rt.job.name if rt is not None else "?", str(chunk.step), partition,
                                  chunk.claimed_at)
            try:
                engine.completer_send.send_nowait(outcome)
            except anyio.WouldBlock:
                await engine.completer_send.send(outcome)  # the completer is behind: wait for room
            queue = engine.slots.parked.get(rt.job.name) if rt is not None else None
            if not queue or engine.stopping:
                return
            partition, chunk = queue.popleft()
    except anyio.get_cancelled_exc_class():
        raise
    except BaseException:
        # Our bug, not the step's: stop extending the lease of the chunk in hand (perhaps one
        # taken from the parked queue, not the one this call began with) so it is handed back.
        engine.inflight.forget([(chunk.id, chunk.attempt)])
        raise
    finally:
        if rt is not None:
            engine.slots.give_back(rt.job)
