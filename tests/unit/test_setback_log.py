"""The completer's log of chunk failures: loud enough to be seen, bounded in a storm."""
from __future__ import annotations

from structlog.testing import capture_logs

from actors.completer import SetbackLog
from actors.engine import Outcome
from storage.states import C
from storage.types import Setback, Success


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def setback(cid: int, state: C, attempt: int = 2) -> Outcome:
    return Outcome(Setback(cid, attempt, 7, 1, int(state), True, 0.0, f"RuntimeError: boom {cid}"), "acme.export",
                   "write", 0, 0.0)


def test_each_failure_is_a_warning_with_job_instance_chunk_and_attempt() -> None:
    log = SetbackLog(Clock())
    ok = Outcome(Success(chunk_id=1, attempt=1, instance_id=7, step=1), "acme.export", "write", 0, 0.0)
    with capture_logs() as logs:
        log.note([ok, setback(2, C.FAILED), setback(3, C.ERRORED, 1), setback(4, C.POLL_WAITING)],
                 {2: int(C.FAILED), 3: int(C.ERRORED), 4: int(C.POLL_WAITING)})
    assert [(x["log_level"], x["event"], x["chunk_id"], x["attempt"]) for x in logs] == [
        ("warning", "chunk failed", 2, 2), ("warning", "chunk errored; it will be retried", 3, 1)]
    assert logs[0]["job"] == "acme.export" and logs[0]["instance_id"] == 7 and logs[0]["step"] == "write"
    assert logs[0]["error"] == "RuntimeError: boom 2"


def test_a_storm_is_cut_to_a_few_lines_a_second_and_a_summary() -> None:
    clock = Clock()
    log = SetbackLog(clock)
    with capture_logs() as logs:
        log.note([setback(i, C.ERRORED) for i in range(1000)], {i: int(C.ERRORED) for i in range(1000)})
        assert len(logs) == SetbackLog.PER_JOB and log.pending
        log.summarize_due()
        assert len(logs) == SetbackLog.PER_JOB  # the window is not over yet
        clock.t += SetbackLog.WINDOW
        log.summarize_due()
    assert logs[-1]["event"] == "chunk failures suppressed" and logs[-1]["suppressed"] == 1000 - SetbackLog.PER_JOB
    assert logs[-1]["log_level"] == "warning" and logs[-1]["job"] == "acme.export"
    assert not log.pending
    with capture_logs() as logs:  # a new window logs again
        log.note([setback(5000, C.FAILED)], {5000: int(C.FAILED)})
    assert [x["event"] for x in logs] == ["chunk failed"]
