"""The maintenance duties' pure parts and the leader loop's composition, without Postgres
(issue 25 row 4)."""
from __future__ import annotations

from typing import Any

import anyio
import pytest

from actors.duties import Every, PassContext, Vacuumer, lease_failure_lines, upkeep_due
from actors.maintenance import Maintenance, leader_lease, shape_of
from actors.reducer import Reducer
from actors.settings import MaintenanceSettings
from daemon.jobs import configure_builtins, load_registry
from daemon.jobs import retention as retention_job
from storage.types import TableHealth


def test_every_is_due_once_per_period() -> None:
    e = Every(10)
    assert e.due(100.0) and not e.due(105.0) and not e.due(109.9) and e.due(110.0) and not e.due(111.0)


def test_lease_failures_are_warned_a_few_at_a_time() -> None:
    failed = [("j", 1, 0, cid, 3) for cid in range(8)]
    lines, suppressed = lease_failure_lines(failed)
    assert [x["chunk_id"] for x in lines] == [0, 1, 2, 3, 4] and suppressed == 3
    assert "lease expired" in lines[0]["error"]
    assert lease_failure_lines(failed[:2]) == (lease_failure_lines(failed[:2])[0], 0)


def test_leader_lease_outlives_several_passes() -> None:
    assert leader_lease(0.1) == 5.0 and leader_lease(2.0) == 10.0


def test_shape_of_a_job_with_a_reduction() -> None:
    shape = shape_of(load_registry([]).get("chunkd.synthetic"))
    assert shape.has_reduction and shape.work_steps == 2 and not shape.gated


def test_reducer_starts_once_and_waits_its_backoff() -> None:
    spawned: list[Any] = []
    r = Reducer(None, None, 1 << 20)  # type: ignore[arg-type]
    job = load_registry([]).get("chunkd.synthetic")

    class Inst:
        id = 7
    r.start(Inst(), job, None, lambda *a: spawned.append(a))  # type: ignore[arg-type]
    r.start(Inst(), job, None, lambda *a: spawned.append(a))  # type: ignore[arg-type]
    assert len(spawned) == 1  # already reducing
    r.reducing.clear()
    r._retry_at[7] = 1e18  # its last attempt failed: backing off
    r.start(Inst(), job, None, lambda *a: spawned.append(a))  # type: ignore[arg-type]
    assert len(spawned) == 1
    r.forget({8})  # no longer active: its backoff goes
    r.start(Inst(), job, None, lambda *a: spawned.append(a))  # type: ignore[arg-type]
    assert len(spawned) == 2


class _Channel:
    def __init__(self) -> None:
        self.published: list[set[int]] = []

    async def publish(self, parts: Any) -> None:
        self.published.append(set(parts))


class _Duty:
    def __init__(self, name: str, parts: set[int], seen: list[str]) -> None:
        self.name, self.parts, self.seen = name, parts, seen
        self.advances = name in ("advancer", "releaser")

    async def run(self, ctx: PassContext) -> set[int]:
        self.seen.append(self.name)
        assert ctx.term is not None and ctx.spawn is not None
        if self.name == "advancer":
            ctx.wake()  # a gate opened
        return self.parts


@pytest.mark.anyio
async def test_a_pass_runs_the_duties_in_order_and_publishes_once() -> None:
    from storage.types import LeaderTerm
    seen: list[str] = []
    ch = _Channel()
    m = Maintenance(MaintenanceSettings(partitions=4, interval=1.0, republish_after=5.0, max_report_bytes=1 << 20,
                                        scheduling=True), None, ch, None, None, 1,  # type: ignore[arg-type]
                    pass_duties=[_Duty("rescuer", {1}, seen), _Duty("advancer", {2, 1}, seen),
                                 _Duty("reaper", set(), seen)])
    m.term = LeaderTerm(1, 3)
    async with anyio.create_task_group() as tg:
        m._tg = tg
        await m.pass_once()
    assert seen == ["rescuer", "advancer", "reaper"] and ch.published == [{1, 2}] and m.wake.rung


@pytest.mark.anyio
async def test_a_ring_between_full_passes_runs_the_advancer_alone_until_the_interval_ends() -> None:
    """A ring (a step closed) runs the advancer alone, at once when the last pass ended long
    ago, and its partitions are published; the other duties wait for the next full pass.
    Each ring is one pass: the advancer's own wake-up asks for one more. The old code slept a
    negative delay here (the time read twice) and maintenance crashed on asyncio's loop. A
    follower answers rings and runs nothing; either way the loop ends at the deadline."""
    from storage.types import LeaderTerm
    for leads in (True, False):
        seen: list[str] = []
        ch = _Channel()
        m = Maintenance(MaintenanceSettings(partitions=4, interval=1.0, republish_after=5.0,
                                            max_report_bytes=1 << 20, scheduling=True),
                        None, ch, None, None, 1,  # type: ignore[arg-type]
                        pass_duties=[_Duty("rescuer", {1}, seen), _Duty("advancer", {2}, seen),
                                     _Duty("releaser", {3}, seen)])
        m.term, m.leader = (LeaderTerm(1, 3), True) if leads else (None, False)
        async with anyio.create_task_group() as tg:
            m._tg = tg
            m.wake.ring()
            now = anyio.current_time()
            with anyio.fail_after(30):
                await m._advance_until(now - 10, now + 2.0)
            assert anyio.current_time() >= now + 1.9  # until the deadline (a timer may fire a bit early)
        if leads:
            assert "rescuer" not in seen and seen.count("advancer") >= 2 and {2, 3} in ch.published
        else:
            assert seen == [] and ch.published == [] and not m.wake.rung


