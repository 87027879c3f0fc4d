"""The in-memory store: the same state machine as the Postgres one (storage/sql.py), in
dicts, for `chunkd.testing` and the engine's unit tests. Every method is one step of the
event loop (no await inside), so each is as atomic as the statement it mirrors: same state
table (storage/states.py), same fencing by attempt and by run, same counters, same rule-10
check before a gate opens or an instance moves on. What it leaves out: partitions' fair
order (chunks are claimed in insertion order), SQL (ctx.tx statements are recorded, not
run), sizes enforced by Postgres. `tests/integration/test_store_conformance.py` holds the
two to one suite."""
from __future__ import annotations

import contextlib
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

from storage.counters import CANCELLED, COMPLETED, CREATED, ERRORS, FAILED
from storage.deadlines import DEFAULT
from storage.states import (
    INSTANCE_TERMINAL,
    RESTARTABLE,
    SETBACK_BY_ATTEMPTS,
    SUSPECT_AFTER,
    C,
    I,
    chunk_allowed_from,
    instance_allowed_from,
    maintenance_moves_from,
)
from storage.store import MAX_WARNINGS
from storage.text import MAX_TRACE, storable, storable_json
from storage.types import (
    ClaimedChunk,
    Created,
    Finish,
    InstanceRow,
    LeaderTerm,
    NewInstance,
    NotLeader,
    Progress,
    Recorded,
    Reduced,
    Setback,
    StepCounts,
    Success,
    TableHealth,
    TxOp,
)

_ALL_STEPS = 32767
_SETBACK_TARGETS = {int(C.ERRORED), int(C.FAILED), int(C.POLL_WAITING), int(C.CANCELLED), SETBACK_BY_ATTEMPTS}
_CANCEL_PENDING = frozenset(chunk_allowed_from(C.CANCELLED, frozenset({C.GATE_WAITING, C.READY, C.POLL_WAITING,
                                                                         C.ERRORED})))
_CANCEL_ALL = frozenset(chunk_allowed_from(C.CANCELLED))
_TERMINAL = frozenset(s.value for s in INSTANCE_TERMINAL)


class MemChunk:
    __slots__ = ("id", "instance_id", "step", "state", "partition", "attempt", "failures", "max_attempts", "data",
                 "orphaned", "started_attempt", "rank", "next_run_at", "lease_owner", "lease_until",
                 "error_message", "error_trace", "error_attempt", "created_at")

    def __init__(self, id: int, instance_id: int, step: int, state: int, partition: int, max_attempts: int,
                 data: bytes | None, rank: int, created_at: float) -> None:
        self.id, self.instance_id, self.step, self.state, self.partition = id, instance_id, step, state, partition
        self.attempt, self.failures, self.max_attempts, self.data = 0, 0, max_attempts, data
        self.orphaned, self.started_attempt, self.rank = 0, None, rank
        self.next_run_at: float | None = None
        self.lease_owner: int | None = None
        self.lease_until: float | None = None
        self.error_message: str | None = None
        self.error_trace: str | None = None
        self.error_attempt: int | None = None
        self.created_at = created_at


class MemInstance:
    def __init__(self, id: int, item: NewInstance, now: float) -> None:
        self.row: dict[str, Any] = {
            "id": id, "job_name": item.job_name, "job_version": item.version, "params": item.params_json,
            "gated": item.gated, "status": I.QUEUED.value, "current_step": 0, "run": 1,
            "idempotency_key": item.idempotency_key, "idempotency_request": item.idempotency_request,
            "priority": item.priority, "report": None, "error_message": None, "progress": 0.0,
            "chunks_per_second": None, "eta_seconds": None, "error_count": 0, "reduction_attempts": 0,
            "last_error": None, "purging": False}
        self.created_at, self.started_at, self.finished_at = now, None, None


