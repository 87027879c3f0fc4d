"""Retry decisions: pure functions, unit-tested."""
from __future__ import annotations

from storage.states import C


def backoff_seconds(failures: int, base: float, cap: float) -> float:
    """Delay before retry number `failures` (1-based): base, 2*base, 4*base, ... capped."""
    return min(cap, base * (2 ** max(0, failures - 1)))


def after_error(failures_before: int, max_attempts: int, *, permanent: bool,
                base: float, cap: float) -> tuple[C, float]:
    """The state a chunk goes to when its step raised, and the delay before it may run again."""
    failures = failures_before + 1
    if permanent or failures >= max_attempts:
        return C.FAILED, 0.0
    return C.ERRORED, backoff_seconds(failures, base, cap)