def test_retention_declares_its_own_schedule_shaped_by_the_settings() -> None:
    reg = load_registry([])
    assert reg.schedules["chunkd.retention"] == retention_job.schedule
    assert "chunkd.retention" in reg.builtin_schedules
    configure_builtins(reg, 3600, 7200, 0.5)
    s = reg.schedules["chunkd.retention"]
    assert s.every == 1.0 and s.params == {"keep_seconds": 3600, "keep_failed_seconds": 7200}
    configure_builtins(reg, 3600, 7200, 0)  # CHUNKD_RETENTION_EVERY=0: no schedule
    assert "chunkd.retention" not in reg.schedules
    configure_builtins(reg, 3600, 7200, 60)
    assert reg.schedules["chunkd.retention"].every == 60


def test_the_scheduler_names_no_builtin_job() -> None:
    import inspect

    import actors.scheduler
    src = inspect.getsource(actors.scheduler)
    assert "retention" not in src and "keep_seconds" not in src


def test_reduction_retry_waits_a_backoff_then_fails_at_max_attempts() -> None:
    from actors.reducer import retry_in
    assert retry_in(1, True, 3, 0.5, 10, False) == 0.5 and retry_in(2, True, 3, 0.5, 10, False) == 1.0
    assert retry_in(3, True, 3, 0.5, 10, False) is None            # max_attempts: the instance FAILS
    assert retry_in(1, True, 3, 0.5, 10, True) is None             # a report over its limit: at once
    assert retry_in(7, False, 3, 0.5, 10, False) == 1.0            # the database away: not counted


def test_progress_is_written_now_only_for_an_instance_about_to_end() -> None:
    from actors.advancer import progress_row
    from actors.planner import Action, Plan
    from storage.types import Progress
    running = Plan(Action.NONE, progress=0.5, rate=12.345, eta=3.0, errors=1)
    now, row = progress_row(9, running, None)
    assert not now and row == Progress(9, 0.5, 12.35, 3.0, 1)
    assert progress_row(9, running, row) == (False, None)          # unchanged: no write
    failing = Plan(Action.FAIL, progress=0.5, errors=2)
    assert progress_row(9, failing, row) == (True, Progress(9, 0.5, None, None, 2))
    done = Plan(Action.COMPLETE, progress=1.0, errors=1)
    assert progress_row(9, done, row) == (False, None)             # its error count is already shown
    assert progress_row(9, done, None)[0]                          # it is not: written as it ends


def _table(**kw: object) -> TableHealth:
    base: dict[str, object] = dict(name="chunkd_chunk", live=1_000_000, dead=0, changed=0, autovacuum=False,
                                   vacuum_threshold=5000.0, vacuum_scale=0.02, analyze_threshold=50.0,
                                   analyze_scale=0.05)
    return TableHealth(**{**base, **kw})  # type: ignore[arg-type]


def test_upkeep_follows_the_autovacuum_rule_only_where_autovacuum_is_off() -> None:
    """The rule the table is under (chunkd_chunk: 5,000 + 2% of live, migration 0006)."""
    assert upkeep_due(_table(dead=24_999)) is None
    assert upkeep_due(_table(dead=25_000)) == "vacuum"
    assert upkeep_due(_table(dead=25_000, autovacuum=True)) is None  # the server's daemon does it
    assert upkeep_due(_table(dead=25_000, maintainable=False)) is None  # not ours to vacuum: said once
    assert upkeep_due(_table(dead=25_000, counted=False)) is None  # track_counts off: nothing to go by
    assert upkeep_due(_table(changed=50_049)) is None
    assert upkeep_due(_table(changed=50_050)) == "analyze"
    assert upkeep_due(_table(dead=25_000, changed=50_000)) == "vacuum"  # VACUUM (ANALYZE) does both
    # a small table under the server's defaults (50 + 20%) is not vacuumed every check
    small = dict(live=100, vacuum_threshold=50.0, vacuum_scale=0.2)
    assert upkeep_due(_table(dead=999, **small)) is None
    assert upkeep_due(_table(dead=1000, **small)) == "vacuum"


class _Tables:
    """A store whose tables are as given; records the upkeep asked for."""

    def __init__(self, tables: list[TableHealth]) -> None:
        self.tables, self.done = tables, []  # type: ignore[var-annotated]

    async def table_health(self) -> list[TableHealth]:
        return self.tables

    async def upkeep(self, table: str, vacuum: bool) -> None:
        self.done.append((table, vacuum))


@pytest.mark.anyio
async def test_the_vacuumer_vacuums_what_is_due_in_the_background_and_only_when_enabled() -> None:
    tables = [_table(dead=30_000), _table(name="chunkd_instance", live=10, changed=5_000,
                                             vacuum_threshold=50.0, vacuum_scale=0.2),
              _table(name="chunkd_node", dead=10)]
    spawned: list[object] = []
    ctx = PassContext(None, spawn=lambda fn, *a: spawned.append((fn, a)))
    store = _Tables(tables)
    v = Vacuumer(store, enabled=True, every=0.0)  # type: ignore[arg-type]
    assert await v.run(ctx) == set()
    assert len(spawned) == 1 and v.running
    assert await v.run(ctx) == set() and len(spawned) == 1  # one upkeep at a time
    fn, args = spawned[0]  # type: ignore[misc]
    await fn(*args)
    assert store.done == [("chunkd_chunk", True), ("chunkd_instance", False)] and not v.running
    off = Vacuumer(_Tables(tables), enabled=False, every=0.0)  # type: ignore[arg-type]
    spawned.clear()
    await off.run(ctx)
    assert spawned == []