class MemoryStore:
    """storage.protocol.EngineStore in dicts. `clock` (seconds, monotonic) is the database's
    `now()`: chunkd.testing passes a virtual one to run retries without waiting."""

    def __init__(self, partitions: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        self.partitions = partitions
        self.dsn = ""
        self.deadlines = DEFAULT
        self.user_limits = None
        self.clock = clock
        self.instances: dict[int, MemInstance] = {}
        self.chunks: dict[int, MemChunk] = {}
        self.counters: dict[tuple[int, int], list[int]] = {}  # (instance, step) -> created..errors
        self.changed: set[int] = set()  # instances whose counters changed since the last take (0018)
        self.warnings: list[tuple[int, int, int, str]] = []   # (instance, step, chunk, message)
        self.applied_tx: list[tuple[int, int, TxOp]] = []     # (instance, step, op): committed ctx.tx writes
        self.leader: LeaderTerm | None = None
        self.nodes: dict[int, float] = {}  # node id -> its last heartbeat, on `clock`
        self._lease_until = 0.0
        self._ids = itertools.count(1)
        self._chunk_ids = itertools.count(1)
        self._node_ids = itertools.count(1)
        self._rank = itertools.count()
        self._rr = itertools.count()

    # ------------------------------------------------------------ helpers
    def _count(self, instance_id: int, step: int, field: int, n: int = 1) -> None:
        if n:
            if (instance_id, step) in self.counters:  # an update of the row marks (migration 0018)
                self.changed.add(instance_id)
            self.counters.setdefault((instance_id, step), [0, 0, 0, 0, 0])[field] += n

    def _insert(self, instance_id: int, step: int, state: int, max_attempts: int, data: bytes) -> int:
        c = MemChunk(next(self._chunk_ids), instance_id, step, state, next(self._rr) % self.partitions,
                     max_attempts, data, next(self._rank), self.clock())
        self.chunks[c.id] = c
        return c.partition

    def _all_done_below(self, instance_id: int, bound: int, tolerate_failed: bool) -> bool:
        """Rule 10, as sql._all_done_below: every chunk of the steps below `bound` COMPLETED."""
        for (inst, step), (created, completed, failed, _, _) in self.counters.items():
            if inst == instance_id and step < bound and completed + (failed if tolerate_failed else 0) < created:
                return False
        return True

    def _fence(self, leader: LeaderTerm | None) -> None:
        if leader is not None and self.leader != leader:
            raise NotLeader(f"maintenance term {leader.term} of node {leader.node_id} is over")

    def _status(self, instance_id: int) -> str | None:
        inst = self.instances.get(instance_id)
        return inst.row["status"] if inst is not None else None

    def _set_status(self, inst: MemInstance, to: I) -> None:
        inst.row["status"] = to.value

    # ------------------------------------------------------------ instances
    async def create_instances(self, items: Sequence[NewInstance]) -> tuple[list[Created], set[int]]:
        out: list[Created] = []
        parts: set[int] = set()
        for item in items:
            existing = next((i.row["id"] for i in self.instances.values()
                             if item.idempotency_key is not None and i.row["idempotency_key"] == item.idempotency_key),
                            None)
            if existing is not None:
                out.append(Created(existing, False))
                continue
            n = next(self._ids)
            self.instances[n] = MemInstance(n, item, self.clock())
            parts.add(self._insert(n, 0, int(C.READY), item.first_max_attempts, item.first_chunk))
            self._count(n, 0, CREATED)
            out.append(Created(n, True))
        return out, parts

    async def create_instance(self, job_name: str, version: int, params_json: str, gated: bool,
                              idempotency_key: str | None, first_chunk: bytes, max_attempts: int,
                              idempotency_request: str | None = None,
                              priority: int = 0) -> tuple[int, bool, int | None]:
        (res,), parts = await self.create_instances([NewInstance(
            job_name, version, params_json, gated, idempotency_key, idempotency_request, max_attempts, priority,
            first_chunk)])
        return res.instance_id, res.created, next(iter(parts), None)

    async def instance_runtime(self, instance_id: int) -> InstanceRow | None:
        inst = self.instances.get(instance_id)
        if inst is None:
            return None
        r = inst.row
        return InstanceRow(r["id"], r["job_name"], r["job_version"], r["params"], r["gated"], r["status"])

    async def start_and_load(self, start: Sequence[int], load: Sequence[int]) -> list[InstanceRow]:
        # read as of before the start, as Postgres's CTE does
        loaded = [r for i in load if (r := await self.instance_runtime(i)) is not None]
        await self.mark_started(start)
        return loaded

    async def get_instance(self, instance_id: int) -> dict[str, Any] | None:
        inst = self.instances.get(instance_id)
        if inst is None:
            return None
        return dict(inst.row)  # the report as JSON text, as asyncpg returns jsonb

    async def mark_started(self, instance_ids: Sequence[int]) -> None:
        for i in instance_ids:
            inst = self.instances.get(i)
            if inst is not None and inst.row["status"] == I.QUEUED.value:
                self._set_status(inst, I.IN_PROGRESS)
                inst.started_at = self.clock()

    async def ended_among(self, instance_ids: Sequence[int]) -> set[int]:
        return {i for i in instance_ids if self._status(i) in _TERMINAL}

    async def cancel_instance(self, instance_id: int) -> bool:
        return await self.finish_instance(instance_id, I.CANCELLED, error="cancelled by request")

    async def force_stop_instance(self, instance_id: int) -> bool:
        return await self.finish_instance(instance_id, I.CANCELLED, running_too=True, error="force-stopped by request")

    async def restart_instance(self, instance_id: int, reduction_step: int | None) -> set[int] | None:
        inst = self.instances.get(instance_id)
        allowed = {s.value for s in RESTARTABLE} & set(instance_allowed_from(I.IN_PROGRESS))
        if inst is None or inst.row["status"] not in allowed or inst.row["purging"]:
            return None
        r = inst.row
        r.update(status=I.IN_PROGRESS.value, error_message=None, eta_seconds=None, run=r["run"] + 1,
                 reduction_attempts=0, last_error=None)
        self.changed.add(instance_id)
        inst.finished_at = None
        bound = r["current_step"] if r["gated"] else _ALL_STEPS
        red = -1 if reduction_step is None else reduction_step
        parts: set[int] = set()
        for c in self.chunks.values():
            if c.instance_id != instance_id or c.state not in (C.FAILED, C.CANCELLED):
                continue
            self._count(instance_id, c.step, FAILED if c.state == C.FAILED else CANCELLED, -1)
            c.state = int(C.GATE_WAITING if c.step > bound or c.step == red else C.READY)
            c.failures, c.error_message, c.error_attempt, c.next_run_at = 0, None, None, None
            c.lease_owner = c.lease_until = None
            if c.state == C.READY:
                parts.add(c.partition)
        return parts

    # ------------------------------------------------------------ the hot path
    async def claim(self, partition: int, limit: int, node_id: int, lease_seconds: float,
                    from_rank: int = 0, suspect: bool = False, from_id: int = 0) -> list[ClaimedChunk]:
        ready = [c for c in self.chunks.values() if c.state == C.READY and c.partition == partition]
        picked: list[MemChunk] = []
        if suspect:
            picked = sorted((c for c in ready if c.orphaned >= SUSPECT_AFTER), key=lambda c: c.id)[:1]
        normal = sorted((c for c in ready if c.orphaned < SUSPECT_AFTER and (c.rank, c.id) >= (from_rank, from_id)),
                        key=lambda c: (c.rank, c.id))
        picked += normal[:max(0, limit - len(picked))]
        now = self.clock()
        out = []
        for c in picked:
            c.state, c.attempt = int(C.IN_PROGRESS), c.attempt + 1
            c.lease_owner, c.lease_until = node_id, now + lease_seconds
            out.append(ClaimedChunk(c.id, c.instance_id, c.step, c.attempt, c.failures, c.data,
                                    orphaned=c.orphaned, rank=c.rank))
        return out

    async def mark_chunk_started(self, chunk_id: int, attempt: int) -> None:
        c = self.chunks.get(chunk_id)
        if c is not None and c.attempt == attempt:
            c.started_attempt = attempt

    async def record_outcomes(self, successes: Sequence[Success], setbacks: Sequence[Setback]) -> Recorded:
        res = Recorded(ready_partitions=set(), accepted=set(), setback_states={})
        closed = {i for i in {s.instance_id for s in successes} | {b.instance_id for b in setbacks}
                  if self._status(i) in _TERMINAL}
        refused_of: list[MemChunk] = []
        for s in successes:
            c = self.chunks.get(s.chunk_id)
            if c is None or c.attempt != s.attempt or c.state != C.IN_PROGRESS:
                res.refused += 1
                if c is not None and c.attempt == s.attempt:
                    refused_of.append(c)
                continue
            c.state, c.data, c.lease_owner, c.lease_until = int(C.COMPLETED), None, None, None
            res.accepted.add(c.id)
            res.completed += 1
            self.applied_tx.extend((s.instance_id, s.step, op) for op in s.tx_ops)
            if s.children:
                child = s.step + 1
                if s.instance_id in closed:
                    state = int(C.CANCELLED)
                    self._count(s.instance_id, child, CANCELLED, len(s.children))
                else:
                    state = int(C.GATE_WAITING if s.child_gated else C.READY)
                self._count(s.instance_id, child, CREATED, len(s.children))
                for data in s.children:
                    part = self._insert(s.instance_id, child, state, s.child_max_attempts, data)
                    if state == C.READY:
                        res.ready_partitions.add(part)
                res.children += len(s.children)
            self.warnings.extend((s.instance_id, s.step, s.chunk_id, storable(w)) for w in s.warnings[:MAX_WARNINGS])
            self._count(s.instance_id, s.step, COMPLETED)
        now = self.clock()
        for b in setbacks:
            c = self.chunks.get(b.chunk_id)
            if c is None or c.attempt != b.attempt or c.state != C.IN_PROGRESS or b.state not in _SETBACK_TARGETS:
                res.refused += 1
                if c is not None and c.attempt == b.attempt:
                    refused_of.append(c)
                continue
            ended = self._status(c.instance_id) in _TERMINAL
            if ended:
                state = int(C.CANCELLED)
            elif b.state == C.CANCELLED:
                state = int(C.READY)   # a release that finds the instance running again: its new run's
            elif b.state != SETBACK_BY_ATTEMPTS:
                state = b.state
            else:
                state = int(C.FAILED if c.failures + 1 >= c.max_attempts else C.ERRORED)
            c.failures += 0 if ended or b.state == C.CANCELLED else int(b.failure)
            if b.message is not None:
                c.error_message, c.error_trace, c.error_attempt = storable(b.message), storable(b.trace, MAX_TRACE), \
                    c.attempt
            if b.failure:
                c.orphaned = 0
            c.state, c.next_run_at, c.lease_owner, c.lease_until = state, now + b.delay, None, None
            res.setback_states[c.id] = state
            if state == C.FAILED:
                res.failed += 1
                self._count(c.instance_id, c.step, FAILED)
                self._count(c.instance_id, c.step, ERRORS)
            elif state == C.ERRORED:
                res.errored += 1
                self._count(c.instance_id, c.step, ERRORS)
            elif state == C.CANCELLED:
                res.cancelled += 1
                self._count(c.instance_id, c.step, CANCELLED)
            elif state == C.READY:
                res.released += 1
                res.ready_partitions.add(c.partition)
            else:
                res.poll_waiting += 1
        res.refused_cancelled = sum(1 for c in refused_of if c.state == C.CANCELLED)
        res.closed = {(c.instance_id, c.step) for cid in (*res.accepted, *res.setback_states)
                      if self._step_closed((c := self.chunks[cid]).instance_id, c.step)}
        return res

    def _step_closed(self, instance_id: int, step: int) -> bool:
        """As sql._STEP_CLOSED: every chunk of the step has ended."""
        created, completed, failed, cancelled, _ = self.counters.get((instance_id, step), (0, 0, 0, 0, 0))
        return created == completed + failed + cancelled

    async def alive(self) -> bool:
        return True

    # ------------------------------------------------------------ maintenance
    async def acquire_leadership(self, node_id: int, ttl: float) -> int | None:
        """As LEADER_ACQUIRE: the holder renews; another node takes over (next term) only
        once the lease ran out; after a resignation the next leader starts at term 1."""
        now = self.clock()
        held = self.leader
        if held is None:
            self.leader = LeaderTerm(node_id, 1)
        elif held.node_id != node_id:
            if self._lease_until >= now:
                return None
            self.leader = LeaderTerm(node_id, held.term + 1)
        self._lease_until = now + ttl
        return self.leader.term

    async def resign_leadership(self, node_id: int) -> None:
        if self.leader is not None and self.leader.node_id == node_id:
            self.leader = None

    async def register_node(self, name: str, pid: int, declared_schedules: Sequence[str] = ()) -> int:
        node_id = next(self._node_ids)  # never reused, as the serial id
        self.nodes[node_id] = self.clock()
        return node_id

    async def forget_dead_nodes(self, older_than: float) -> int:
        """As NODE_PURGE_STALE: the rows whose heartbeat is older than `older_than` seconds go."""
        dead = [n for n, beat in self.nodes.items() if beat < self.clock() - older_than]
        for n in dead:
            del self.nodes[n]
        return len(dead)

    async def rescue_expired(self, limit: int) -> tuple[int, int, set[int], list[tuple[str, int, int, int, int]]]:
        now = self.clock()
        expired = sorted((c for c in self.chunks.values()
                          if c.state == C.IN_PROGRESS and c.lease_until is not None and c.lease_until < now),
                         key=lambda c: c.id)[:limit]
        failed = 0
        parts: set[int] = set()
        failed_chunks: list[tuple[str, int, int, int, int]] = []
        for c in expired:
            blamed = c.orphaned == 0 or c.started_attempt == c.attempt
            if self._status(c.instance_id) in _TERMINAL:
                c.state = int(C.CANCELLED)
                self._count(c.instance_id, c.step, CANCELLED)
            elif blamed and c.failures + 1 >= c.max_attempts:
                c.state = int(C.FAILED)
                failed += 1
                failed_chunks.append((self.instances[c.instance_id].row["job_name"], c.instance_id, c.step, c.id,
                                      c.attempt))
                self._count(c.instance_id, c.step, FAILED)
                self._count(c.instance_id, c.step, ERRORS)
            else:
                c.state = int(C.READY)
                parts.add(c.partition)
            c.failures += int(blamed)
            c.orphaned += int(blamed)
            c.lease_owner = c.lease_until = None
            if blamed:
                c.error_message = (f"the worker died or stalled while running this chunk (lease expired, attempt "
                                   f"{c.attempt})")
                c.error_attempt = c.attempt
        return len(expired), failed, parts, failed_chunks

    def next_due(self) -> float | None:
        """When the first ERRORED or POLL_WAITING chunk may run again (chunkd.testing's clock jumps there)."""
        due = [c.next_run_at for c in self.chunks.values()
               if c.state in (C.ERRORED, C.POLL_WAITING) and c.next_run_at is not None
               and self._status(c.instance_id) not in _TERMINAL]
        return min(due) if due else None

    async def release_due(self, limit: int) -> tuple[set[int], Counter[tuple[str, int, int]]]:
        now = self.clock()
        retried: Counter[tuple[str, int, int]] = Counter()
        parts: set[int] = set()
        for waiting in (C.ERRORED, C.POLL_WAITING):
            due = sorted((c for c in self.chunks.values()
                          if c.state == waiting and c.next_run_at is not None and c.next_run_at <= now),
                         key=lambda c: c.next_run_at or 0.0)[:limit]
            for c in due:
                inst = self.instances[c.instance_id]
                if inst.row["status"] in _TERMINAL:
                    continue
                c.state, c.next_run_at = int(C.READY), None
                parts.add(c.partition)
                if waiting == C.ERRORED:
                    retried[(inst.row["job_name"], inst.row["job_version"], c.step)] += 1
        return parts, retried

    async def rehome(self) -> set[int]:
        moved: set[int] = set()
        for c in self.chunks.values():
            if c.state == C.READY and c.partition >= self.partitions:
                c.partition = c.id % self.partitions
                moved.add(c.partition)
        return moved

    async def table_health(self) -> list[TableHealth]:
        return []  # dicts leave no dead rows behind

    async def upkeep(self, table: str, vacuum: bool) -> str | None:
        raise LookupError(f"no table {table!r} in memory")

    async def stale_partitions(self, partitions: Iterable[int], older_than: float) -> set[int]:
        ages = await self.oldest_ready_age(partitions)
        return {p for p, age in ages.items() if age >= older_than and any(
            c.state == C.READY and c.partition == p for c in self.chunks.values())}

    async def active_instances(self) -> list[InstanceRow]:
        now = self.clock()
        return [InstanceRow(r["id"], r["job_name"], r["job_version"], r["params"], r["gated"], r["status"],
                            r["current_step"], now - (i.started_at if i.started_at is not None else i.created_at),
                            r["run"])
                for i in sorted(self.instances.values(), key=lambda i: i.row["id"])
                if (r := i.row)["status"] not in _TERMINAL]

    async def active_instances_among(self, instance_ids: Sequence[int]) -> list[InstanceRow]:
        wanted = set(instance_ids)
        return [i for i in await self.active_instances() if i.id in wanted]

    async def take_changed_instances(self) -> set[int]:
        taken, self.changed = self.changed, set()
        return taken

    async def step_counts(self, instance_ids: Sequence[int]) -> dict[int, list[StepCounts]]:
        wanted = set(instance_ids)
        out: dict[int, list[StepCounts]] = {}
        for (inst, step), v in sorted(self.counters.items()):
            if inst in wanted:
                out.setdefault(inst, []).append(StepCounts(step, *v))
        return out

    async def instances_with_errored_chunks(self, instance_ids: Sequence[int]) -> set[int]:
        wanted = set(instance_ids)
        return {c.instance_id for c in self.chunks.values() if c.state == C.ERRORED and c.instance_id in wanted}

    async def set_progress(self, rows: Sequence[Progress]) -> None:
        for p in rows:
            inst = self.instances.get(p.instance_id)
            if inst is not None and inst.row["status"] not in _TERMINAL:
                inst.row.update(progress=p.progress, chunks_per_second=p.rate, eta_seconds=p.eta,
                                error_count=p.errors)

    async def set_instances_status(self, runs: dict[int, int], to: I, leader: LeaderTerm | None = None) -> set[int]:
        if not runs:
            return set()
        self._fence(leader)
        allowed = set(maintenance_moves_from(to))
        moved = set()
        for i, run in runs.items():
            inst = self.instances.get(i)
            if inst is not None and inst.row["run"] == run and inst.row["status"] in allowed:
                self._set_status(inst, to)
                moved.add(i)
        return moved

    async def finalize(self, decided: Sequence[Finish], leader: LeaderTerm | None = None) -> set[int]:
        if not decided:
            return set()
        self._fence(leader)
        allowed = set(instance_allowed_from(I.FINALIZE))
        moved = set()
        for d in decided:
            inst = self.instances.get(d.instance_id)
            if (inst is not None and inst.row["run"] == d.run and inst.row["status"] in allowed
                    and self._all_done_below(d.instance_id, d.bound, d.tolerate_failed)):
                self._set_status(inst, I.FINALIZE)
                moved.add(d.instance_id)
        return moved

    async def advance_gates(self, gates: Sequence[Finish], leader: LeaderTerm | None = None) -> dict[int, set[int]]:
        if not gates:
            return {}
        self._fence(leader)
        opened: dict[int, set[int]] = {}
        open_from = set(chunk_allowed_from(C.READY, frozenset({C.GATE_WAITING})))
        for g in gates:
            inst = self.instances.get(g.instance_id)
            if (inst is None or inst.row["current_step"] != g.bound - 1 or inst.row["run"] != g.run
                    or inst.row["status"] not in (I.QUEUED.value, I.IN_PROGRESS.value, I.ERRORED.value)
                    or not self._all_done_below(g.instance_id, g.bound, g.tolerate_failed)):
                continue
            inst.row["current_step"] = g.bound
            parts = opened[g.instance_id] = set()
            for c in self.chunks.values():
                if c.instance_id == g.instance_id and c.step == g.bound and c.state in open_from:
                    c.state = int(C.READY)
                    parts.add(c.partition)
        return opened

    def _finish(self, instance_id: int, to: I, allowed_from: Iterable[str], report_json: str | None,
                error: str | None, decided: Finish | None) -> MemInstance | None:
        """INSTANCE_FINISH: the guarded move, fenced by the run and (to COMPLETED) rule 10."""
        inst = self.instances.get(instance_id)
        if inst is None or inst.row["status"] not in set(allowed_from):
            return None
        if decided is not None and inst.row["run"] != decided.run:
            return None
        if to is I.COMPLETED and not self._all_done_below(instance_id, decided.bound if decided else 0,
                                                           decided.tolerate_failed if decided else False):
            return None
        r = inst.row
        self._set_status(inst, to)
        inst.finished_at = self.clock()
        if to is I.COMPLETED:
            r["progress"], r["eta_seconds"] = 1.0, 0
        else:
            r["eta_seconds"] = None
        if report_json is not None:
            r["report"] = storable_json(report_json)
        if error is not None:
            r["error_message"] = storable(error)
        return inst

    async def complete_instances(self, decided: Sequence[Finish], leader: LeaderTerm | None = None) -> set[int]:
        self._fence(leader)
        return {d.instance_id for d in decided
                if self._finish(d.instance_id, I.COMPLETED, instance_allowed_from(I.COMPLETED), None, None, d)}

    async def finish_instance(self, instance_id: int, to: I, *, report_json: str | None = None,
                              error: str | None = None, conn: Any = None, running_too: bool = False,
                              leader: LeaderTerm | None = None, decided: Finish | None = None) -> bool:
        self._fence(leader)
        if self._finish(instance_id, to, instance_allowed_from(to), report_json, error, decided) is None:
            return False
        if to is not I.COMPLETED:
            states = _CANCEL_ALL if running_too else _CANCEL_PENDING
            for c in self.chunks.values():
                if c.instance_id == instance_id and c.state in states:
                    c.state, c.lease_owner, c.lease_until = int(C.CANCELLED), None, None
                    self._count(instance_id, c.step, CANCELLED)
        return True

    async def last_error(self, instance_id: int) -> tuple[int, str, int, int] | None:
        errs = sorted((c for c in self.chunks.values() if c.instance_id == instance_id
                       and c.state in (C.FAILED, C.ERRORED) and c.error_message is not None),
                      key=lambda c: (c.state != C.FAILED, c.id))
        if not errs:
            return None
        c = errs[0]
        return c.step, c.error_message or "", c.id, c.error_attempt if c.error_attempt is not None else c.attempt

    @contextlib.asynccontextmanager
    async def reduction(self, instance_id: int, step: int, user_sql: Callable[[], bool]) -> AsyncIterator[MemReduction]:
        # nothing to roll back on an exception: a MemReduction writes only in `complete`
        yield MemReduction(self, instance_id, step)

    async def reduction_inputs(self, reductions: Sequence[tuple[int, int]],
                               max_bytes: int) -> tuple[dict[int, list[bytes]], set[int]]:
        wanted = dict(reductions)
        out: dict[int, list[bytes]] = {i: [] for i in wanted}
        for c in sorted(self.chunks.values(), key=lambda c: c.id):
            if wanted.get(c.instance_id) == c.step and c.state == C.GATE_WAITING:
                out[c.instance_id].append(c.data or b"")
        large = {i for i, data in out.items() if sum(map(len, data)) > max_bytes}
        return {i: d for i, d in out.items() if i not in large}, large

    async def complete_reductions(self, reduced: Sequence[Reduced], leader: LeaderTerm | None) -> set[int]:
        self._fence(leader)
        done: set[int] = set()
        for r in reduced:
            if await MemReduction(self, r.decided.instance_id, r.step).complete(r.report_json, None, r.decided):
                done.add(r.decided.instance_id)
        return done

    async def reduction_failed(self, instance_id: int, run: int, error: str, *, counted: bool,
                               leader: LeaderTerm | None) -> int | None:
        self._fence(leader)
        inst = self.instances.get(instance_id)
        if inst is None or inst.row["status"] != I.FINALIZE.value or inst.row["run"] != run:
            return None
        inst.row["reduction_attempts"] += int(counted)
        inst.row["last_error"] = storable(error)
        return int(inst.row["reduction_attempts"])

    async def instances_by_status(self) -> dict[str, int]:
        return dict(Counter(i.row["status"] for i in self.instances.values()))

    async def queue_depth(self) -> dict[tuple[int, str], int]:
        return dict(Counter((c.partition, C(c.state).name) for c in self.chunks.values()
                            if c.state in (C.READY, C.IN_PROGRESS, C.ERRORED)))

    async def oldest_ready_age(self, partitions: Iterable[int]) -> dict[int, float]:
        now = self.clock()
        out = {p: 0.0 for p in partitions}
        for c in self.chunks.values():
            if c.state == C.READY and c.partition in out:
                out[c.partition] = max(out[c.partition], now - c.created_at)
        return out


class MemReduction:
    """storage.protocol.ReductionTx in memory: the reducer's ctx.tx writes and the report are
    kept only if `complete` accepts them (as the Postgres transaction commits only then)."""

    def __init__(self, store: MemoryStore, instance_id: int, step: int) -> None:
        self.store, self.instance_id, self.step = store, instance_id, step
        self._ops: list[TxOp] = []

    async def input(self) -> AsyncIterator[bytes]:
        for c in sorted(self.store.chunks.values(), key=lambda c: c.id):
            if c.instance_id == self.instance_id and c.step == self.step and c.state == C.GATE_WAITING:
                yield c.data or b""

    async def finalizing(self, run: int) -> bool:
        inst = self.store.instances.get(self.instance_id)
        return inst is not None and inst.row["status"] == I.FINALIZE.value and inst.row["run"] == run

    async def execute(self, op: TxOp) -> None:
        self._ops.append(op)

    async def complete(self, report_json: str, leader: LeaderTerm | None, decided: Finish) -> bool:
        s = self.store
        s._fence(leader)
        if s._finish(self.instance_id, I.COMPLETED, [I.FINALIZE.value], report_json, None, decided) is None:
            return False
        n = 0
        consumable = set(chunk_allowed_from(C.COMPLETED, frozenset({C.GATE_WAITING})))
        for c in s.chunks.values():
            if c.instance_id == self.instance_id and c.step == self.step and c.state in consumable:
                c.state, c.data = int(C.COMPLETED), None
                n += 1
        s._count(self.instance_id, self.step, COMPLETED, n)
        s.applied_tx.extend((self.instance_id, self.step, op) for op in self._ops)
        return True
