"""In-process channel for unit tests and single-process use."""
from __future__ import annotations

from collections.abc import Callable, Iterable

import anyio

from channels.base import AllPartitions, LocalSignals, PartitionSignal


class MemoryChannel(AllPartitions):
    name = "memory"

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.assignment_changed = anyio.Event()
        self._local = LocalSignals(partitions)
        self.published: list[int] = []
        self._rung: Callable[[], None] = lambda: None

    def signal(self, partition: int) -> PartitionSignal:
        return self._local.signal(partition)

    async def publish(self, partitions: Iterable[int]) -> None:
        parts = list(partitions)
        self.published.extend(parts)
        self._local.wake(parts)

    async def ring_leader(self) -> None:
        self._rung()

    def on_leader_rung(self, ring: Callable[[], None]) -> None:
        self._rung = ring

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await anyio.sleep_forever()

    def connected(self) -> bool:
        return True

    async def close(self) -> None:
        return None
