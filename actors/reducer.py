"""The Reducer duty: runs an instance's reduction (its last step) so that its report and the
consumption of its input commit only while the instance is still in FINALIZE and the
leader's term holds; a failed attempt is counted and retried after a backoff, and at the
step's max_attempts the instance FAILS naming the reason.

Two paths, one outcome. A reduction that may write SQL (transactional=True) or reads a
large input runs in a transaction of its own, its input streamed. A small one (at most
SMALL_INPUT chunks, no SQL of its own: most reductions of small jobs) has its input loaded
with others' in one read and its report written with others' in one transaction (a group
commit, ReportWriter): what bounded many small jobs at ~500 instances/s was each reduction's
own transaction of ~10 round trips."""
from __future__ import annotations

import functools
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import anyio
import structlog

from actors.group_commit import GroupCommit, Waiting
from actors.job import Context, Job, StepKind
from metrics import REDUCTION_FAILURES, REDUCTIONS, REDUCTIONS_RETRYING
from storage.codec import decode, to_json
from storage.errors import IDLE_TIMEOUT, TRANSIENT, closed_connection, is_transient, limit_reason
from storage.reader import Reader
from storage.retry import backoff_seconds
from storage.states import I
from storage.protocol import EngineStore
from storage.types import Finish, InstanceRow, LeaderTerm, NotLeader, Reduced

log = structlog.get_logger("chunkd.maintenance")

