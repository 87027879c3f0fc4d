"""Run a job in memory, in a unit test: no Postgres, no daemon, the daemon's own engine.

    from chunkd.testing import run_job

    async def test_export() -> None:
        run = await run_job(export, {"table": "patients"})
        assert run.report == {"files": 3}
        assert len(run.emitted["plan"]) == 3

`run_job` submits one instance to an in-memory store (storage/memory.py, held to the same
conformance suite as the Postgres store) and drives the daemon's own pieces over it, as
rivertest drives River's executor: each claimed chunk runs through the executor
(actors/executor.run_chunk: plain-function steps in a worker thread, size limits, retries
decided as in the daemon), its outcome is recorded by the completer's flush
(actors/completer.flush), and the maintenance leader (actors/maintenance.Maintenance: the
planner, gates, reduction with its sync bridge, completion/error handlers) moves the
instance on. What it does not model: several daemons, leases that expire, concurrency
(chunks run one at a time), backoff delays (a virtual clock jumps to the next retry), SQL
(ctx.tx statements are collected, not run).
"""
from __future__ import annotations

import asyncio
import copy
import functools
import json
from collections.abc import Callable
from typing import Any

import anyio
import msgspec

from actors.completer import Completer, flush
from actors.engine import Engine, StepSlot
from actors.executor import run_chunk
from actors.instances import error_path
from actors.job import Job, ParameterError, StepDef, StepKind
from actors.maintenance import Maintenance, leader_lease
from actors.registry import Registry
from actors.settings import (
    ActorSettings,
    ClaimSettings,
    CompleterSettings,
    MaintenanceSettings,
    SchedulerSettings,
    StepSettings,
)
from channels.memory import MemoryChannel
from storage.codec import DataError, decode, params_from_json, to_json
from storage.memory import MemoryStore
from storage.states import INSTANCE_TERMINAL, C, I
from storage.types import ClaimedChunk, Setback, Success, TxOp

__all__ = ["Call", "JobFailed", "JobRun", "run_job"]

# ctx.retry_later() re-runs a chunk without counting an attempt; past this many it is a bug.
MAX_POLLS = 1000
# Maintenance passes in a row that change nothing before run_job gives up (a job that can
# never finish, e.g. an instance whose chunks wait for something that never comes).
MAX_IDLE_PASSES = 200
_NODE = 1
_BATCH = 100


class Call(msgspec.Struct, frozen=True):
    """One run of a step on one chunk, as `inject` sees it and `JobRun.calls` records it."""
    step: str
    index: int        # the chunk's position among its step's input (0 for the first step)
    chunk: Any        # the decoded input chunk (None for the first step and the reduction)
    attempt: int      # 1 on the first run
    outcome: str = "" # "ok", "error: ...", "failed: ...", "retry later" (empty while it runs)


class JobRun(msgspec.Struct):
    """What a run did. `emitted[step]` holds what that step emitted (decoded); `tx[step]`
    the ctx.tx statements of its committed runs (a failed attempt's statements are
    discarded, as the engine rolls them back); `warnings` holds (step, message)."""
    job: str
    status: str = "COMPLETED"           # or "FAILED"
    report: Any = None                  # the reduction's report as JSON would show it
    error: str | None = None
    emitted: dict[str, list[Any]] = {}
    tx: dict[str, list[TxOp]] = {}
    warnings: list[tuple[str, str]] = []
    calls: list[Call] = []
    failed_chunks: list[str] = []       # chunks that ended FAILED (the job may go on without them)

    def attempts(self, step: str, index: int = 0) -> int:
        """How many times `step` ran on its `index`-th chunk."""
        return sum(1 for c in self.calls if c.step == step and c.index == index and c.outcome != "retry later")


class JobFailed(AssertionError):
    """The run ended FAILED and `check` was on: the message is the instance's error."""


Inject = Callable[[Call], BaseException | None]


class _Clock:
    """The store's `now()`: real time never passes; it jumps to the next retry when idle."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def settings(max_chunk_bytes: int = 64 << 20, max_report_bytes: int = 16 << 20) -> ActorSettings:
    """The actors' settings run_job uses: one partition, one chunk at a time."""
    return ActorSettings(
        claim=ClaimSettings(partitions=1, partition_concurrency=1, claim_batch=_BATCH, lease_seconds=3600.0,
                            poll_interval=1.0),
        steps=StepSettings(max_chunk_bytes=max_chunk_bytes),
        completer=CompleterSettings(batch=_BATCH, flush_ms=0.0),
        maintenance=MaintenanceSettings(partitions=1, interval=1.0, republish_after=3600.0,
                                        max_report_bytes=max_report_bytes, scheduling=True),
        scheduler=SchedulerSettings(node_name="chunkd.testing", partitions=1, enabled=False, concurrency=1))


