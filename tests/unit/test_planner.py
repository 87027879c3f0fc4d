from actors.planner import Action, JobShape, plan, progress
from storage.types import StepCounts


def sc(step: int, created: int, completed: int = 0, failed: int = 0, cancelled: int = 0, errors: int = 0) -> StepCounts:
    return StepCounts(step, created, completed, failed, cancelled, errors)


GATED = JobShape(gated=True, work_steps=3, has_reduction=True, weights=(1, 1, 1, 1))
FREE = JobShape(gated=False, work_steps=2, has_reduction=False, weights=(1, 1))


def test_gate_advances_when_current_step_has_nothing_pending() -> None:
    p = plan(GATED, "IN_PROGRESS", 0, [sc(0, 1, 1), sc(1, 10)], False, 1.0)
    assert p.action is Action.ADVANCE and p.to_step == 1


def test_gate_waits_while_chunks_pending() -> None:
    p = plan(GATED, "IN_PROGRESS", 1, [sc(0, 1, 1), sc(1, 10, 9), sc(2, 9)], False, 1.0)
    assert p.action is Action.NONE


def test_empty_step_still_advances() -> None:  # batch2 #3878
    p = plan(GATED, "IN_PROGRESS", 1, [sc(0, 1, 1)], False, 1.0)  # step 0 emitted nothing
    assert p.action is Action.ADVANCE and p.to_step == 2


def test_last_work_step_done_finalizes_with_reduction() -> None:
    p = plan(GATED, "IN_PROGRESS", 2, [sc(0, 1, 1), sc(1, 5, 5), sc(2, 5, 5), sc(3, 5)], False, 1.0)
    assert p.action is Action.FINALIZE


def test_non_gated_completes_when_everything_done() -> None:
    assert plan(FREE, "IN_PROGRESS", 0, [sc(0, 1, 1), sc(1, 3, 2)], False, 1.0).action is Action.NONE
    assert plan(FREE, "IN_PROGRESS", 0, [sc(0, 1, 1), sc(1, 3, 3)], False, 1.0).action is Action.COMPLETE


def test_failed_chunk_fails_instance_unless_job_says_otherwise() -> None:
    counts = [sc(0, 1, 1), sc(1, 3, 2, failed=1)]
    assert plan(FREE, "ERRORED", 0, counts, False, 1.0).action is Action.FAIL
    tolerant = JobShape(gated=False, work_steps=2, has_reduction=False, weights=(1, 1), fail_on_chunk_failure=False)
    assert plan(tolerant, "IN_PROGRESS", 0, counts, False, 1.0).action is Action.COMPLETE


def test_errored_flag_follows_retrying_chunks() -> None:
    counts = [sc(0, 1, 1), sc(1, 3, 1, errors=1)]
    assert plan(FREE, "IN_PROGRESS", 0, counts, True, 1.0).action is Action.MARK_ERRORED
    assert plan(FREE, "ERRORED", 0, counts, False, 1.0).action is Action.CLEAR_ERRORED


def test_finalize_reruns_reduction() -> None:
    assert plan(GATED, "FINALIZE", 2, [], False, 1.0).action is Action.REDUCE


def test_progress_from_counters_and_weights() -> None:
    shape = JobShape(gated=False, work_steps=2, has_reduction=False, weights=(1, 3))
    assert progress(shape, {0: sc(0, 1, 1), 1: sc(1, 4, 2)}, 0) == (1 + 3 * 0.5) / 4
    assert progress(shape, {0: sc(0, 1, 1), 1: sc(1, 4, 4)}, 2) == 1.0


def test_rate_and_eta() -> None:
    p = plan(FREE, "IN_PROGRESS", 0, [sc(0, 1, 1), sc(1, 10, 4)], False, 10.0)
    assert p.rate == 0.5  # 5 completed chunks in 10 s
    assert p.progress == (1 + 0.4) / 2
    assert p.eta is not None and abs(p.eta - 10.0 * (1 - p.progress) / p.progress) < 1e-9
