"""Bucket width for an instance's throughput chart: about `target` bars whatever the
instance's age, on round widths so neighbouring refreshes keep the same buckets."""
from __future__ import annotations

_WIDTHS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)


def bucket_seconds(duration: float, target: int = 60) -> float:
    want = max(duration, 0.0) / target
    for w in _WIDTHS:
        if w >= want:
            return float(w)
    return float(_WIDTHS[-1] * (int(want // _WIDTHS[-1]) + 1))
