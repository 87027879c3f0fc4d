"""The InstanceAdvancer duty: reads every active instance's counters, asks the planner
(actors/planner.py) what each needs next, and applies the decisions: start, mark and clear
ERRORED, FINALIZE (and hand the reduction to the Reducer), open gates, complete, fail. Every
write is fenced by the leader term and by the instance's run; rule 10's checks in SQL refuse
a move whose earlier chunks are not all COMPLETED, and such a refusal is counted."""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple

import msgspec

import structlog

from actors.duties import PassContext
from actors.job import Job
from actors.planner import Action, JobShape, Plan, RateState, plan
from actors.reducer import Reducer, _handler
from actors.registry import Registry, UnknownJobError
from metrics import GATES_ADVANCED, INVARIANT_REFUSALS
from storage.states import I
from storage.protocol import EngineStore
from storage.types import Finish, InstanceRow, Progress, StepCounts

log = structlog.get_logger("chunkd.maintenance")

_PROGRESS_EVERY = 1.0  # seconds between progress writes, at least
# Seconds between passes that look at every open instance, not only the changed ones: the
# safety net for a change no marker told (and for ETAs, which age without changes).
FULL_SWEEP_EVERY = 10.0


def shape_of(job: Job) -> JobShape:
    return JobShape(gated=job.gated, work_steps=job.work_steps, has_reduction=job.has_reduction,
                    weights=tuple(s.weight for s in job.steps),
                    fail_on_chunk_failure=job.fail_instance_on_chunk_failure)


def progress_row(instance_id: int, p: Plan, last: Progress | None) -> tuple[bool, Progress | None]:
    """The progress row a pass writes for an instance, if any, and whether it is written now
    (True) or at the next progress tick (False). An instance about to end gets its last
    figures now, so that its error_count matches its steps' (a COMPLETED one's progress
    becomes 1 as it completes; only a changed error count costs this write); one waiting its
    turn, whose figures did not change, costs no write."""
    if p.action is Action.FAIL or (p.action in (Action.COMPLETE, Action.FINALIZE)
                                   and p.errors != (last.errors if last else 0)):
        return True, Progress(instance_id, round(p.progress, 4), _rounded(p.rate), None, p.errors)
    if p.action is Action.COMPLETE:
        return False, None
    row = Progress(instance_id, round(p.progress, 4), _rounded(p.rate), _rounded(p.eta), p.errors)
    return False, (row if last != row else None)


