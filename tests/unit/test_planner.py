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
    # a step weighs its chunks times its weight (a per-chunk cost factor)
    shape = JobShape(gated=False, work_steps=2, has_reduction=False, weights=(1, 3))
    assert progress(shape, {0: sc(0, 1, 1), 1: sc(1, 4, 2)}, 0) == (1 + 3 * 2) / (1 + 3 * 4)
    assert progress(shape, {0: sc(0, 1, 1), 1: sc(1, 4, 4)}, 2) == 1.0


def test_first_look_rate_and_eta_are_the_average() -> None:
    p = plan(FREE, "IN_PROGRESS", 0, [sc(0, 1, 1), sc(1, 10, 4)], False, 10.0)
    assert p.rate == 0.5  # 5 completed chunks in 10 s
    assert p.progress == 5 / 11
    assert p.eta is not None and abs(p.eta - 10.0 * (1 - p.progress) / p.progress) < 1e-9


# The job: plan (1 chunk) -> work (100 chunks) -> reduction, 10 work chunks a second.
SYN = JobShape(gated=True, work_steps=2, has_reduction=True, weights=(1, 1, 1))


def test_reduction_is_small_and_progress_follows_chunks() -> None:
    # before: 96 of 100 work chunks showed (1 + 0.96 + 0) / 3 = 65%, a third kept for the reduction
    p = plan(SYN, "IN_PROGRESS", 1, [sc(0, 1, 1), sc(1, 100, 96)], False, 10.0)
    assert 0.94 < p.progress < 0.96
    # an unknown next step is estimated at the size of the step before, not as one chunk
    early = plan(JobShape(gated=True, work_steps=3, has_reduction=False, weights=(1, 1, 1)), "IN_PROGRESS", 1,
                 [sc(0, 1, 1), sc(1, 100, 50)], False, 5.0)
    assert abs(early.progress - 51 / 201) < 1e-9
    # the reduction running (all work done): nearly there, not two thirds
    fin = plan(SYN, "FINALIZE", 2, [sc(0, 1, 1), sc(1, 100, 100)], False, 10.0)
    assert fin.progress > 0.98


def simulate(rates: list[tuple[float, float]], total: int = 100, dt: float = 0.5):  # type: ignore[no-untyped-def]
    """Drive `plan` as maintenance does every `dt` s, chunks completing at the given
    (until_time, chunks_per_second) rates. Yields (time, done, plan)."""
    t, done, state = 0.0, 0.0, None
    while done < total:
        t += dt
        rate = next(r for until, r in rates if t <= until) if t <= rates[-1][0] else rates[-1][1]
        done = min(total, done + rate * dt)
        p = plan(SYN, "IN_PROGRESS", 1, [sc(0, 1, 1), sc(1, total, int(done))], False, t, now=t, prev=state)
        state = p.rate_state
        yield t, int(done), p


def test_eta_at_a_steady_rate_is_the_time_left() -> None:
    # 10 chunks/s for 100 chunks: at 63 done, 3.7 s of work are left
    for t, done, p in simulate([(100.0, 10.0)]):
        if done >= 63:
            assert p.eta is not None and abs(p.eta - (100 - done) / 10) < 0.6, (t, done, p.eta)
            assert p.rate is not None and abs(p.rate - 10) < 0.5
            break


def test_eta_follows_a_slowdown_within_seconds() -> None:
    # 20 chunks/s for 2.5 s (50 chunks), then 2 chunks/s: the whole-run average would still
    # say ~5 chunks/s after 10 s more; the smoothed rate says ~2, so the ETA is ~ (left / 2)
    seen = None
    for t, done, p in simulate([(2.5, 20.0), (1000.0, 2.0)]):
        if t >= 22.5:
            seen = (done, p)
            break
    assert seen is not None
    done, p = seen
    true_left = (100 - done) / 2.0
    average_guess = t * (1 - p.progress) / p.progress
    assert p.eta is not None and abs(p.eta - true_left) < 0.25 * true_left, (p.eta, true_left)
    assert abs(average_guess - true_left) > 0.4 * true_left  # what the old ETA would have said


def test_cancelled_chunks_in_a_running_instance_fail_it_with_the_reason() -> None:
    """Rule 10 (issue 22 row 1): cancelled chunks are never 'done' work in a running instance.
    The old planner counted them as finished and completed the instance over work never run."""
    p = plan(FREE, "IN_PROGRESS", 0, [sc(0, 1, 1), sc(1, 3, 1, cancelled=2)], False, 1.0)
    assert p.action is Action.FAIL
    assert p.reason is not None and "2 of step 1" in p.reason and "restart" in p.reason
    gated = plan(GATED, "IN_PROGRESS", 1, [sc(0, 1, 1), sc(1, 10, 9, cancelled=1)], False, 1.0)
    assert gated.action is Action.FAIL


def test_a_failing_instance_reports_what_completed_and_its_errors() -> None:  # issue 24 row 3
    # 29 of 30 work chunks completed, one failed: the failed one is not progress
    p = plan(FREE, "IN_PROGRESS", 0, [sc(0, 1, 1), sc(1, 30, 29, failed=1, errors=1)], False, 1.0)
    assert p.action is Action.FAIL
    assert p.progress == (1 + 29) / 31 and p.errors == 1
    cancelled = plan(FREE, "IN_PROGRESS", 0, [sc(0, 1, 1), sc(1, 10, 4, cancelled=6)], False, 1.0)
    assert cancelled.progress == (1 + 4) / 11
