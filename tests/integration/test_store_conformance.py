"""One suite, two stores: the Postgres store (storage/store.py) and the in-memory one
(storage/memory.py, which chunkd.testing runs jobs on) must agree on every rule the engine
relies on: claims, fencing by attempt, setbacks, counters, ended and restarted instances,
runs, and rule 10 (nothing moves on over chunks that are not COMPLETED). River's driver
test suite is the model. The memory half needs no database."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from storage.memory import MemoryStore
from storage.states import SETBACK_BY_ATTEMPTS, C, I
from storage.store import Store
from storage.types import ClaimedChunk, Finish, LeaderTerm, NotLeader, Reduced, Setback, StepCounts, Success, TxOp

pytestmark = pytest.mark.anyio
ALL = 32767


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """A store plus the few looks and nudges a test needs that the engine never makes."""

    def __init__(self, store: Any, kind: str) -> None:
        self.store, self.kind = store, kind
        self.node = 1

    async def state(self, cid: int) -> C:
        if self.kind == "memory":
            return C(self.store.chunks[cid].state)
        return C(await self.store.pool.fetchval("SELECT state FROM chunkd_chunk WHERE id = $1", cid))

    async def expire(self, cid: int) -> None:
        if self.kind == "memory":
            self.store.chunks[cid].lease_until = self.store.clock() - 1
        else:
            await self.store.pool.execute(
                "UPDATE chunkd_chunk SET lease_until = now() - interval '1 second' WHERE id = $1", cid)

    async def make_due(self) -> None:
        if self.kind == "memory":
            for c in self.store.chunks.values():
                if c.next_run_at is not None:
                    c.next_run_at = self.store.clock() - 1
        else:
            await self.store.pool.execute(
                "UPDATE chunkd_chunk SET next_run_at = now() - interval '1 second' WHERE next_run_at IS NOT NULL")

    async def claim(self, limit: int = 100) -> list[ClaimedChunk]:
        return [c for p in range(self.store.partitions) for c in await self.store.claim(p, limit, self.node, 30)]

    async def counts(self, iid: int) -> dict[int, tuple[int, ...]]:
        got: list[StepCounts] = (await self.store.step_counts([iid])).get(iid, [])
        return {c.step: (c.created, c.completed, c.failed, c.cancelled, c.errors) for c in got}

    async def instance(self, iid: int) -> dict[str, Any]:
        row = await self.store.get_instance(iid)
        assert row is not None
        return row


@pytest.fixture(params=["memory", "postgres"])
def backend(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """(kind, dsn): a fresh database only for the Postgres half (resolved here, outside the loop)."""
    return request.param, request.getfixturevalue("dsn") if request.param == "postgres" else None


@pytest.fixture
async def h(backend: tuple[str, str | None]) -> AsyncIterator[Harness]:
    kind, dsn = backend
    if dsn is None:
        yield Harness(MemoryStore(2, Clock()), kind)
        return
    store = await Store.open(dsn, partitions=2)
    harness = Harness(store, "postgres")
    harness.node = await store.register_node("conformance", 1)
    try:
        yield harness
    finally:
        await store.close()


async def _instance(h: Harness, *, gated: bool = False, max_attempts: int = 3) -> int:
    iid, created, part = await h.store.create_instance("test.job", 1, '{"n": 1}', gated, None, b"", max_attempts)
    assert created and part is not None
    return iid


def _ok(c: ClaimedChunk, children: list[bytes] = (), *, attempt: int | None = None,  # type: ignore[assignment]
        gated: bool = False, max_attempts: int = 3) -> Success:
    return Success(c.id, c.attempt if attempt is None else attempt, c.instance_id, c.step, list(children), gated,
                   max_attempts)


def _back(c: ClaimedChunk, state: int = SETBACK_BY_ATTEMPTS, *, failure: bool = True, attempt: int | None = None,
          message: str | None = "boom") -> Setback:
    return Setback(c.id, c.attempt if attempt is None else attempt, c.instance_id, c.step, state, failure, 0.0,
                   message)


async def test_a_claim_takes_each_ready_chunk_once(h: Harness) -> None:
    iid = await _instance(h)
    (c,) = await h.claim()
    assert (c.instance_id, c.step, c.attempt, c.failures) == (iid, 0, 1, 0)
    assert await h.state(c.id) == C.IN_PROGRESS
    assert await h.claim() == []
    assert await h.counts(iid) == {0: (1, 0, 0, 0, 0)}
    await h.store.mark_started([iid])
    assert (await h.instance(iid))["status"] == I.IN_PROGRESS.value


async def test_a_stale_attempt_is_refused_and_children_are_written_once(h: Harness) -> None:
    iid = await _instance(h)
    (c,) = await h.claim()
    stale = await h.store.record_outcomes([_ok(c, [b"\x01"], attempt=c.attempt + 1)], [])
    assert (stale.completed, stale.refused, stale.accepted) == (0, 1, set())
    assert await h.state(c.id) == C.IN_PROGRESS
    res = await h.store.record_outcomes([_ok(c, [b"\x01", b"\x02"])], [])
    assert (res.completed, res.children, res.accepted) == (1, 2, {c.id})
    again = await h.store.record_outcomes([_ok(c, [b"\x03"])], [_back(c)])
    assert (again.completed, again.refused) == (0, 2)
    assert await h.counts(iid) == {0: (1, 1, 0, 0, 0), 1: (2, 0, 0, 0, 0)}
    children = await h.claim()
    assert sorted(k.data for k in children) == [b"\x01", b"\x02"] and {k.step for k in children} == {1}


async def test_two_results_of_one_chunk_in_a_batch_complete_it_once(h: Harness) -> None:
    """A stale attempt's result, then the current attempt's twice, in one completer batch: the
    current one completes the chunk and counts once, with its children once (rule 10)."""
    iid = await _instance(h)
    (old,) = await h.claim()
    await h.expire(old.id)
    assert (await h.store.rescue_expired(100))[0] == 1
    (cur,) = await h.claim()
    assert (cur.id, cur.attempt) == (old.id, old.attempt + 1)
    res = await h.store.record_outcomes([_ok(old, [b"\x09"]), _ok(cur, [b"\x01"]), _ok(cur, [b"\x02"])], [])
    assert (res.completed, res.refused, res.children, res.accepted) == (1, 2, 1, {cur.id})
    assert await h.state(cur.id) == C.COMPLETED
    assert (await h.counts(iid))[0][:2] == (1, 1) and (await h.counts(iid))[1] == (1, 0, 0, 0, 0)
    assert [k.data for k in await h.claim()] == [b"\x01"]


async def test_a_batch_names_the_steps_whose_last_open_chunk_it_ended(h: Harness) -> None:
    """Recorded.closed: the completer rings maintenance's doorbell on it (an instance may move
    on now). A step closes when its last open chunk ends (completed, or failed), by either
    write path (a bare completion; one with children or setbacks), and not before."""
    iid = await _instance(h)
    (first,) = await h.claim()
    res = await h.store.record_outcomes([_ok(first, [b"\x01", b"\x02", b"\x03"])], [])
    assert res.closed == {(iid, 0)}                       # with children: the full path
    a, b, c = sorted(await h.claim(), key=lambda k: k.id)
    res = await h.store.record_outcomes([_ok(a)], [])
    assert res.accepted == {a.id} and res.closed == set()  # two of step 1 still open
    res = await h.store.record_outcomes([], [_back(b, int(C.FAILED))])
    assert res.failed == 1 and res.closed == set()
    res = await h.store.record_outcomes([_ok(c)], [])
    assert res.closed == {(iid, 1)}                       # the bare path
    stale = await h.store.record_outcomes([_ok(c)], [])
    assert stale.refused == 1 and stale.closed == set()  # a refused result closes nothing
    other = await _instance(h, max_attempts=1)
    (last,) = await h.claim()
    res = await h.store.record_outcomes([], [_back(last)])
    assert res.failed == 1 and res.closed == {(other, 0)}  # closed by its last chunk FAILING


async def test_setbacks_retry_then_fail_and_poll_waits_do_not_count(h: Harness) -> None:
    iid = await _instance(h, max_attempts=2)
    (c,) = await h.claim()
    res = await h.store.record_outcomes([], [_back(c, int(C.POLL_WAITING), failure=False, message=None)])
    assert res.setback_states == {c.id: int(C.POLL_WAITING)} and res.poll_waiting == 1
    await h.make_due()
    await h.store.release_due(100)
    (c,) = await h.claim()
    assert (c.attempt, c.failures) == (2, 0)
    res = await h.store.record_outcomes([], [_back(c)])
    assert res.setback_states == {c.id: int(C.ERRORED)}
    assert await h.store.instances_with_errored_chunks([iid]) == {iid}
    assert await h.claim() == []     # not before its time
    await h.make_due()
    parts, retried = await h.store.release_due(100)
    assert sum(retried.values()) == 1 and parts
    (c,) = await h.claim()
    assert (c.attempt, c.failures) == (3, 1)
    res = await h.store.record_outcomes([], [_back(c, message="boom again")])
    assert res.setback_states == {c.id: int(C.FAILED)}            # failures reached max_attempts
    assert await h.counts(iid) == {0: (1, 0, 1, 0, 2)}
    assert (await h.store.last_error(iid))[:2] == (0, "boom again")  # type: ignore[index]


async def test_an_expired_lease_is_rescued_and_counted(h: Harness) -> None:
    iid = await _instance(h, max_attempts=2)
    (c,) = await h.claim()
    await h.expire(c.id)
    rescued, failed, _, _ = await h.store.rescue_expired(100)
    assert (rescued, failed) == (1, 0) and await h.state(c.id) == C.READY
    (c,) = await h.claim()
    await h.expire(c.id)
    await h.store.mark_chunk_started(c.id, c.attempt)
    rescued, failed, _, lost = await h.store.rescue_expired(100)
    assert (rescued, failed) == (1, 1) and [x[1:4] for x in lost] == [(iid, 0, c.id)]
    assert await h.counts(iid) == {0: (1, 0, 1, 0, 1)}


async def test_an_ended_instance_takes_no_setback_and_no_claimable_child(h: Harness) -> None:
    iid = await _instance(h)
    (c,) = await h.claim()
    assert await h.store.cancel_instance(iid)
    assert await h.store.ended_among([iid]) == {iid}
    res = await h.store.record_outcomes([], [_back(c)])
    assert res.setback_states == {c.id: int(C.CANCELLED)}    # rule 11: never retried
    assert await h.counts(iid) == {0: (1, 0, 0, 1, 0)}
    iid2 = await _instance(h)
    (c2,) = await h.claim()
    assert await h.store.cancel_instance(iid2)
    res = await h.store.record_outcomes([_ok(c2, [b"\x01"])], [])
    assert res.completed == 1 and not res.ready_partitions
    assert await h.counts(iid2) == {0: (1, 1, 0, 0, 0), 1: (1, 0, 0, 1, 0)}
    assert await h.claim() == []


async def test_a_cancel_release_of_a_restarted_instance_hands_the_chunk_back(h: Harness) -> None:
    iid = await _instance(h)
    (c,) = await h.claim()
    assert await h.store.cancel_instance(iid)       # a plain cancel leaves the running chunk running
    assert await h.store.restart_instance(iid, None) == set()
    assert (await h.instance(iid))["run"] == 2
    res = await h.store.record_outcomes([], [_back(c, int(C.CANCELLED), failure=False, message=None)])
    assert res.setback_states == {c.id: int(C.READY)} and res.released == 1
    (again,) = await h.claim()
    assert again.id == c.id and again.failures == 0


async def test_restart_runs_what_did_not_complete_in_a_new_run(h: Harness) -> None:
    iid = await _instance(h, max_attempts=1)
    (c,) = await h.claim()
    await h.store.record_outcomes([], [_back(c)])
    assert await h.state(c.id) == C.FAILED
    assert await h.store.finish_instance(iid, I.FAILED, error="a chunk failed", decided=Finish(iid, 1, 0))
    assert await h.store.restart_instance(iid, None)
    row = await h.instance(iid)
    assert (row["status"], row["run"], row["error_message"]) == (I.IN_PROGRESS.value, 2, None)
    assert await h.counts(iid) == {0: (1, 0, 0, 0, 1)}
    assert await h.state(c.id) == C.READY
    # a decision made for run 1 is refused in run 2
    assert await h.store.set_instances_status({iid: 1}, I.ERRORED) == set()
    assert await h.store.finish_instance(iid, I.FAILED, decided=Finish(iid, 1, 0)) is False
    assert await h.store.set_instances_status({iid: 2}, I.ERRORED) == {iid}
    assert await h.store.restart_instance(iid, None) is None     # only FAILED / CANCELLED restart


async def test_gates_finalize_and_completion_wait_for_every_earlier_chunk(h: Harness) -> None:
    iid = await _instance(h, gated=True)
    run = (await h.instance(iid))["run"]
    (c,) = await h.claim()
    # step 0 still running: nothing moves on (rule 10)
    assert await h.store.advance_gates([Finish(iid, run, 1)]) == {}
    assert await h.store.finalize([Finish(iid, run, 1)]) == set()
    assert not await h.store.finish_instance(iid, I.COMPLETED, decided=Finish(iid, run, ALL))
    await h.store.record_outcomes([_ok(c, [b"\x01", b"\x02"], gated=True)], [])
    assert await h.claim() == []                          # behind the gate
    assert await h.store.advance_gates([Finish(iid, run + 1, 1)]) == {}   # another run's decision
    opened = await h.store.advance_gates([Finish(iid, run, 1)])
    assert list(opened) == [iid] and opened[iid]
    a, b = await h.claim()
    assert not await h.store.finish_instance(iid, I.COMPLETED, decided=Finish(iid, run, ALL))
    await h.store.record_outcomes([_ok(a)], [_back(b, int(C.FAILED))])
    assert not await h.store.finish_instance(iid, I.COMPLETED, decided=Finish(iid, run, ALL))
    # a job that tolerates failed chunks may complete over them
    assert await h.store.finish_instance(iid, I.COMPLETED, decided=Finish(iid, run, ALL, True))
    assert (await h.instance(iid))["status"] == I.COMPLETED.value


async def test_a_claims_instances_are_started_and_read_in_one_call(h: Harness) -> None:
    a, b = await _instance(h), await _instance(h)
    rows = await h.store.start_and_load([a], [a, b, 10**9])
    assert sorted((r.id, r.job_name, r.params) for r in rows) == [(a, "test.job", '{"n": 1}'), (b, "test.job", '{"n": 1}')]
    assert [(await h.instance(i))["status"] for i in (a, b)] == [I.IN_PROGRESS.value, I.QUEUED.value]


async def test_maintenance_never_brings_an_ended_instance_back(h: Harness) -> None:
    """A pass decides on what it read: an instance ERRORED ("retries cleared") or QUEUED
    ("started") may be cancelled before the move is written. The move must then be refused:
    a CANCELLED instance moved back to IN_PROGRESS (its run unchanged) was failed by the next
    pass for its cancelled chunks (seen in CI's dashboard test). Only a restart revives one."""
    errored, queued = await _instance(h), await _instance(h)
    await h.store.mark_started([errored])
    assert await h.store.set_instances_status({errored: 1}, I.ERRORED) == {errored}
    for iid in (errored, queued):
        assert await h.store.cancel_instance(iid)
    assert await h.store.set_instances_status({errored: 1}, I.IN_PROGRESS) == set()
    assert await h.store.set_instances_status({queued: 1}, I.IN_PROGRESS) == set()
    assert [(await h.instance(i))["status"] for i in (errored, queued)] == [I.CANCELLED.value] * 2


async def test_many_complete_at_once_each_only_over_its_done_chunks(h: Harness) -> None:
    """Maintenance's batched COMPLETED (issue 26): each instance of the batch is held to rule
    10 and to its run on its own; one refused does not hold the others back."""
    done, running, other_run = [await _instance(h) for _ in range(3)]
    for c in await h.claim():
        if c.instance_id != running:
            await h.store.record_outcomes([_ok(c)], [])
    moved = await h.store.complete_instances([Finish(done, 1, ALL), Finish(running, 1, ALL),
                                              Finish(other_run, 2, ALL)])
    assert moved == {done}
    assert [(await h.instance(i))["status"] for i in (done, running, other_run)] == \
        [I.COMPLETED.value, I.QUEUED.value, I.QUEUED.value]
    assert (await h.instance(done))["progress"] == 1.0
    assert await h.store.complete_instances([Finish(done, 1, ALL)]) == set()  # once


async def test_changed_instances_are_given_once_per_change(h: Harness) -> None:
    """What a maintenance pass looks at (issue 26): every counter change, and a restart,
    marks its instance; a take gives each marked instance once."""
    a, b = [await _instance(h) for _ in range(2)]
    assert await h.store.take_changed_instances() == set()  # created: nothing to decide until a chunk ends
    c = next(c for c in await h.claim() if c.instance_id == a)
    assert await h.store.take_changed_instances() == set()  # a claim changes no counter
    await h.store.record_outcomes([_ok(c)], [])
    assert await h.store.take_changed_instances() == {a}
    assert await h.store.finish_instance(a, I.FAILED, error="x", decided=Finish(a, 1, 0))
    await h.store.take_changed_instances()
    # nothing of `a` failed or was cancelled: its restart changes no counter, and is given all the same
    assert await h.store.restart_instance(a, None) is not None
    assert await h.store.take_changed_instances() == {a}


async def test_a_reduction_consumes_its_input_once_and_only_in_finalize(h: Harness) -> None:
    iid = await _instance(h)
    (c,) = await h.claim()
    await h.store.record_outcomes([_ok(c, [b"\x01", b"\x02"], gated=True)], [])   # reduction input waits
    assert await h.store.finalize([Finish(iid, 1, 1)]) == set()       # QUEUED: not started
    await h.store.mark_started([iid])
    assert await h.store.finalize([Finish(iid, 1, 1)]) == {iid}
    async with h.store.reduction(iid, 1, lambda: False) as tx:
        assert [d async for d in tx.input()] == [b"\x01", b"\x02"]
        assert await tx.complete('{"n": 2}', None, Finish(iid, 1, 1))
    row = await h.instance(iid)
    assert (row["status"], json.loads(row["report"])) == (I.COMPLETED.value, {"n": 2})
    assert await h.counts(iid) == {0: (1, 1, 0, 0, 0), 1: (2, 2, 0, 0, 0)}
    async with h.store.reduction(iid, 1, lambda: False) as tx:
        assert not await tx.complete('{"n": 3}', None, Finish(iid, 1, 1))   # not in FINALIZE any more
    assert await h.store.reduction_failed(iid, 1, "late", counted=True, leader=None) is None


async def test_many_small_reductions_are_read_and_written_together_each_on_its_own_terms(h: Harness) -> None:
    """Issue 26: small reductions' inputs in one read and their reports in one transaction;
    each instance is held to FINALIZE, its run and rule 10 on its own, and its input is
    consumed once."""
    a, b, stale, early = [await _instance(h) for _ in range(4)]
    for c in await h.claim():
        if c.instance_id != early:
            await h.store.record_outcomes([_ok(c, [bytes([c.instance_id % 250]), b"\x09"], gated=True)], [])
    await h.store.mark_started([a, b, stale, early])
    assert await h.store.finalize([Finish(i, 1, 1) for i in (a, b, stale)]) == {a, b, stale}
    inputs = await h.store.reduction_inputs([(a, 1), (b, 1), (early, 1)], 2)
    assert inputs == ({a: [bytes([a % 250]), b"\x09"], b: [bytes([b % 250]), b"\x09"], early: []}, set())
    # over the byte bound: named, its data not read (it is streamed alone)
    assert await h.store.reduction_inputs([(a, 1), (early, 1)], 1) == ({early: []}, {a})
    done = await h.store.complete_reductions(
        [Reduced(Finish(a, 1, 1), 1, '{"n": "a"}'), Reduced(Finish(b, 1, 1), 1, '{"n": "b"}'),
         Reduced(Finish(stale, 2, 1), 1, '{"n": "other run"}'), Reduced(Finish(early, 1, 1), 1, '{"n": "early"}')],
        None)
    assert done == {a, b}
    assert [json.loads((await h.instance(i))["report"]) for i in (a, b)] == [{"n": "a"}, {"n": "b"}]
    assert [(await h.instance(i))["status"] for i in (stale, early)] == [I.FINALIZE.value, I.IN_PROGRESS.value]
    assert await h.counts(a) == {0: (1, 1, 0, 0, 0), 1: (2, 2, 0, 0, 0)}
    assert await h.counts(stale) == {0: (1, 1, 0, 0, 0), 1: (2, 0, 0, 0, 0)}  # its input is still there
    assert await h.store.complete_reductions([Reduced(Finish(a, 1, 1), 1, '{"n": "again"}')], None) == set()
    assert json.loads((await h.instance(a))["report"]) == {"n": "a"}


async def test_a_failed_reduction_is_counted_in_its_run(h: Harness) -> None:
    iid = await _instance(h)
    (c,) = await h.claim()
    await h.store.record_outcomes([_ok(c, [b"\x01"], gated=True)], [])
    await h.store.mark_started([iid])
    assert await h.store.finalize([Finish(iid, 1, 1)]) == {iid}
    assert await h.store.reduction_failed(iid, 1, "boom", counted=True, leader=None) == 1
    assert await h.store.reduction_failed(iid, 1, "db away", counted=False, leader=None) == 1
    assert await h.store.reduction_failed(iid, 2, "other run", counted=True, leader=None) is None
    assert (await h.instance(iid))["last_error"] == "db away"


async def test_committed_tx_ops_and_warnings_ride_with_the_completion(h: Harness) -> None:
    if h.kind == "postgres":
        await h.store.pool.execute("CREATE TABLE ledger (chunk_id bigint)")
    iid = await _instance(h)
    (c,) = await h.claim()
    ok = Success(c.id, c.attempt, iid, 0, [], False, 3, [TxOp("INSERT INTO ledger VALUES ($1)", (c.id,))], ["w"])
    assert (await h.store.record_outcomes([ok], [])).completed == 1
    if h.kind == "memory":
        assert [op.args for _, _, op in h.store.applied_tx] == [(c.id,)]
        assert [w[3] for w in h.store.warnings] == ["w"]
    else:
        assert await h.store.pool.fetchval("SELECT count(*) FROM ledger") == 1
        assert await h.store.warnings(iid) == ["w"]


async def test_a_deposed_leaders_writes_are_refused(h: Harness) -> None:
    other = await h.store.register_node("other", 2) if h.kind == "postgres" else 2
    term = await h.store.acquire_leadership(h.node, 30)
    assert term is not None
    iid = await _instance(h)
    await h.store.mark_started([iid])
    assert await h.store.acquire_leadership(other, 30) is None      # the lease is held
    assert await h.store.acquire_leadership(h.node, 30) == term       # renewed: the same term
    await h.store.resign_leadership(h.node)
    newer = await h.store.acquire_leadership(other, 30)
    assert newer is not None
    stale = LeaderTerm(h.node, term)
    with pytest.raises(NotLeader):
        await h.store.set_instances_status({iid: 1}, I.ERRORED, stale)
    with pytest.raises(NotLeader):
        await h.store.finish_instance(iid, I.FAILED, error="late", leader=stale, decided=Finish(iid, 1, 0))
    with pytest.raises(NotLeader):
        await h.store.complete_instances([Finish(iid, 1, ALL)], leader=stale)
    with pytest.raises(NotLeader):
        await h.store.complete_reductions([Reduced(Finish(iid, 1, 1), 1, "{}")], leader=stale)
    assert (await h.instance(iid))["status"] == I.IN_PROGRESS.value
    assert await h.store.set_instances_status({iid: 1}, I.ERRORED, LeaderTerm(other, newer)) == {iid}
