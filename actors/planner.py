"""Maintenance decisions for one instance: pure, unit-tested. The maintenance actor
reads the counters, asks `plan`, and applies the answer with guarded statements."""
from __future__ import annotations

import enum

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


class Plan(msgspec.Struct, frozen=True):
    action: Action
    to_step: int = 0
    progress: float = 0.0
    rate: float | None = None
    eta: float | None = None
    errors: int = 0


def progress(shape: JobShape, counts: dict[int, StepCounts], finished_through: int) -> float:
    """Weighted share of steps done. `finished_through`: steps below it are known finished."""
    total_w = sum(shape.weights)
    done = 0.0
    for i, w in enumerate(shape.weights):
        c = counts.get(i)
        if c is not None and c.created > 0:
            done += w * (c.created - c.pending) / c.created
        elif i < finished_through:
            done += w
    return min(1.0, done / total_w) if total_w else 0.0


def plan(shape: JobShape, status: str, current_step: int, counts_list: list[StepCounts],
         has_errored_chunks: bool, elapsed: float) -> Plan:
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
    prog = progress(shape, counts, finished_through)
    rate = completed / elapsed if elapsed > 0 and completed else None
    eta = elapsed * (1 - prog) / prog if prog > 0 else None
    base = dict(progress=prog, rate=rate, eta=eta, errors=errors)

    if status == I.FINALIZE.value:
        return Plan(Action.REDUCE, **base)
    if status == I.QUEUED.value:
        started = any(c.completed or c.failed or c.errors for c in counts_list)
        return Plan(Action.START if started else Action.NONE, **base)

    failed = sum(counts[s].failed for s in work if s in counts)
    if failed and shape.fail_on_chunk_failure:
        return Plan(Action.FAIL, **base)

    if finished_through >= shape.work_steps:
        return Plan(Action.FINALIZE if shape.has_reduction else Action.COMPLETE, **base)
    if shape.gated and finished_through > current_step:
        return Plan(Action.ADVANCE, to_step=current_step + 1, **base)
    if has_errored_chunks and status == I.IN_PROGRESS.value:
        return Plan(Action.MARK_ERRORED, **base)
    if not has_errored_chunks and status == I.ERRORED.value:
        return Plan(Action.CLEAR_ERRORED, **base)
    return Plan(Action.NONE, **base)
