"""Maintenance: one leader per cluster (a lease row in Postgres) rescues expired leases,
releases retries, opens gates, runs reductions, completes and fails instances, computes
progress, and re-publishes partitions whose READY chunks waited too long."""
from __future__ import annotations

import functools
import inspect
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, NamedTuple

import anyio
import structlog

from actors.job import Context, Job, StepKind
from actors.planner import Action, JobShape, Plan, RateState, plan
from actors.registry import Registry, UnknownJobError
from actors.settings import MaintenanceSettings
from channels.base import Channel
from metrics import (
    CHUNKS_RETRIED,
    GATES_ADVANCED,
    INSTANCE_ETA,
    INSTANCES,
    INVARIANT_REFUSALS,
    IS_LEADER,
    LEADER_CHANGES,
    LEASES_RESCUED,
    MAINTENANCE_SECONDS,
    QUEUE_CHUNKS,
    QUEUE_OLDEST_READY,
    REDUCTION_FAILURES,
    REDUCTIONS,
    REDUCTIONS_RETRYING,
)
from storage.codec import decode, to_json
from storage.errors import IDLE_TIMEOUT, TRANSIENT, Backoff, closed_connection, is_transient, limit_reason
from storage.retry import backoff_seconds
from storage.reader import Reader
from storage.states import I
from storage.protocol import EngineStore
from storage.types import Finish, InstanceRow, LeaderTerm, NotLeader, Progress

log = structlog.get_logger("chunkd.maintenance")

_BATCH = 5000
_LOGGED_LEASE_FAILURES = 5  # per rescue batch; the rest are counted in one line
_PROGRESS_EVERY = 1.0  # seconds between progress writes, at least
_WOKEN_SPACING = 0.1   # seconds between a pass and the next when woken, at least


def shape_of(job: Job) -> JobShape:
    return JobShape(gated=job.gated, work_steps=job.work_steps, has_reduction=job.has_reduction,
                    weights=tuple(s.weight for s in job.steps),
                    fail_on_chunk_failure=job.fail_instance_on_chunk_failure)


def leader_lease(interval: float) -> float:
    """Seconds a leader's lease lasts; it is renewed every `interval`."""
    return max(5.0, 5 * interval)


