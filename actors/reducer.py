"""The Reducer duty: runs an instance's reduction (its last step) in one transaction that
commits only while the instance is still in FINALIZE and the leader's term holds; a failed
attempt is counted and retried after a backoff, and at the step's max_attempts the
instance FAILS naming the reason."""
from __future__ import annotations

import functools
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import structlog

from actors.job import Context, Job, StepKind
from metrics import REDUCTION_FAILURES, REDUCTIONS, REDUCTIONS_RETRYING
from storage.codec import decode, to_json
from storage.errors import IDLE_TIMEOUT, TRANSIENT, closed_connection, is_transient, limit_reason
from storage.reader import Reader
from storage.retry import backoff_seconds
from storage.states import I
from storage.protocol import EngineStore
from storage.types import Finish, InstanceRow, LeaderTerm, NotLeader

log = structlog.get_logger("chunkd.maintenance")


def retry_in(attempts: int, counted: bool, max_attempts: int, base: float, cap: float,
             too_large: bool) -> float | None:
    """After a failed reduction attempt: seconds until the next, or None when the instance
    FAILS now (a counted failure at max_attempts, or a report over its limit, which no retry
    makes smaller). An uncounted one (the database away) waits a second and is not counted."""
    if counted and (attempts >= max_attempts or too_large):
        return None
    return backoff_seconds(max(1, attempts), base, cap) if counted else 1.0


class Reducer:
    """Starts reductions in the background (the leader's task group) and keeps, per
    instance, when a failed one may run again."""

    def __init__(self, store: EngineStore, reader: Reader, max_report_bytes: int) -> None:
        self.store, self.reader, self.max_report_bytes = store, reader, max_report_bytes
        self.reducing: set[int] = set()
        self._retry_at: dict[int, float] = {}  # instance -> when its failed reduction may run again

    def start(self, inst: InstanceRow, job: Job, term: LeaderTerm | None, spawn: Callable[..., Any]) -> None:
        """Runs the reduction unless it runs already or its last attempt failed and it is
        backing off."""
        if inst.id in self.reducing:
            return
        not_before = self._retry_at.get(inst.id)
        if not_before is not None and time.monotonic() < not_before:
            return
        self.reducing.add(inst.id)
        spawn(self._reduce, inst, job, term)

    def due(self) -> set[int]:
        """Instances whose failed reduction may run again now (a pass must look at them)."""
        now = time.monotonic()
        return {i for i, t in self._retry_at.items() if t <= now}

    def forget(self, live: set[int]) -> None:
        """Only instances still active keep a backoff (exported as chunkd_reductions_retrying)."""
        if self._retry_at:
            self._retry_at = {i: t for i, t in self._retry_at.items() if i in live}
        REDUCTIONS_RETRYING.set(len(self._retry_at))

    async def _reduce(self, inst: InstanceRow, job: Job, term: LeaderTerm | None) -> None:
        """Runs the reduction in one transaction that commits only if, at its end, the
        instance is still in FINALIZE and this node still holds the term it started with;
        otherwise everything rolls back, the reduction's own ctx.tx writes included."""
        step = job.steps[-1]
        assert step.kind is StepKind.REDUCE
        bound = log.bind(job=job.name, instance_id=inst.id, step=step.name)
        try:
            if term is None:
                return
            started = time.monotonic()
            try:
                report = await self._reduce_in_tx(inst, job, term)
            except _Superseded:
                bound.info("reduction rolled back: the instance left FINALIZE (cancelled or finished elsewhere)")
                return
            except NotLeader as e:
                bound.warning("reduction rolled back: this node's maintenance term ended", error=str(e))
                return
            except Exception as e:  # noqa: BLE001 - the reducer failed, its data is bad, or the database ended it
                await self._reduction_failed(inst, job, term, e, time.monotonic() - started, bound)
                return
            self._retry_at.pop(inst.id, None)
            REDUCTIONS.labels(job.name, "completed").inc()
            bound.info("instance state change", status=I.COMPLETED.value)
            await _handler(job.on_complete, inst.id, report)
        except (NotLeader, *TRANSIENT) as e:  # recording the failure itself failed: a later pass retries
            self._retry_at[inst.id] = time.monotonic() + 1.0
            bound.warning("could not record the reduction's failure; will run again", error=repr(e))
        finally:
            self.reducing.discard(inst.id)

    async def _reduction_failed(self, inst: InstanceRow, job: Job, term: LeaderTerm, e: Exception,
                                held: float, bound: Any) -> None:
        """A failed attempt is counted and shown on the instance (reduction_attempts,
        last_error) and in chunkd_reduction_failures; the next one waits a backoff; at the
        step's max_attempts (at once for a report over its limit) the instance FAILS naming
        the reason. The database going away (connection lost, server restarting, an
        operator's cancel) is shown but not counted: it is not the work's failure."""
        step = job.steps[-1]
        reason = limit_reason(e)
        idle = self.store.user_limits.idle_seconds if self.store.user_limits is not None else 0.0
        if reason is None and idle > 0 and held >= idle and closed_connection(e):
            # the server ended a transaction the reduction held open past the database's
            # idle_in_transaction_session_timeout (asyncpg reports only the closed connection)
            reason = IDLE_TIMEOUT
        counted = reason is not None or not is_transient(e)
        detail = f"{type(e).__name__}: {e}"
        if reason == IDLE_TIMEOUT and closed_connection(e):
            detail = (f"the database closed the connection after the reduction held its transaction "
                      f"{held:.1f} s (idle_in_transaction_session_timeout is "
                      f"{self.store.user_limits.idle_in_transaction if self.store.user_limits else '?'}); {detail}")
        msg = f"reduction step {step.name!r} failed: {reason + ': ' if reason else ''}{detail}"
        REDUCTION_FAILURES.labels(job.name, reason or ("error" if counted else "database unavailable")).inc()
        attempts = await self.store.reduction_failed(inst.id, inst.run, msg, counted=counted, leader=term)
        if attempts is None:
            self._retry_at.pop(inst.id, None)
            return  # it left FINALIZE meanwhile (cancelled, finished elsewhere)
        delay = retry_in(attempts, counted, step.max_attempts, step.backoff_base, step.backoff_max,
                         isinstance(e, ReportTooLarge))
        if delay is None:
            final = f"{msg} (attempt {attempts} of {step.max_attempts})"
            bound.warning("reduction failed", error=final, attempts=attempts)
            REDUCTIONS.labels(job.name, "failed").inc()
            self._retry_at.pop(inst.id, None)
            if await self.store.finish_instance(inst.id, I.FAILED, error=final, leader=term,
                                                decided=Finish(inst.id, inst.run, 0)):
                bound.error("instance state change", status=I.FAILED.value, error=final)  # no chunk: the reduction
                await _handler(job.on_error, inst.id, final)
            return
        self._retry_at[inst.id] = time.monotonic() + delay
        bound.warning("reduction failed; will run again", error=msg, attempts=attempts,
                      max_attempts=step.max_attempts, counted=counted, retry_in=delay)

    async def _reduce_in_tx(self, inst: InstanceRow, job: Job, term: LeaderTerm) -> Any:
        store = self.store
        step = job.steps[-1]
        params = job.decode_params(inst.params)
        ctx = Context(job.name, inst.id, None, step.name, 1, log, step.transactional, self.reader)
        async with store.reduction(inst.id, step.index, lambda: bool(ctx.tx.ops)) as tx:
            items = _decoded(tx.input(), step.consumes)  # type: ignore[arg-type]
            if step.is_async:
                report = await step.fn(params, items, ctx)
            else:
                # Abandoned, not awaited, if maintenance is cancelled (shutdown): the
                # transaction rolls back, the next leader runs the reduction again, and the
                # bridge is closed first so the orphan thread can never read through a
                # connection handed to someone else.
                bridge = _SyncBridge(items)
                try:
                    report = await anyio.to_thread.run_sync(
                        functools.partial(step.fn, params, bridge, ctx), abandon_on_cancel=True)
                finally:
                    bridge.closed = True
            report_json = to_json(report)
            limit = self.max_report_bytes
            if len(report_json) > limit:
                raise ReportTooLarge(f"the report is {len(report_json):,} bytes of JSON, over the limit of "
                                     f"{limit:,} bytes (CHUNKD_MAX_REPORT_BYTES)")
            for op in ctx.tx.ops:
                await tx.execute(op)
            decided = Finish(inst.id, inst.run, step.index, not job.fail_instance_on_chunk_failure)
            if not await tx.complete(report_json, term, decided):
                raise _Superseded()  # leaving the block rolls the transaction back
        return report


