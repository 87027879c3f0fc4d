"""Group commit of single submits: the instances of submits arriving together are created in
one transaction (and their partitions published in one notification) instead of one each.
A submit waits at most `wait` seconds for company when no group is being written; while one
is, the next forms behind it. Each request keeps its own answer: its checks ran before it
joined (actors.instances.submit_many), a request whose idempotency key another of the group
holds waits for the next group (so it meets the first's instance as it would alone), and if
the group's transaction fails for a reason other than the database being away, each request
is written alone, so one request's error is its own."""
from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence

import anyio

from storage.errors import is_transient
from storage.types import Created, NewInstance

Create = Callable[[Sequence[NewInstance]], Awaitable[tuple[list[Created], set[int]]]]
Publish = Callable[[Iterable[int]], Awaitable[None]]

WAIT = 0.002        # seconds a lone submit waits for company, at most
MAX_ITEMS = 500     # instances per group's transaction, at most
FLUSHERS = 2        # groups being written at once, at most (the pool serves the rest)


class _Waiting:
    __slots__ = ("items", "result", "error", "done")

    def __init__(self, items: Sequence[NewInstance]) -> None:
        self.items = items
        self.result: list[Created] = []
        self.error: BaseException | None = None
        self.done = False


class SubmitGroup:
    def __init__(self, create: Create, publish: Publish, *, wait: float = WAIT, max_items: int = MAX_ITEMS,
                 flushers: int = FLUSHERS) -> None:
        self._create, self._publish = create, publish
        self.wait, self.max_items, self.flushers = wait, max_items, flushers
        self._queue: deque[_Waiting] = deque()
        self._writing = 0
        self._changed: anyio.Event | None = None  # made in the event loop, at first use
        self.groups = 0  # transactions written (for tests and figures)

    async def create_instances(self, items: Sequence[NewInstance]) -> tuple[list[Created], set[int]]:
        """Like the store's create_instances, in a transaction shared with concurrent callers;
        the partitions are published by the group (the set returned is empty)."""
        w = _Waiting(items)
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
        return w.result, set()

    async def _flush(self) -> None:
        self._writing += 1
        try:
            # Shielded: this caller writes for the whole group; its own client leaving must
            # not cancel the others' transaction.
            with anyio.CancelScope(shield=True):
                if self.wait > 0 and len(self._queue) < self.max_items // 2:
                    await anyio.sleep(self.wait)
                group = self._take()
                if group:
                    await self._write(group)
        finally:
            self._writing -= 1
            if self._changed is not None:
                self._changed.set()
            self._changed = anyio.Event()

    def _take(self) -> list[_Waiting]:
        group: list[_Waiting] = []
        later: list[_Waiting] = []
        keys: set[str] = set()
        n = 0
        while self._queue and (not group or n + len(self._queue[0].items) <= self.max_items):
            w = self._queue.popleft()
            own = {i.idempotency_key for i in w.items if i.idempotency_key is not None}
            if own & keys:
                later.append(w)  # the next group: it then meets the instance the first created
                continue
            keys |= own
            group.append(w)
            n += len(w.items)
        self._queue.extendleft(reversed(later))
        return group

    async def _write(self, group: list[_Waiting]) -> None:
        self.groups += 1
        try:
            created, parts = await self._create([i for w in group for i in w.items])
        except Exception as e:  # noqa: BLE001 - handed to each request of the group
            if len(group) == 1 or is_transient(e):
                for w in group:
                    w.error, w.done = e, True
                return
            parts = set()
            for w in group:  # one request's content broke the transaction: each alone
                try:
                    w.result, p = await self._create(w.items)
                    parts |= p
                except Exception as e1:  # noqa: BLE001
                    w.error = e1
                w.done = True
        else:
            at = 0
            for w in group:
                w.result = created[at:at + len(w.items)]
                at += len(w.items)
                w.done = True
        if parts:
            try:
                await self._publish(parts)
            except Exception as e:  # noqa: BLE001 - committed, but not announced: as a lone submit would say
                for w in group:
                    if w.error is None:
                        w.error = e
