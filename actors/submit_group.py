"""Group commit of single submits: the instances of submits arriving together are created in
one transaction (and their partitions published in one notification) instead of one each.
A submit waits at most `wait` seconds for company when no group is being written; while one
is, the next forms behind it. Each request keeps its own answer: its checks ran before it
joined (actors.instances.submit_many), a request whose idempotency key another of the group
holds waits for the next group (so it meets the first's instance as it would alone), and if
the group's transaction fails for a reason other than the database being away, each request
is written alone, so one request's error is its own."""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence

from actors.group_commit import GroupCommit, Waiting
from storage.errors import is_transient
from storage.types import Created, NewInstance

Create = Callable[[Sequence[NewInstance]], Awaitable[tuple[list[Created], set[int]]]]
Publish = Callable[[Iterable[int]], Awaitable[None]]

WAIT = 0.002        # seconds a lone submit waits for company, at most
MAX_ITEMS = 500     # instances per group's transaction, at most
FLUSHERS = 2        # groups being written at once, at most (the pool serves the rest)


class SubmitGroup(GroupCommit[Sequence[NewInstance]]):
    def __init__(self, create: Create, publish: Publish, *, wait: float = WAIT, max_items: int = MAX_ITEMS,
                 flushers: int = FLUSHERS) -> None:
        super().__init__(wait=wait, max_items=max_items, flushers=flushers)
        self._create, self._publish = create, publish

    async def create_instances(self, items: Sequence[NewInstance]) -> tuple[list[Created], set[int]]:
        """Like the store's create_instances, in a transaction shared with concurrent callers;
        the partitions are published by the group (the set returned is empty)."""
        return await self.join(items, len(items)), set()

    def _take(self) -> list[Waiting[Sequence[NewInstance]]]:
        group: list[Waiting[Sequence[NewInstance]]] = []
        later: list[Waiting[Sequence[NewInstance]]] = []
        keys: set[str] = set()
        n = 0
        while self._queue and (not group or n + self._queue[0].size <= self.max_items):
            w = self._queue.popleft()
            own = {i.idempotency_key for i in w.payload if i.idempotency_key is not None}
            if own & keys:
                later.append(w)  # the next group: it then meets the instance the first created
                continue
            keys |= own
            group.append(w)
            n += w.size
        self._queue.extendleft(reversed(later))
        return group

    async def _write(self, group: list[Waiting[Sequence[NewInstance]]]) -> None:
        try:
            created, parts = await self._create([i for w in group for i in w.payload])
        except Exception as e:  # noqa: BLE001 - handed to each request of the group
            if len(group) == 1 or is_transient(e):
                for w in group:
                    w.error, w.done = e, True
                return
            parts = set()
            for w in group:  # one request's content broke the transaction: each alone
                try:
                    w.result, p = await self._create(w.payload)
                    parts |= p
                except Exception as e1:  # noqa: BLE001
                    w.error = e1
                w.done = True
        else:
            at = 0
            for w in group:
                w.result = created[at:at + w.size]
                at += w.size
                w.done = True
        if parts:
            try:
                await self._publish(parts)
            except Exception as e:  # noqa: BLE001 - committed, but not announced: as a lone submit would say
                for w in group:
                    if w.error is None:
                        w.error = e