SMALL_INPUT = 1000          # input chunks a reduction may have to be loaded and written with others
SMALL_BYTES = 128 << 10     # and bytes (larger: streamed, as a large reduction is)
SMALL_IN_FLIGHT = 500       # small reductions loaded or running at once (so at most ~64 MiB of input)
LOAD_GROUP = 200            # reductions whose input one read loads, at most
WRITE_WAIT = 0.002          # seconds a report waits for company when no group is being written
WRITE_MAX = 500             # reports per transaction, at most
WRITE_MAX_BYTES = 8 << 20   # and bytes of reports
WRITE_MAX_INPUTS = 20_000   # and input chunks consumed (one transaction stays short)


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
        self.writer = ReportWriter(store)
        # loads at once: thousands of instances finalized together must not take every pool
        # connection from the claims and completions
        self._loading = anyio.CapacityLimiter(2)
        self._small = anyio.Semaphore(SMALL_IN_FLIGHT)
        self._taking = anyio.Lock()

    def start(self, inst: InstanceRow, job: Job, term: LeaderTerm | None, spawn: Callable[..., Any],
              inputs: int | None = None) -> None:
        """Runs the reduction unless it runs already or its last attempt failed and it is
        backing off. `inputs`: its input chunks, if known (None: a large one)."""
        self.start_many([(inst, job, inputs)], term, spawn)

    def start_many(self, todo: Sequence[tuple[InstanceRow, Job, int | None]], term: LeaderTerm | None,
                   spawn: Callable[..., Any]) -> None:
        """start for many: the small ones are loaded and written together."""
        now = time.monotonic()
        small: list[tuple[InstanceRow, Job]] = []
        for inst, job, inputs in todo:
            if inst.id in self.reducing or self._retry_at.get(inst.id, now) > now:
                continue
            self.reducing.add(inst.id)
            if job.steps[-1].transactional or inputs is None or inputs > SMALL_INPUT:
                spawn(self._reduce, inst, job, term, None)
            else:
                small.append((inst, job))
        for at in range(0, len(small), LOAD_GROUP):
            spawn(self._reduce_small, small[at:at + LOAD_GROUP], term)

    async def _reduce_small(self, group: list[tuple[InstanceRow, Job]], term: LeaderTerm | None) -> None:
        """Loads the inputs of a group of small reductions in one read, then runs each; one
        whose input turns out larger than SMALL_BYTES is streamed in a transaction of its own."""
        started: set[int] = set()
        held = 0  # slots of self._small this group holds for reductions not started yet
        try:
            if term is None:
                return
            # a group takes all its slots before the next takes any: groups each holding a
            # few slots and waiting for more would wait for each other forever
            async with self._taking:
                for _ in group:
                    await self._small.acquire()
                    held += 1
            try:
                async with self._loading:
                    raw, large = await self.store.reduction_inputs(
                        [(inst.id, job.steps[-1].index) for inst, job in group], SMALL_BYTES)
            except TRANSIENT as e:  # nothing happened: a later pass starts them again
                for inst, _ in group:
                    self._retry_at[inst.id] = time.monotonic() + 1.0
                log.warning("could not read the input of reductions; will run them again", error=repr(e),
                            instances=len(group))
                return
            except Exception as e:  # noqa: BLE001 - each alone then, where a failure is counted and shown
                log.warning("could not read the input of reductions together; running each alone", error=repr(e),
                            instances=len(group))
                large = {inst.id for inst, _ in group}
            # Read after the input: an instance still in FINALIZE (same run) now had its input
            # unconsumed when it was read (consumption and COMPLETED commit together). One that
            # left it (another run of this reduction completed it meanwhile: a pass decided on
            # an older read) must not run its reducer over what is left, an empty input: the
            # reducer's own side effects (bulk-export's manifest file) would be overwritten.
            try:
                live = {(r.id, r.run) for r in await self.store.active_instances_among([i.id for i, _ in group])
                        if r.status == I.FINALIZE.value}
            except TRANSIENT as e:
                for inst, _ in group:
                    self._retry_at[inst.id] = time.monotonic() + 1.0
                log.warning("could not read the state of reductions; will run them again", error=repr(e),
                            instances=len(group))
                return
            async with anyio.create_task_group() as tg:
                for inst, job in [(i, j) for i, j in group if (i.id, i.run) in live]:
                    started.add(inst.id)
                    held -= 1
                    if inst.id in large:
                        self._small.release()
                        tg.start_soon(self._reduce, inst, job, term, None)
                    else:
                        tg.start_soon(self._reduce_holding, inst, job, term, raw.pop(inst.id, []))
        finally:
            for _ in range(held):
                self._small.release()
            for inst, _ in group:
                if inst.id not in started:
                    self.reducing.discard(inst.id)

    async def _reduce_holding(self, inst: InstanceRow, job: Job, term: LeaderTerm, loaded: list[bytes]) -> None:
        try:
            await self._reduce(inst, job, term, loaded)
        finally:
            self._small.release()

    def due(self) -> set[int]:
        """Instances whose failed reduction may run again now (a pass must look at them)."""
        now = time.monotonic()
        return {i for i, t in self._retry_at.items() if t <= now}

    def forget(self, live: set[int]) -> None:
        """Only instances still active keep a backoff (exported as chunkd_reductions_retrying)."""
        if self._retry_at:
            self._retry_at = {i: t for i, t in self._retry_at.items() if i in live}
        REDUCTIONS_RETRYING.set(len(self._retry_at))

    async def _reduce(self, inst: InstanceRow, job: Job, term: LeaderTerm | None, loaded: list[bytes] | None) -> None:
        """Runs the reduction; what it did is kept only if, as it is written, the instance is
        still in FINALIZE and this node still holds the term it started with; otherwise
        everything rolls back, the reduction's own ctx.tx writes included. `loaded`: a small
        reduction's input, read already (its report is then written with others')."""
        step = job.steps[-1]
        assert step.kind is StepKind.REDUCE
        bound = log.bind(job=job.name, instance_id=inst.id, step=step.name)
        try:
            if term is None:
                return
            started = time.monotonic()
            try:
                report = await (self._reduce_in_tx(inst, job, term) if loaded is None
                                else self._reduce_loaded(inst, job, term, loaded))
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
            if not await tx.finalizing(inst.run):  # as _reduce_small: not over a consumed input
                raise _Superseded()
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
            report_json = self._report_json(report)
            for op in ctx.tx.ops:
                await tx.execute(op)
            decided = Finish(inst.id, inst.run, step.index, not job.fail_instance_on_chunk_failure)
            if not await tx.complete(report_json, term, decided):
                raise _Superseded()  # leaving the block rolls the transaction back
        return report


    async def _reduce_loaded(self, inst: InstanceRow, job: Job, term: LeaderTerm, raw: list[bytes]) -> Any:
        """A small reduction over its loaded input, outside any transaction (it writes no SQL
        of its own); its report joins the next group the ReportWriter writes."""
        step = job.steps[-1]
        params = job.decode_params(inst.params)
        ctx = Context(job.name, inst.id, None, step.name, 1, log, step.transactional, self.reader)
        items = [decode(data, step.consumes) for data in raw]  # type: ignore[arg-type]
        if step.is_async:
            report = await step.fn(params, _iterate(items), ctx)
        else:
            report = await anyio.to_thread.run_sync(functools.partial(step.fn, params, iter(items), ctx),
                                                    abandon_on_cancel=True)
        reduced = Reduced(Finish(inst.id, inst.run, step.index, not job.fail_instance_on_chunk_failure),
                          step.index, self._report_json(report))
        if not await self.writer.join((reduced, term), len(raw)):
            raise _Superseded()
        return report

    def _report_json(self, report: Any) -> str:
        report_json = to_json(report)
        limit = self.max_report_bytes
        if len(report_json) > limit:
            raise ReportTooLarge(f"the report is {len(report_json):,} bytes of JSON, over the limit of "
                                 f"{limit:,} bytes (CHUNKD_MAX_REPORT_BYTES)")
        return report_json


