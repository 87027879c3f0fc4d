"""Group commit of single submits (actors/submit_group.py): submits arriving together share
one transaction, and each keeps its own answer and its own error."""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import anyio
import asyncpg
import pytest

from actors.submit_group import SubmitGroup
from storage.types import Created, NewInstance

pytestmark = pytest.mark.anyio


def _new(key: str | None = None, params: str = "{}") -> NewInstance:
    return NewInstance("j", 1, params, False, key, None, 3, 0, b"")


class FakeCreate:
    """Records each transaction's items; a parameter of "bad" breaks the transaction it is in."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[list[NewInstance]] = []
        self.published: list[set[int]] = []
        self.ids = itertools.count(1)
        self.error = error

    async def create(self, items: Sequence[NewInstance]) -> tuple[list[Created], set[int]]:
        self.calls.append(list(items))
        await anyio.sleep(0.01)  # a transaction's round trips: the next group forms meanwhile
        if self.error is not None:
            raise self.error
        if any(i.params_json == "bad" for i in items):
            raise asyncpg.DataError("invalid input")
        return [Created(next(self.ids), True) for _ in items], {len(self.calls) % 4}

    async def publish(self, parts: object) -> None:
        self.published.append(set(parts))  # type: ignore[call-overload]


async def _submit_all(group: SubmitGroup, items: list[NewInstance]) -> list[object]:
    out: list[object] = [None] * len(items)

    async def one(i: int) -> None:
        try:
            out[i] = (await group.create_instances([items[i]]))[0][0]
        except Exception as e:  # noqa: BLE001
            out[i] = e
    async with anyio.create_task_group() as tg:
        for i in range(len(items)):
            tg.start_soon(one, i)
    return out


async def test_concurrent_submits_share_transactions_and_each_gets_its_own_instance() -> None:
    fake = FakeCreate()
    group = SubmitGroup(fake.create, fake.publish)
    results = await _submit_all(group, [_new() for _ in range(32)])
    assert len(fake.calls) <= 4  # not 32 transactions
    ids = [r.instance_id for r in results]  # type: ignore[union-attr]
    assert sorted(ids) == list(range(1, 33))  # each request its own instance
    assert len(fake.published) == len(fake.calls)  # one notification per group, none per request


async def test_a_lone_submit_waits_only_briefly() -> None:
    fake = FakeCreate()
    group = SubmitGroup(fake.create, fake.publish, wait=0.002)
    with anyio.fail_after(1):
        (created,), parts = await group.create_instances([_new()])
    assert created.created and parts == set() and len(fake.calls) == 1


async def test_one_bad_request_fails_alone() -> None:
    fake = FakeCreate()
    group = SubmitGroup(fake.create, fake.publish)
    items = [_new() for _ in range(8)]
    items[3] = _new(params="bad")
    results = await _submit_all(group, items)
    assert isinstance(results[3], asyncpg.DataError)
    assert all(isinstance(r, Created) for i, r in enumerate(results) if i != 3)


async def test_the_database_away_fails_the_whole_group_at_once() -> None:
    fake = FakeCreate(error=ConnectionResetError("gone"))
    group = SubmitGroup(fake.create, fake.publish)
    results = await _submit_all(group, [_new() for _ in range(8)])
    assert all(isinstance(r, ConnectionResetError) for r in results)
    assert len(fake.calls) <= 2  # not retried one by one: every request would fail alike


async def test_requests_with_one_idempotency_key_go_in_different_transactions() -> None:
    fake = FakeCreate()
    group = SubmitGroup(fake.create, fake.publish)
    await _submit_all(group, [_new("k"), _new("k"), _new(), _new("k")])
    for call in fake.calls:
        keys = [i.idempotency_key for i in call if i.idempotency_key is not None]
        assert len(keys) == len(set(keys))
    assert sum(len(c) for c in fake.calls) == 4