class InstanceAdvancer:
    """A pass looks at the instances whose state can have changed: those whose step counters
    changed since the last pass (the store's change markers, migration 0018), those this
    pass's own moves may have made ready for another (a gate opened on an empty step), and
    reductions whose backoff ended; every `full_every` seconds, and first as a new leader,
    at every open instance, as a safety net. A pass over 20,000 waiting instances thus
    costs what the few that moved cost, not a read and a plan of each."""

    advances = True  # runs in the advancing passes between full ones (actors/maintenance.py)

    def __init__(self, store: EngineStore, registry: Registry, reducer: Reducer, interval: float,
                 full_every: float = FULL_SWEEP_EVERY) -> None:
        """`interval`: the pass interval; progress is written at most once per it (and per
        second)."""
        self.store, self.registry, self.reducer, self.interval = store, registry, reducer, interval
        self.full_every = full_every
        self.rates: dict[int, RateState] = {}  # per instance, for the smoothed ETA (leader-local)
        self._shown: dict[int, Progress] = {}  # per instance, the progress last written
        self._unshown: dict[int, Progress] = {}  # progress computed, to write at the next tick
        self._etas: dict[int, tuple[str, float]] = {}  # per instance: (job, ETA) last computed
        self._progress_at = 0.0
        self._full_at = 0.0       # monotonic time of the next full sweep (0: the next pass)
        self._pending: set[int] = set()  # to look at next pass: taken, or moved by us, not yet planned
        self._open = 0            # open instances at the last full sweep, at least
        self._shapes: dict[tuple[str, int], JobShape] = {}

    def _shape(self, job: Job) -> JobShape:
        shape = self._shapes.get((job.name, job.version))
        if shape is None:
            shape = self._shapes[(job.name, job.version)] = shape_of(job)
        return shape

    def sweep_next(self) -> None:
        """The next pass looks at every open instance (a new term: another leader consumed
        the markers of what it did not finish)."""
        self._full_at = 0.0

    async def run(self, ctx: PassContext) -> set[int]:
        store = self.store
        now = time.monotonic()
        # Taken before the instances are read: a change committed after the take has its
        # marker left for the next pass. Kept in _pending until planned, so a pass that fails
        # half-way loses none.
        self._pending |= await store.take_changed_instances()
        full = now >= self._full_at
        if full:
            self._full_at = now + self.full_every
            active = await store.active_instances()
            self._open = len(active)
            live = {i.id for i in active}
            self.rates = {i: r for i, r in self.rates.items() if i in live}  # finished ones go
            self._shown = {i: r for i, r in self._shown.items() if i in live}
            self._unshown = {i: r for i, r in self._unshown.items() if i in live}
            self._etas = {i: e for i, e in self._etas.items() if i in live}
            self.reducer.forget(live)
        else:
            wanted = self._pending | self.reducer.due()
            active = await store.active_instances_among(sorted(wanted)) if wanted else []
            self._open = max(self._open, len(active))
            for gone in wanted.difference(i.id for i in active):  # ended since
                self._drop(gone)
        ctx.active = self._open
        looked = self._pending
        self._pending = set()
        try:
            publish = await self._advance(active, ctx, now)
        except BaseException:
            self._pending |= looked  # not acted on: the next pass looks again
            raise
        etas = ctx.etas
        for job_name, eta in self._etas.values():
            etas[job_name] = max(etas.get(job_name, 0.0), eta)
        return publish

    def _drop(self, instance_id: int) -> None:
        for d in (self.rates, self._shown, self._unshown, self._etas):
            d.pop(instance_id, None)

    async def _advance(self, active: Sequence[InstanceRow], ctx: PassContext, now: float) -> set[int]:
        store = self.store
        ids = [i.id for i in active]
        counts = await store.step_counts(ids) if ids else {}
        errored = await store.instances_with_errored_chunks(ids) if ids else set()
        decided: list[Decided] = []
        final: list[Progress] = []  # instances about to fail: progress and errors as they end
        for inst in active:
            try:
                job = self.registry.get(inst.job_name, inst.job_version)
            except UnknownJobError:
                continue  # another daemon may have it; never fail what we cannot read
            shape, steps = self._shape(job), counts.get(inst.id, [])
            p = plan(shape, inst.status, inst.current_step, steps, inst.id in errored, inst.elapsed,
                     now=now, prev=self.rates.get(inst.id))
            if p.action is Action.START:
                # Started, and maybe done already (a one-chunk job): what follows is decided
                # now too, applied after the START in this pass (apply's order), each guarded
                # in SQL as on its own; not one pass later.
                decided.append(Decided(inst, job, p))
                inst = msgspec.structs.replace(inst, status=I.IN_PROGRESS.value)
                p = plan(shape, inst.status, inst.current_step, steps, inst.id in errored, inst.elapsed,
                         now=now, prev=self.rates.get(inst.id))
            if p.rate_state is not None:
                self.rates[inst.id] = p.rate_state  # the smoothed rate behind the ETA
            decided.append(Decided(inst, job, p, reduction_inputs(job, steps)))
            now_final, row = progress_row(inst.id, p, self._shown.get(inst.id))
            if now_final and row is not None:
                final.append(row)
                self._unshown.pop(inst.id, None)
            elif row is not None:
                self._unshown[inst.id] = row
            if not now_final and p.action is not Action.COMPLETE and p.eta is not None:
                self._etas[inst.id] = (job.name, p.eta)
            else:
                self._etas.pop(inst.id, None)
        await store.set_progress(final)
        self._shown.update((r.instance_id, r) for r in final)
        publish = await self.apply(decided, ctx)
        # What this pass moved may be ready for the next move without any counter changing
        # (a gate opened on an empty step, a START whose follow-up was refused): looked at again.
        self._pending |= {d.inst.id for d in decided if d.plan.action in _LOOK_AGAIN}
        # Instances moved: more are likely on their way (many small jobs), so the next pass
        # comes soon; it costs what changed, not what is open. Passes that only looked (a big
        # job's counters ticking) keep the interval.
        if any(d.plan.action not in (Action.NONE, Action.REDUCE) for d in decided):
            ctx.wake()
        # Progress is for people and dashboards: once per interval is enough, however often
        # gates wake the pass (back-to-back passes rewriting every running instance's row
        # took a third of the many-small-jobs throughput).
        if now >= self._progress_at and self._unshown:
            self._progress_at = now + max(self.interval, _PROGRESS_EVERY)
            shown = list(self._unshown.values())
            self._unshown = {}
            await store.set_progress(shown)
            self._shown.update((r.instance_id, r) for r in shown)
        return publish

    async def apply(self, decided: Sequence[Decided], ctx: PassContext) -> set[int]:
        """Applies a pass's decisions, one statement per kind of decision for all instances
        (a pass over thousands of small jobs costs a few round trips, not thousands). Every
        write here is fenced by the leader term (rule 6): a leader paused past its lease
        finds it refused (NotLeader) instead of applying a decision made on old reads."""
        store = self.store
        term = ctx.term
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
        reduce: list[tuple[InstanceRow, Job, int | None]] = []
        for d in by[Action.FINALIZE]:
            if d.inst.id in moved:
                log.info("instance state change", job=d.job.name, instance_id=d.inst.id, status=I.FINALIZE.value)
                reduce.append((d.inst, d.job, d.inputs))
            else:
                await self._refused(d, "FINALIZE")
        # and those in FINALIZE already (e.g. a previous leader died mid-reduction)
        reduce += [(d.inst, d.job, d.inputs) for d in by[Action.REDUCE]]
        self.reducer.start_many(reduce, term, ctx.spawn)
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
            ctx.wake()  # the next step may already be finished (it was empty)
        completed = await store.complete_instances([_finish(d, _ALL_STEPS) for d in by[Action.COMPLETE]], term)
        for d in by[Action.COMPLETE]:
            if d.inst.id in completed:
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


class Decided(NamedTuple):
    inst: InstanceRow
    job: Job
    plan: Plan
    inputs: int | None = None  # the reduction's input chunks, as the counters read (None: unknown)


def reduction_inputs(job: Job, steps: Sequence[StepCounts]) -> int | None:
    """The chunks a job's reduction reads (those created for its last step), if it has one."""
    if not job.has_reduction:
        return None
    last = len(job.steps) - 1
    return sum(s.created for s in steps if s.step == last)


_LOOK_AGAIN = frozenset({Action.START, Action.MARK_ERRORED, Action.CLEAR_ERRORED, Action.FINALIZE, Action.ADVANCE})
_ALL_STEPS = 32767  # smallint's top: every step


def _finish(d: Decided, bound: int) -> Finish:
    return Finish(d.inst.id, d.inst.run, bound, not d.job.fail_instance_on_chunk_failure)


def _rounded(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