class ReportWriter(GroupCommit[tuple[Reduced, LeaderTerm]]):
    """Small reductions' reports, written many to a transaction (EngineStore.complete_reductions),
    each group under one leader term; each caller learns whether its instance completed."""

    def __init__(self, store: EngineStore) -> None:
        super().__init__(wait=WRITE_WAIT, max_items=WRITE_MAX, flushers=2)
        self.store = store

    def _take(self) -> list[Waiting[tuple[Reduced, LeaderTerm]]]:
        """Reports of one term, bounded in number, bytes and input chunks (`size`)."""
        group: list[Waiting[tuple[Reduced, LeaderTerm]]] = []
        n_bytes = n_inputs = 0
        while self._queue and len(group) < self.max_items:
            w = self._queue[0]
            reduced, term = w.payload
            if group and (term != group[0].payload[1] or n_bytes + len(reduced.report_json) > WRITE_MAX_BYTES
                          or n_inputs + w.size > WRITE_MAX_INPUTS):
                break
            group.append(self._queue.popleft())
            n_bytes += len(reduced.report_json)
            n_inputs += w.size
        return group

    async def _write(self, group: list[Waiting[tuple[Reduced, LeaderTerm]]]) -> None:
        term = group[0].payload[1]
        try:
            done = await self.store.complete_reductions([w.payload[0] for w in group], term)
        except Exception as e:  # noqa: BLE001 - handed to each caller of the group
            if len(group) == 1 or isinstance(e, NotLeader) or is_transient(e):
                for w in group:
                    w.error, w.done = e, True
                return
            for w in group:  # one report broke the transaction: each alone, so its error is its own
                try:
                    w.result = bool(await self.store.complete_reductions([w.payload[0]], term))
                except Exception as e1:  # noqa: BLE001
                    w.error = e1
                w.done = True
            return
        for w in group:
            w.result, w.done = w.payload[0].decided.instance_id in done, True


class ReportTooLarge(ValueError):
    """A reduction's report over CHUNKD_MAX_REPORT_BYTES: the instance fails, naming the limit."""


class _Superseded(Exception):
    """The instance is no longer in FINALIZE: this reduction's work must not commit."""


async def _iterate(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


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