async def run_job(job: Job, params: Any = None, *, inject: Inject | None = None, db: Any = None,
                  check: bool = True, max_chunk_bytes: int = 64 << 20) -> JobRun:
    """Run `job` with `params` (its params Struct, a dict, or JSON text) in memory.

    `inject(call)` may return an exception for a step run to raise instead of running the
    step, e.g. `lambda c: RuntimeError("boom") if c.step == "write" and c.attempt == 1 else None`
    to see a retry. `db` is what `ctx.db` (and a `params_check`, which runs only when `db`
    is given) receive. With `check` (the default) a FAILED run raises JobFailed."""
    job.validate()
    parsed = _params(job, params)
    if job.check is not None and db is not None:
        await job.check(parsed, db)
    driver = _Driver(job, inject, db, max_chunk_bytes)
    run = await driver.run(to_json(parsed))
    if check and run.status == "FAILED":
        raise JobFailed(f"job {job.name!r} FAILED: {run.error}")
    return run


def _params(job: Job, params: Any) -> Any:
    """Decoded as a submit decodes them; refused as the submit's 422 is: `chunkd.ParameterError`
    with the message and `path` (`$.rows`) the API would give, not a storage-internal error."""
    if isinstance(params, job.params):
        params = to_json(params)  # through JSON all the same: defaults and checks as at submit
    elif params is None or isinstance(params, dict):
        params = json.dumps(params or {})
    try:
        return params_from_json(params, job.params)
    except DataError as e:
        raise ParameterError(f"job {job.name!r}: {e}", error_path(e)) from None