class Maintenance:
    def __init__(self, settings: MaintenanceSettings, store: EngineStore, channel: Channel, registry: Registry,
                 reader: Reader, node_id: int) -> None:
        """Only what it uses: its settings, the store, the channel it publishes on, the
        registry (reductions, handlers), ctx.db's reader for reductions, and this node's id."""
        self.settings, self.store, self.channel, self.registry = settings, store, channel, registry
        self.reader, self.node_id = reader, node_id
        self.leader = False
        self.reducing: set[int] = set()
        self._retry_at: dict[int, float] = {}  # instance -> when its failed reduction may run again
        self.term: LeaderTerm | None = None  # the fencing token of every leader write
        self.rates: dict[int, RateState] = {}  # per instance, for the smoothed ETA (leader-local)
        self._shown: dict[int, Progress] = {}  # per instance, the progress last written
        self._progress_at = 0.0
        self._shapes: dict[tuple[str, int], JobShape] = {}
        self.wake = anyio.Event()
        self._gauges_at = 0.0
        self._forget_at = 0.0
        self._republish_at = 0.0
        self._queue_at = 0.0

    async def run(self) -> None:
        cfg = self.settings
        ttl = leader_lease(cfg.interval)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            backoff = Backoff(0.2, 5.0)
            try:
                while True:
                    try:
                        await self._round(ttl)
                        backoff.ok()
                    except NotLeader as e:
                        log.warning("maintenance term ended mid-pass; its writes were rolled back", error=str(e))
                        self._lose()
                    except TRANSIENT as e:
                        delay = backoff.failed()
                        log.warning("maintenance pass failed; retrying", error=repr(e), retry_in=delay)
                        await anyio.sleep(delay)
                        continue
                    ended = anyio.current_time()
                    with anyio.move_on_after(cfg.interval):
                        await self.wake.wait()
                    self.wake = anyio.Event()
                    # woken (a gate opened): not back to back, each pass reads every active instance
                    await anyio.sleep(max(0.0, ended + min(cfg.interval, _WOKEN_SPACING) - anyio.current_time()))
            finally:
                if self.leader:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                        try:
                            await self.store.resign_leadership(self.node_id)
                        except TRANSIENT:
                            pass
                    self._lose()

    def _lose(self) -> None:
        if self.leader:
            LEADER_CHANGES.labels("lost").inc()
        self.leader = False
        self.term = None
        IS_LEADER.set(0)

    async def _round(self, ttl: float) -> None:
        """Renew (or take) the leader lease; if we hold it, run one pass."""
        if not self.settings.scheduling:
            return  # CHUNKD_SCHEDULING=false: a secondary node never leads
        term = await self.store.acquire_leadership(self.node_id, ttl)
        if term is not None and not self.leader:
            log.info("became maintenance leader", term=term)
            LEADER_CHANGES.labels("acquired").inc()
        was_leader, self.leader = self.leader, term is not None
        self.term = LeaderTerm(self.node_id, term) if term is not None else None
        IS_LEADER.set(1 if self.leader else 0)
        if was_leader and not self.leader:
            log.info("lost maintenance leadership")
            LEADER_CHANGES.labels("lost").inc()
            await self.export_gauges({})
        if self.leader:
            started = time.perf_counter()
            await self.pass_once()
            MAINTENANCE_SECONDS.observe(time.perf_counter() - started)

    async def pass_once(self) -> None:
        store = self.store
        publish: set[int] = set()
        while True:
            n, failed, parts, failed_chunks = await store.rescue_expired(_BATCH)
            publish |= parts
            if n:
                LEASES_RESCUED.inc(n)
                log.info("rescued expired leases", chunks=n, failed=failed)
                self._log_lease_failures(failed_chunks)
            if n < _BATCH:
                break
        parts, retried = await store.release_due(_BATCH)
        publish |= parts
        for (job_name, version, step), n in retried.items():
            CHUNKS_RETRIED.labels(job_name, self._step_name(job_name, version, step)).inc(n)
        publish |= await store.rehome()
        publish |= await self.instances()
        if publish:
            await self.channel.publish(publish)
        now = time.monotonic()
        if now >= self._forget_at:  # a tenth of the age: a dead node's row goes within 110% of it
            self._forget_at = now + self.settings.forget_nodes_after / 10
            if forgotten := await store.forget_dead_nodes(self.settings.forget_nodes_after):
                log.info("forgot dead nodes", nodes=forgotten)
        if now >= self._republish_at:  # not every pass: it reads the head of each READY queue
            self._republish_at = now + self.settings.republish_after
            stale = await store.stale_partitions(range(self.settings.partitions), self.settings.republish_after)
            if stale:
                await self.channel.publish(stale)

    def _log_lease_failures(self, failed: list[tuple[str, int, int, int, int]]) -> None:
        """Chunks FAILED because their worker died or stalled once too often: a warning each,
        like the completer's chunk failures, the first few only (a mass expiry is one event)."""
        for job, inst, step, cid, attempt in failed[:_LOGGED_LEASE_FAILURES]:
            log.warning("chunk failed", job=job, instance_id=inst, step_index=step, chunk_id=cid, attempt=attempt,
                        error="the worker died or stalled while running this chunk (lease expired)")
        if len(failed) > _LOGGED_LEASE_FAILURES:
            log.warning("chunk failures suppressed", suppressed=len(failed) - _LOGGED_LEASE_FAILURES,
                        reason="lease expired")

    def _shape(self, job: Job) -> JobShape:
        shape = self._shapes.get((job.name, job.version))
        if shape is None:
            shape = self._shapes[(job.name, job.version)] = shape_of(job)
        return shape

    def _step_name(self, job_name: str, version: int, step: int) -> str:
        try:
            return self.registry.get(job_name, version).steps[step].name
        except (UnknownJobError, IndexError):
            return str(step)

    async def export_gauges(self, etas: dict[str, float]) -> None:
        """Cluster-wide figures, exported by the leader only (others clear them)."""
        INSTANCES.clear()
        INSTANCE_ETA.clear()
        if not self.leader:
            QUEUE_CHUNKS.clear()
            QUEUE_OLDEST_READY.clear()
            REDUCTIONS_RETRYING.set(0)
            return
        for status in I:
            INSTANCES.labels(status.value).set(0)
        for status, n in (await self.store.instances_by_status()).items():
            INSTANCES.labels(status).set(n)
        if time.monotonic() - self._queue_at >= 1:  # idle clusters call us every pass
            self._queue_at = time.monotonic()
            await self.export_queue()
        for job_name, eta in etas.items():
            INSTANCE_ETA.labels(job_name).set(eta)

    async def export_queue(self) -> None:
        """Queue depth and the stall detector (oldest READY age), with the other leader gauges
        (every 5 s while instances run, at most once a second when idle), never per chunk.
        Every configured partition gets a series, 0 included, so an alert on a partition
        does not depend on the series appearing."""
        store = self.store
        depth = await store.queue_depth()
        ages = await store.oldest_ready_age(range(self.settings.partitions))
        QUEUE_CHUNKS.clear()
        QUEUE_OLDEST_READY.clear()
        for p in range(self.settings.partitions):
            for state in ("READY", "IN_PROGRESS", "ERRORED"):
                QUEUE_CHUNKS.labels(str(p), state).set(0)
        for (p, state), n in depth.items():
            QUEUE_CHUNKS.labels(str(p), state).set(n)
        for p, age in ages.items():
            QUEUE_OLDEST_READY.labels(str(p)).set(age)

    async def instances(self) -> set[int]:
        store = self.store
        active = await store.active_instances()
        etas: dict[str, float] = {}
        now = time.monotonic()
        if now - self._gauges_at >= 5 or not active:
            self._gauges_at = now
            await self.export_gauges(etas)
        if not active:
            self._shown.clear()
            self._retry_at.clear()
            REDUCTIONS_RETRYING.set(0)
            return set()
        ids = [i.id for i in active]
        live = set(ids)
        self.rates = {i: r for i, r in self.rates.items() if i in live}  # finished ones go
        if self._retry_at:
            self._retry_at = {i: t for i, t in self._retry_at.items() if i in live}
        REDUCTIONS_RETRYING.set(len(self._retry_at))
        self._shown = {i: r for i, r in self._shown.items() if i in live}
        counts = await store.step_counts(ids)
        errored = await store.instances_with_errored_chunks(ids)
        decided: list[Decided] = []
        shown: list[Progress] = []
        final: list[Progress] = []  # instances about to fail: progress and errors as they end
        for inst in active:
            try:
                job = self.registry.get(inst.job_name, inst.job_version)
            except UnknownJobError:
                continue  # another daemon may have it; never fail what we cannot read
            p = plan(self._shape(job), inst.status, inst.current_step, counts.get(inst.id, []),
                     inst.id in errored, inst.elapsed, now=time.monotonic(), prev=self.rates.get(inst.id))
            if p.rate_state is not None:
                self.rates[inst.id] = p.rate_state  # the smoothed rate behind the ETA
            decided.append(Decided(inst, job, p))
            last = self._shown.get(inst.id)
            if p.action is Action.FAIL or (p.action in (Action.COMPLETE, Action.FINALIZE)
                                           and p.errors != (last.errors if last else 0)):
                # Its last figures, written now and not at the next progress tick: it is about to
                # end, and its error_count must match its steps' (a COMPLETED one's progress
                # becomes 1 as it completes; only a changed error count costs this write).
                final.append(Progress(inst.id, round(p.progress, 4), _rounded(p.rate), None, p.errors))
            elif p.action is not Action.COMPLETE:
                row = Progress(inst.id, round(p.progress, 4), _rounded(p.rate), _rounded(p.eta), p.errors)
                if self._shown.get(inst.id) != row:  # an instance waiting its turn costs no write
                    shown.append(row)
                if p.eta is not None:
                    etas[job.name] = max(etas.get(job.name, 0.0), p.eta)
        await store.set_progress(final)
        self._shown.update((r.instance_id, r) for r in final)
        publish = await self.apply(decided)
        # Progress is for people and dashboards: once per interval is enough, however often
        # gates wake the pass (back-to-back passes rewriting every running instance's row
        # took a third of the many-small-jobs throughput).
        if now >= self._progress_at:
            self._progress_at = now + max(self.settings.interval, _PROGRESS_EVERY)
            await store.set_progress(shown)
            self._shown.update((r.instance_id, r) for r in shown)
        for job_name, eta in etas.items():
            INSTANCE_ETA.labels(job_name).set(eta)
        return publish

    async def apply(self, decided: Sequence[Decided]) -> set[int]:
        """Applies a pass's decisions, one statement per kind of decision for all instances
        (a pass over thousands of small jobs costs a few round trips, not thousands). Every
        write here is fenced by the leader term (rule 6): a leader paused past its lease
        finds it refused (NotLeader) instead of applying a decision made on old reads."""
        store = self.store
        term = self.term
        by: dict[Action, list[Decided]] = defaultdict(list)
        for d in decided:
            by[d.plan.action].append(d)
        await store.set_instances_status({d.inst.id: d.inst.run for d in by[Action.START]}, I.IN_PROGRESS, term)
        for action, to in ((Action.MARK_ERRORED, I.ERRORED), (Action.CLEAR_ERRORED, I.IN_PROGRESS)):
            moved = await store.set_instances_status({d.inst.id: d.inst.run for d in by[action]}, to, term)
            for d in by[action]:
                if d.inst.id in moved:
                    log.info("instance state change", job=d.job.name, instance_id=d.inst.id, status=to.value)
        moved = await store.finalize([_finish(d, d.job.work_steps) for d in by[Action.FINALIZE]], term)
        for d in by[Action.FINALIZE]:
            if d.inst.id in moved:
                log.info("instance state change", job=d.job.name, instance_id=d.inst.id, status=I.FINALIZE.value)
                self._start_reduction(d.inst, d.job)
            else:
                await self._refused(d, "FINALIZE")
        for d in by[Action.REDUCE]:
            self._start_reduction(d.inst, d.job)  # e.g. a previous leader died mid-reduction
        publish: set[int] = set()
        opened = await store.advance_gates([_finish(d, d.plan.to_step) for d in by[Action.ADVANCE]], term)
        for d in by[Action.ADVANCE]:
            if d.inst.id in opened:
                step = d.job.steps[d.plan.to_step].name
                log.info("gate advanced", job=d.job.name, instance_id=d.inst.id, step=step)
                GATES_ADVANCED.labels(d.job.name, step).inc()
                publish |= opened[d.inst.id]
            else:
                await self._refused(d, f"the gate of step {d.plan.to_step}")
        if opened:
            self.wake.set()  # the next step may already be finished (it was empty)
        for d in by[Action.COMPLETE]:
            if await store.finish_instance(d.inst.id, I.COMPLETED, leader=term, decided=_finish(d, _ALL_STEPS)):
                log.info("instance state change", job=d.job.name, instance_id=d.inst.id, status=I.COMPLETED.value)
                await _handler(d.job.on_complete, d.inst.id, None)
            else:
                await self._refused(d, "COMPLETED")
        for d in by[Action.FAIL]:
            last = await store.last_error(d.inst.id)
            if d.plan.reason:
                msg = d.plan.reason
            else:
                msg = (f"step {d.job.steps[last[0]].name!r} failed: {last[1]}" if last
                       else "a chunk failed")
            if await store.finish_instance(d.inst.id, I.FAILED, error=msg, leader=term,
                                           decided=_finish(d, 0)):
                log.error("instance state change", job=d.job.name, instance_id=d.inst.id, status=I.FAILED.value,
                          error=msg, **({"step": d.job.steps[last[0]].name, "chunk_id": last[2], "attempt": last[3]}
                                        if last else {}))
                await _handler(d.job.on_error, d.inst.id, msg)
        return publish

    async def _refused(self, d: Decided, what: str) -> None:
        """A move the pass decided was refused in SQL. Usually benign (the instance was
        stopped, restarted or moved on meanwhile: the next pass decides afresh); if the
        instance is still in the run and status decided on, rule 10's check refused it: some
        chunk the counters were read as done is not, which must never pass silently."""
        now = await self.store.get_instance(d.inst.id)
        if now is not None and now["run"] == d.inst.run and now["status"] == d.inst.status:
            INVARIANT_REFUSALS.labels(d.job.name).inc()
            log.error("refused to move an instance on: not every chunk of its earlier steps is COMPLETED",
                      job=d.job.name, instance_id=d.inst.id, run=d.inst.run, to=what)

    def _start_reduction(self, inst: InstanceRow, job: Job) -> None:
        if inst.id in self.reducing:
            return
        not_before = self._retry_at.get(inst.id)
        if not_before is not None and time.monotonic() < not_before:
            return  # its last attempt failed: backing off
        self.reducing.add(inst.id)
        self._tg.start_soon(self._reduce, inst, job)

    async def _reduce(self, inst: InstanceRow, job: Job) -> None:
        """Runs the reduction in one transaction that commits only if, at its end, the
        instance is still in FINALIZE and this node still holds the term it started with;
        otherwise everything rolls back, the reduction's own ctx.tx writes included."""
        step = job.steps[-1]
        assert step.kind is StepKind.REDUCE
        term = self.term
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
        if counted and (attempts >= step.max_attempts or isinstance(e, ReportTooLarge)):
            final = f"{msg} (attempt {attempts} of {step.max_attempts})"
            bound.warning("reduction failed", error=final, attempts=attempts)
            REDUCTIONS.labels(job.name, "failed").inc()
            self._retry_at.pop(inst.id, None)
            if await self.store.finish_instance(inst.id, I.FAILED, error=final, leader=term,
                                                decided=Finish(inst.id, inst.run, 0)):
                bound.error("instance state change", status=I.FAILED.value, error=final)  # no chunk: the reduction
                await _handler(job.on_error, inst.id, final)
            return
        delay = backoff_seconds(max(1, attempts), step.backoff_base, step.backoff_max) if counted else 1.0
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
            limit = self.settings.max_report_bytes
            if len(report_json) > limit:
                raise ReportTooLarge(f"the report is {len(report_json):,} bytes of JSON, over the limit of "
                                     f"{limit:,} bytes (CHUNKD_MAX_REPORT_BYTES)")
            for op in ctx.tx.ops:
                await tx.execute(op)
            decided = Finish(inst.id, inst.run, step.index, not job.fail_instance_on_chunk_failure)
            if not await tx.complete(report_json, term, decided):
                raise _Superseded()  # leaving the block rolls the transaction back
        return report


class Decided(NamedTuple):
    inst: InstanceRow
    job: Job
    plan: Plan


_ALL_STEPS = 32767  # smallint's top: every step


def _finish(d: Decided, bound: int) -> Finish:
    return Finish(d.inst.id, d.inst.run, bound, not d.job.fail_instance_on_chunk_failure)


def _rounded(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


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
