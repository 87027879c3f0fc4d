"""Group commit: callers arriving together share one transaction. A caller joins a queue and
waits; while fewer than `flushers` groups are being written, a waiting caller writes the next
group for everyone in it (after waiting at most `wait` seconds for company when the queue is
short). Each caller gets its own result or error back. Subclasses say how a group is taken
from the queue and written (actors/submit_group.py: submits; actors/reducer.py: reports)."""
from __future__ import annotations

from collections import deque
from typing import Any, Generic, TypeVar

import anyio

P = TypeVar("P")


class Waiting(Generic[P]):
    """One caller in the queue: what it brings (`payload`, `size` items of it), and what it
    gets back."""
    __slots__ = ("payload", "size", "result", "error", "done")

    def __init__(self, payload: P, size: int = 1) -> None:
        self.payload = payload
        self.size = size
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False


class GroupCommit(Generic[P]):
    def __init__(self, *, wait: float, max_items: int, flushers: int) -> None:
        self.wait, self.max_items, self.flushers = wait, max_items, flushers
        self._queue: deque[Waiting[P]] = deque()
        self._writing = 0
        self._changed: anyio.Event | None = None  # made in the event loop, at first use
        self.groups = 0  # transactions written (for tests and figures)

    async def join(self, payload: P, size: int = 1) -> Any:
        """Waits until a group holding `payload` is written; its result, or its error raised."""
        w = Waiting(payload, size)
        self._queue.append(w)
        if self._changed is None:
            self._changed = anyio.Event()
        while not w.done:
            if self._writing < self.flushers and self._queue:
                await self._flush()
            else:
                assert self._changed is not None
                await self._changed.wait()
        if w.error is not None:
            raise w.error
        return w.result

    async def _flush(self) -> None:
        self._writing += 1
        try:
            # Shielded: this caller writes for the whole group; its own cancellation (a client
            # leaving) must not cancel the others' transaction.
            with anyio.CancelScope(shield=True):
                if self.wait > 0 and len(self._queue) < self.max_items // 2:
                    await anyio.sleep(self.wait)
                # another flusher may have taken everything meanwhile: then there is nothing to write
                group = self._take() if self._queue else []
                if group:
                    self.groups += 1
                    try:
                        await self._write(group)
                    except Exception as e:  # noqa: BLE001 - a writer that raised still answers everyone
                        for w in group:
                            if not w.done:
                                w.error, w.done = e, True
        finally:
            self._writing -= 1
            if self._changed is not None:
                self._changed.set()
            self._changed = anyio.Event()

    def _take(self) -> list[Waiting[P]]:
        """The next group: callers in order, up to max_items items (at least one caller)."""
        group: list[Waiting[P]] = []
        n = 0
        while self._queue and (not group or n + self._queue[0].size <= self.max_items):
            w = self._queue.popleft()
            group.append(w)
            n += w.size
        return group

    async def _write(self, group: list[Waiting[P]]) -> None:
        """Writes the group and sets each caller's result or error (and done)."""
        raise NotImplementedError
