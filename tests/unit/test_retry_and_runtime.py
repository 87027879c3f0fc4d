import anyio
import pytest

from actors.supervisor import RestartPolicy, Supervisor, SupervisorGaveUp
from channels.base import PartitionSignal
from channels.memory import MemoryChannel
from storage.counters import COMPLETED, CREATED, CounterDelta
from storage.retry import after_error, backoff_seconds
from storage.states import C


def test_backoff_grows_and_caps() -> None:
    assert [backoff_seconds(n, 1.0, 5.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]


def test_after_error() -> None:
    assert after_error(0, 3, permanent=False, base=1, cap=10) == (C.ERRORED, 1.0)
    assert after_error(1, 3, permanent=False, base=1, cap=10) == (C.ERRORED, 2.0)
    assert after_error(2, 3, permanent=False, base=1, cap=10) == (C.FAILED, 0.0)
    assert after_error(0, 3, permanent=True, base=1, cap=10) == (C.FAILED, 0.0)


def test_restart_policy_gives_up_past_intensity() -> None:
    pol = RestartPolicy(max_restarts=3, window=10, backoff_base=0.1, backoff_max=1)
    assert pol.record("a", 0) == 0.1
    assert pol.record("a", 1) == 0.2
    pol.record("b", 2)
    with pytest.raises(SupervisorGaveUp):
        pol.record("a", 3)
    # outside the window the old crashes no longer count
    pol2 = RestartPolicy(max_restarts=1, window=10)
    pol2.record("a", 0)
    pol2.record("a", 20)


@pytest.mark.anyio
async def test_supervisor_restarts_a_crashing_child() -> None:
    runs = 0

    async def child() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError("crash")

    sup = Supervisor(RestartPolicy(max_restarts=5, window=60, backoff_base=0.001))
    await sup.supervise("c", "test", child)
    assert runs == 3


@pytest.mark.anyio
async def test_supervisor_gives_up() -> None:
    async def child() -> None:
        raise RuntimeError("always")

    sup = Supervisor(RestartPolicy(max_restarts=2, window=60, backoff_base=0.001))
    with pytest.raises(SupervisorGaveUp):
        await sup.supervise("c", "test", child)


@pytest.mark.anyio
async def test_partition_signal_and_memory_channel() -> None:
    ch = MemoryChannel(2)
    assert not await ch.signal(0).wait(0.01)
    await ch.publish([1])
    assert await ch.signal(1).wait(1)
    assert not await ch.signal(1).wait(0.01)  # consumed
    sig = PartitionSignal()
    async with anyio.create_task_group() as tg:
        tg.start_soon(sig.wait, 5)
        await anyio.sleep(0.01)
        sig.set()


def test_counter_delta_sorted_arrays() -> None:
    d = CounterDelta()
    d.add(2, 1, COMPLETED, 3)
    d.add(1, 0, CREATED)
    d.add(1, 0, CREATED)
    inst, step, created, completed, *_ = d.arrays()
    assert inst == [1, 2] and step == [0, 1] and created == [2, 0] and completed == [0, 3]


def test_claim_cursor_moves_past_claimed_rows_and_rescans() -> None:
    from actors.consumer import RESCAN_EVERY, ClaimCursor
    c = ClaimCursor()
    assert c.start(0.0) == (0, 0)
    c.claimed([(0, 5), (0, 9), (8, 7)], requested=3)
    assert c.start(0.5) == (0, 0)  # the start lags one full claim behind (a racing insert's rank)
    c.claimed([(8, 10), (8, 14), (16, 12)], requested=3)
    assert c.start(1.0) == (8, 8)  # just past where the claim before the last one ended
    c.claimed([(16, 15), (16, 16), (24, 20)], requested=3)
    assert c.start(1.5) == (16, 13)
    c.claimed([(24, 21)], requested=3)
    assert c.start(2.0) == (0, 0)  # a short claim: back to the beginning
    c.claimed([], requested=0)  # the whole batch went to a suspect: nothing learnt
    assert c.start(2.1) == (0, 0)
    c.claimed([(1, 1), (2, 2), (3, 3)], requested=3)
    c.claimed([(4, 4), (5, 5), (6, 6)], requested=3)
    assert c.start(RESCAN_EVERY + 0.1) == (0, 0)  # periodic rescan for lower ranks released meanwhile


def test_outages_restart_with_backoff_without_exhausting_the_supervisor() -> None:
    import asyncpg

    from actors.supervisor import RestartPolicy
    from storage.errors import is_transient
    p = RestartPolicy(max_restarts=2, window=60)
    delays = [p.record("consumer-0", float(t), counts=False) for t in range(50)]  # a long outage
    assert delays[0] == 0.2 and delays[-1] == 10.0  # backing off, never giving up
    p.record("x", 51.0)
    p.record("x", 52.0)
    with pytest.raises(SupervisorGaveUp):
        p.record("x", 53.0)  # real crashes still count
    refused = asyncpg.ObjectNotInPrerequisiteStateError("database is not currently accepting connections")
    assert is_transient(refused) and is_transient(ExceptionGroup("g", [refused, ConnectionResetError()]))
    assert not is_transient(ExceptionGroup("g", [refused, ValueError("bug")])) and not is_transient(KeyError())


def test_limit_reason_names_the_servers_limits() -> None:
    """Issue 22 row 5: a DBA's limits hit by work are named; an operator's cancel and a lost
    connection are not limits (they stay transient, never counted)."""
    import asyncpg

    from storage.errors import closed_connection, is_transient, limit_reason
    timeout = asyncpg.QueryCanceledError("canceling statement due to statement timeout")
    assert limit_reason(timeout) == "statement timeout" and is_transient(timeout)
    assert limit_reason(asyncpg.QueryCanceledError("canceling statement due to user request")) is None
    assert limit_reason(asyncpg.LockNotAvailableError("canceling statement due to lock timeout")) == "lock timeout"
    idle = asyncpg.IdleInTransactionSessionTimeoutError("terminating connection due to idle-in-transaction timeout")
    assert limit_reason(idle) == "idle-in-transaction timeout"
    assert limit_reason(ExceptionGroup("g", [ValueError("x"), timeout])) == "statement timeout"
    try:  # a rollback failing on top of the timeout still names it
        try:
            raise timeout
        except asyncpg.QueryCanceledError:
            raise asyncpg.InterfaceError("cannot call Transaction.__aexit__(): the underlying connection is closed")
    except asyncpg.InterfaceError as e:
        assert limit_reason(e) == "statement timeout" and closed_connection(e)
    assert limit_reason(asyncpg.ConnectionDoesNotExistError("connection was closed")) is None
    assert closed_connection(asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"))
    assert not closed_connection(ValueError("closed"))
