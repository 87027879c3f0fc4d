"""Maintenance decisions for one instance: pure, unit-tested. The maintenance actor
reads the counters, asks `plan`, and applies the answer with guarded statements."""
from __future__ import annotations

import enum
import math

import msgspec

from storage.states import I
from storage.types import StepCounts


class Action(str, enum.Enum):
    NONE = "none"
    START = "start"              # QUEUED -> IN_PROGRESS
    MARK_ERRORED = "errored"     # IN_PROGRESS -> ERRORED
    CLEAR_ERRORED = "cleared"    # ERRORED -> IN_PROGRESS
    ADVANCE = "advance"          # open the gate of step `to_step`
    FINALIZE = "finalize"        # -> FINALIZE, then run the reduction
    REDUCE = "reduce"            # in FINALIZE: (re)run the reduction
    COMPLETE = "complete"
    FAIL = "fail"


class JobShape(msgspec.Struct, frozen=True):
    gated: bool
    work_steps: int
    has_reduction: bool
    weights: tuple[float, ...]
    fail_on_chunk_failure: bool = True


# The ETA follows the rate of roughly the last TAU seconds of work (an exponentially weighted
# moving average), so a job that slows down or speeds up is not judged by its whole past.
TAU = 5.0
# The reduction reads every chunk once but writes one report: it counts as this share of the
# work steps' chunks (at least one chunk's worth), not as a full step.
REDUCTION_SHARE = 0.01


class RateState(msgspec.Struct, frozen=True):
    """What the previous pass saw, for the smoothed rate (kept per instance by maintenance)."""
    at: float                       # monotonic seconds
    units: float                    # weighted work done by then (chunk units)
    chunks: int                     # work chunks completed by then
    unit_rate: float | None = None  # smoothed units per second
    chunk_rate: float | None = None  # smoothed chunks per second


class Plan(msgspec.Struct, frozen=True):
    action: Action
    to_step: int = 0
    progress: float = 0.0
    rate: float | None = None
    eta: float | None = None
    errors: int = 0
    rate_state: RateState | None = None
    reason: str | None = None    # FAIL: why, when it is not a chunk's own error


def step_work(shape: JobShape, counts: dict[int, StepCounts], finished_through: int) -> list[tuple[float, float]]:
    """(total, done) work per step in chunk units (done: chunks COMPLETED; failed and
    cancelled ones are not work done): a step weighs its chunk count times its
    `weight` (a per-chunk cost factor, default 1). A step with no chunks yet is estimated at the
    chunk count of the step before it; a finished empty step weighs nothing."""
    out: list[tuple[float, float]] = []
    prev = 1.0
    for i in range(shape.work_steps):
        w = shape.weights[i] if i < len(shape.weights) else 1.0
        c = counts.get(i)
        if c is not None and c.created > 0:
            # done = completed: a failed or cancelled chunk is not progress
            out.append((w * c.created, w * c.completed))
            prev = float(c.created)
        elif i < finished_through:
            out.append((0.0, 0.0))
        else:
            out.append((w * prev, 0.0))
    if shape.has_reduction:
        w = shape.weights[shape.work_steps] if shape.work_steps < len(shape.weights) else 1.0
        size = w * max(1.0, REDUCTION_SHARE * sum(t for t, _ in out))
        done = finished_through > shape.work_steps  # the reduction itself has finished
        out.append((size, size if done else 0.0))
    return out


def progress(shape: JobShape, counts: dict[int, StepCounts], finished_through: int) -> float:
    """Share of the work done, weighted by chunks (see `step_work`). `finished_through`: steps
    below it are known finished."""
    work = step_work(shape, counts, finished_through)
    total = sum(t for t, _ in work)
    return min(1.0, sum(d for _, d in work) / total) if total else 0.0


def smooth(prev: RateState | None, at: float, units: float, chunks: int) -> RateState:
    """Fold one observation into the exponentially weighted rates."""
    if prev is None or at <= prev.at:
        return RateState(at, units, chunks, prev.unit_rate if prev else None, prev.chunk_rate if prev else None)
    dt = at - prev.at
    a = 1.0 - math.exp(-dt / TAU)
    u, c = max(0.0, units - prev.units) / dt, max(0, chunks - prev.chunks) / dt
    ur = u if prev.unit_rate is None else prev.unit_rate + a * (u - prev.unit_rate)
    cr = c if prev.chunk_rate is None else prev.chunk_rate + a * (c - prev.chunk_rate)
    return RateState(at, units, chunks, ur, cr)


def plan(shape: JobShape, status: str, current_step: int, counts_list: list[StepCounts],
         has_errored_chunks: bool, elapsed: float, *, now: float | None = None,
         prev: RateState | None = None) -> Plan:
    """`now` (monotonic seconds) and `prev` (the last pass's `rate_state`) give the smoothed
    rate and ETA; without them both come from the average over `elapsed`."""
    counts = {c.step: c for c in counts_list}
    work = range(shape.work_steps)
    errors = sum(c.errors for c in counts_list)
    completed = sum(c.completed for c in counts_list if c.step < shape.work_steps)

    def pending(step: int) -> int:
        c = counts.get(step)
        return c.pending if c is not None else 0

    if shape.gated:
        finished_through = current_step + (1 if pending(current_step) == 0 else 0)
    else:
        finished_through = shape.work_steps if all(pending(s) == 0 for s in work) else 0
    work_units = step_work(shape, counts, finished_through)
    total = sum(t for t, _ in work_units)
    done = sum(d for _, d in work_units)
    prog = min(1.0, done / total) if total else 0.0
    state = smooth(prev, now, done, completed) if now is not None else None
    if state is not None and state.unit_rate is not None and state.chunk_rate is not None:
        rate: float | None = state.chunk_rate
        eta = (total - done) / state.unit_rate if state.unit_rate > 0 else None
    else:  # the first look at an instance: its average so far
        rate = completed / elapsed if elapsed > 0 and completed else None
        eta = elapsed * (1 - prog) / prog if prog > 0 else None
    base = dict(progress=prog, rate=rate, eta=eta, errors=errors, rate_state=state)

    if status == I.FINALIZE.value:
        return Plan(Action.REDUCE, **base)
    if status == I.QUEUED.value:
        started = any(c.completed or c.failed or c.errors for c in counts_list)
        return Plan(Action.START if started else Action.NONE, **base)

    failed = sum(counts[s].failed for s in work if s in counts)
    if failed and shape.fail_on_chunk_failure:
        return Plan(Action.FAIL, **base)
    # A running instance never holds CANCELLED chunks (a cancel ends it; a restart runs them
    # again; a late release for an older run is handed back READY). If one does, the result
    # would silently miss that work: fail loudly instead, and a restart runs them (rule 10).
    cancelled = [c for c in counts_list if c.cancelled]
    if cancelled:
        where = ", ".join(f"{c.cancelled} of step {c.step}" for c in cancelled)
        return Plan(Action.FAIL, reason=f"chunks were cancelled while the instance ran ({where}); restart the "
                                        f"instance to run them", **base)

    if finished_through >= shape.work_steps:
        return Plan(Action.FINALIZE if shape.has_reduction else Action.COMPLETE, **base)
    if shape.gated and finished_through > current_step:
        return Plan(Action.ADVANCE, to_step=current_step + 1, **base)
    if has_errored_chunks and status == I.IN_PROGRESS.value:
        return Plan(Action.MARK_ERRORED, **base)
    if not has_errored_chunks and status == I.ERRORED.value:
        return Plan(Action.CLEAR_ERRORED, **base)
    return Plan(Action.NONE, **base)
