"""Per-(instance, step) counter deltas, summed in memory and written in one statement."""
from __future__ import annotations

from collections import defaultdict

CREATED, COMPLETED, FAILED, CANCELLED, ERRORS = range(5)


class CounterDelta:
    def __init__(self) -> None:
        self._rows: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])

    def add(self, instance_id: int, step: int, field: int, n: int = 1) -> None:
        if n:
            self._rows[(instance_id, step)][field] += n

    def __bool__(self) -> bool:
        return bool(self._rows)

    def arrays(self) -> tuple[list[int], ...]:
        keys = sorted(self._rows)  # a fixed order avoids deadlocks between completers
        cols: tuple[list[int], ...] = ([], [], [], [], [], [], [])
        for inst, step in keys:
            cols[0].append(inst)
            cols[1].append(step)
            for i, v in enumerate(self._rows[(inst, step)]):
                cols[2 + i].append(v)
        return cols