class _Driver:
    """One instance through the real executor, completer and maintenance, one chunk at a time."""

    def __init__(self, job: Job, inject: Inject | None, db: Any, max_chunk_bytes: int) -> None:
        self.job, self.inject = job, inject
        self.clock = _Clock()
        self.store = MemoryStore(1, self.clock)
        cfg = settings(max_chunk_bytes)
        channel = MemoryChannel(1)
        registry = Registry()
        registry.register(self._observed(job))
        self.engine = Engine(cfg, self.store, channel, registry, _NODE, "")
        self.engine.reader = db  # ctx.db
        self.completer = Completer(cfg.completer, None, self.store, channel, self.engine.inflight,  # type: ignore[arg-type] - flushed directly, no mailbox
                                   self.engine.doorbell)
        self.maintenance = Maintenance(cfg.maintenance, self.store, channel, registry, db, _NODE,
                                       doorbell=self.engine.doorbell)
        self.run_ = JobRun(job.name)
        self.index_of: dict[int, int] = {}      # chunk id -> its position among its step's input
        self._seen: dict[int, int] = {}         # step -> chunks of it claimed so far
        self.polls: dict[int, int] = {}
        self.reductions = 0

    def _observed(self, job: Job) -> Job:
        """The job as the registry serves it here: each step first asks `inject` (the real
        executor runs the wrapper exactly as it would run the step: a plain function in a
        thread, a coroutine on the loop)."""
        seen = copy.copy(job)
        seen.steps = [msgspec.structs.replace(s, fn=self._wrap(s)) for s in job.steps]
        return seen

    def _wrap(self, step: StepDef) -> Callable[..., Any]:
        fn = step.fn
        if step.kind is StepKind.REDUCE:
            def before(args: tuple[Any, ...]) -> None:
                self.reductions += 1
        else:
            def before(args: tuple[Any, ...]) -> None:
                if self.inject is None:
                    return
                ctx = args[1] if step.kind is StepKind.FIRST else args[2]
                chunk = None if step.kind is StepKind.FIRST else args[1]
                exc = self.inject(Call(step.name, self.index_of.get(ctx.chunk_id, 0), chunk, ctx.attempt))
                if exc is not None:
                    raise exc
        if step.is_async:
            @functools.wraps(fn)
            async def run_async(*args: Any) -> Any:
                before(args)
                return await fn(*args)
            return run_async

        @functools.wraps(fn)
        def run_sync(*args: Any) -> Any:
            before(args)
            return fn(*args)
        return run_sync

    async def run(self, params_json: str) -> JobRun:
        first = self.job.steps[0]
        iid, _, _ = await self.store.create_instance(self.job.name, self.job.version, params_json, self.job.gated,
                                                     None, b"", first.max_attempts)
        slot = StepSlot(asyncio.current_task(), 0)
        idle = 0
        async with anyio.create_task_group() as tg:
            self.maintenance._tg = tg   # where the leader runs its reductions
            while True:
                claimed = await self.store.claim(0, _BATCH, _NODE, 3600.0)
                if claimed:
                    idle = 0
                    self.engine.inflight.claimed(0, claimed)
                    await self.engine.note_started({c.instance_id for c in claimed})
                    for chunk in claimed:
                        await self._one(chunk, slot, iid)
                    continue
                self.maintenance.reducer._retry_at.clear()  # a failed reduction runs again without its backoff
                await self.maintenance._round(leader_lease(1.0))
                while self.maintenance.reducer.reducing:
                    await anyio.sleep(0.001)  # a plain-function reducer runs in a thread
                if self.store.instances[iid].row["status"] in {s.value for s in INSTANCE_TERMINAL}:
                    break
                if not any(c.state == C.READY for c in self.store.chunks.values()):
                    due = self.store.next_due()
                    if due is not None and due > self.clock.now:
                        self.clock.now = due
                        continue
                    idle += 1
                    if idle > MAX_IDLE_PASSES:
                        raise RuntimeError(f"job {self.job.name!r}: the instance is stuck in "
                                           f"{self.store.instances[iid].row['status']} (chunkd.testing)")
        return await self._result(iid)

    async def _one(self, chunk: ClaimedChunk, slot: StepSlot, iid: int) -> None:
        step = self.job.steps[chunk.step]
        if chunk.id not in self.index_of:
            self.index_of[chunk.id] = self._seen.get(chunk.step, 0)
            self._seen[chunk.step] = self.index_of[chunk.id] + 1
        index = self.index_of[chunk.id]
        outcome = await run_chunk(self.engine, chunk, 0, slot)
        await flush(self.completer, [outcome])
        try:
            item = None if step.kind is StepKind.FIRST else decode(chunk.data, step.consumes)  # type: ignore[arg-type]
        except DataError:
            item = None
        stored = self.store.chunks[chunk.id]
        r = outcome.result
        run = self.run_
        if type(r) is Success and stored.state == C.COMPLETED:
            run.calls.append(Call(step.name, index, item, chunk.attempt, "ok"))
            if step.emits is not None:
                run.emitted.setdefault(step.name, []).extend(_shown(d, step.emits) for d in r.children)
            run.warnings.extend((step.name, w) for w in r.warnings)
            return
        message = (r.message if isinstance(r, Setback) else None) or stored.error_message or ""
        if stored.state == C.POLL_WAITING:
            run.calls.append(Call(step.name, index, item, chunk.attempt, "retry later"))
            self.polls[chunk.id] = self.polls.get(chunk.id, 0) + 1
            if self.polls[chunk.id] > MAX_POLLS:
                error = f"step {step.name!r} chunk {index}: retried later {MAX_POLLS} times"
                run.failed_chunks.append(error)
                await self.store.finish_instance(iid, I.FAILED, error=error)
        elif stored.state == C.FAILED:
            run.calls.append(Call(step.name, index, item, chunk.attempt, f"failed: {message}"))
            run.failed_chunks.append(f"step {step.name!r} chunk {index}: {message}")
        else:
            run.calls.append(Call(step.name, index, item, chunk.attempt, f"error: {message}"))

    async def _result(self, iid: int) -> JobRun:
        run = self.run_
        row = await self.store.get_instance(iid)
        assert row is not None
        run.status, run.error = row["status"], row["error_message"]
        run.report = None if row["report"] is None else json.loads(row["report"])  # as the API shows it
        for _, step, op in self.store.applied_tx:
            run.tx.setdefault(self.job.steps[step].name, []).append(op)
        if self.job.has_reduction and self.reductions:
            name = self.job.steps[-1].name
            for n in range(1, self.reductions + 1):
                last = n == self.reductions
                outcome = ("ok" if run.status == I.COMPLETED.value else f"failed: {run.error}") if last else \
                    f"error: {row['last_error']}"
                run.calls.append(Call(name, 0, None, n, outcome))
        return run


def _shown(data: bytes, tp: type) -> Any:
    """An emitted chunk as the next step will see it (its raw bytes if it does not decode:
    the next step then fails on it, as it would in the daemon)."""
    try:
        return decode(data, tp)
    except DataError:
        return data
