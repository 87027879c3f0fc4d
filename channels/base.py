"""The channel protocol and the per-partition wake-up signal consumers wait on."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

import anyio


class PartitionSignal:
    """A level-triggered wake-up: set() any number of times, wait() returns once per burst."""

    __slots__ = ("_event", "_flag")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._flag = False

    def set(self) -> None:
        self._flag = True
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """True if signalled, False on timeout; clears the signal either way."""
        if not self._flag:
            with anyio.move_on_after(timeout):
                await self._event.wait()
        hit = self._flag
        self._flag = False
        if self._event.is_set():
            self._event = anyio.Event()
        return hit


class Channel(Protocol):
    name: str
    partitions: int
    assignment_changed: anyio.Event

    async def prepare(self) -> int:
        """Connect/create what the transport needs; returns the partition count to use."""

    def owns(self, partition: int) -> bool:
        """Does this daemon consume `partition` now? (Kafka decides; Postgres: always.)"""

    def acked(self, partition: int) -> None:
        """The partition's consumer has claimed after the hints received so far."""

    def signal(self, partition: int) -> PartitionSignal:
        """The wake-up for a partition this daemon consumes."""

    async def publish(self, partitions: Iterable[int]) -> None:
        """Hint that these partitions have READY chunks. Call only after the commit."""

    async def ring_leader(self) -> None:
        """Tell the maintenance leader, on whichever daemon, that a step closed (its advancing
        pass comes now). Best effort, after the commit: unheard, the leader's next full pass
        sees the change."""

    def on_leader_rung(self, ring: Callable[[], None]) -> None:
        """What a ring_leader heard here calls (this daemon's maintenance doorbell)."""

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Receive notifications until cancelled."""

    def connected(self) -> bool: ...


class AllPartitions:
    """Ownership for transports where every daemon consumes every partition."""

    partitions: int
    assignment_changed: anyio.Event

    async def prepare(self) -> int:
        return self.partitions

    def owns(self, partition: int) -> bool:
        return 0 <= partition < self.partitions

    def acked(self, partition: int) -> None:
        return None


class LocalSignals:
    """Signals for partitions 0..n-1, shared by the channel implementations."""

    def __init__(self, partitions: int) -> None:
        self._signals = [PartitionSignal() for _ in range(partitions)]

    def signal(self, partition: int) -> PartitionSignal:
        return self._signals[partition]

    def wake(self, partitions: Iterable[int]) -> None:
        n = len(self._signals)
        for p in partitions:
            if 0 <= p < n:
                self._signals[p].set()

    def wake_all(self) -> None:
        for s in self._signals:
            s.set()