class ReportTooLarge(ValueError):
    """A reduction's report over CHUNKD_MAX_REPORT_BYTES: the instance fails, naming the limit."""


class _Superseded(Exception):
    """The instance is no longer in FINALIZE: this reduction's work must not commit."""


async def _decoded(raw: AsyncIterator[bytes], tp: type) -> AsyncIterator[Any]:
    async for data in raw:
        yield decode(data, tp)


class _SyncBridge(Iterator[Any]):
    """Lets a plain-function reducer iterate the async chunk stream from its worker thread."""

    def __init__(self, items: AsyncIterator[Any]) -> None:
        self._items = items
        self.closed = False  # set on the event loop when the reduction ends or is abandoned

    def __iter__(self) -> "_SyncBridge":
        return self

    def __next__(self) -> Any:
        try:
            return anyio.from_thread.run(self._next)
        except StopAsyncIteration:
            raise StopIteration from None

    async def _next(self) -> Any:
        if self.closed:  # checked on the loop, where `closed` is set: no race with the release
            raise RuntimeError("this reduction was abandoned (the daemon is stopping); its input is gone")
        return await self._items.__anext__()


async def _handler(fn: Any, instance_id: int, arg: Any) -> None:
    if fn is None:
        return
    try:
        result = fn(instance_id, arg)
        if inspect.isawaitable(result):
            await result
    except Exception as e:  # noqa: BLE001 - a handler must not break maintenance
        log.warning("job handler raised", instance_id=instance_id, error=repr(e))
