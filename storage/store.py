"""The Postgres store: every round trip chunkd makes goes through here."""
from __future__ import annotations

import contextlib
import itertools
import time
import weakref
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import anyio
import asyncpg

from storage import sql
from storage.counters import CANCELLED, COMPLETED, CREATED, ERRORS, FAILED, CounterDelta
from storage.deadlines import DEFAULT, Deadlines, keep_alive
from storage.migrate import migrate
from storage.states import INSTANCE_TERMINAL, C, I, instance_allowed_from, maintenance_moves_from
from storage.tables import quote
from storage.text import MAX_TRACE, storable, storable_json
from storage.types import (
    ClaimedChunk,
    Created,
    Finish,
    InstanceDetail,
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

# Above this many child rows, COPY beats an unnest INSERT.
_COPY_THRESHOLD = 2000
# Warnings kept per chunk run (each cut to storage.text.MAX_MESSAGE characters).
MAX_WARNINGS = 100

# chunkd's own statements run under limits of their own, set on every engine connection at
# connect, whatever the database's defaults: a DBA's `statement_timeout = 2s` would cancel a
# large COPY of children or a migration, `lock_timeout = 1s` a cancel queued behind a
# completion. Ours are bounded by design; these only end what is truly stuck (a statement
# past 5 minutes, a transaction of ours left idle a minute by a paused daemon). User SQL
# (ctx.tx in transactional steps and reductions, whose transactions also hold the user's
# Python work) runs under the database's own limits: see Store.user_limits.
# The longest a VACUUM of one table may take before chunkd gives up on it (client side).
UPKEEP_DEADLINE = 1800.0
UPKEEP_YIELD_CHECK = 0.5  # seconds between looks at whether chunkd's VACUUM blocks anyone
OWN_LIMITS = {"statement_timeout": "5min", "lock_timeout": "0", "idle_in_transaction_session_timeout": "1min"}


class SessionLimits(NamedTuple):
    """The database's limits for chunkd's role, as `SHOW` spells them, and the idle one in seconds."""
    statement_timeout: str
    lock_timeout: str
    idle_in_transaction: str
    idle_seconds: float


async def insert_instances(conn: asyncpg.Connection, items: Sequence[NewInstance],
                           partition: Callable[[], int]) -> tuple[list[Created], set[int]]:
    """The one way instances come to exist (a submit, a bulk submit, a schedule firing), in
    the caller's transaction and in five statements whatever their number: each item is
    created whole (its row, its first chunk READY in partition(), its counters) or, when its
    idempotency key exists already, answered with that instance. Keys must be distinct
    within `items`. The caller has run actors.instances.checked on each. Returns one result
    per item, in order, and the partitions to notify after the commit."""
    if not items:
        return [], set()
    ids = [r[0] for r in await conn.fetch(sql.INSTANCE_IDS, len(items))]
    inserted = {r[0] for r in await conn.fetch(
        sql.INSTANCE_INSERT_MANY, ids, [i.job_name for i in items], [i.version for i in items],
        [i.params_json for i in items], [i.gated for i in items], [i.idempotency_key for i in items],
        [i.idempotency_request if i.idempotency_key is not None else None for i in items],
        [i.priority for i in items])}
    missing = [i.idempotency_key for n, i in zip(ids, items) if n not in inserted]
    existing = {r[0]: r[1] for r in await conn.fetch(sql.INSTANCE_IDS_BY_KEYS, missing)} if missing else {}
    out: list[Created] = []
    rows: list[tuple[int, int, int, int, int, bytes, int]] = []
    partitions: set[int] = set()
    delta = CounterDelta()
    for n, item in zip(ids, items):
        if n in inserted:
            part = partition()
            partitions.add(part)
            rows.append((n, 0, int(C.READY), part, item.first_max_attempts, item.first_chunk, 0))
            delta.add(n, 0, CREATED)
            out.append(Created(n, True))
        else:
            assert item.idempotency_key is not None  # only a key conflict skips a row
            out.append(Created(existing[item.idempotency_key], False))
    if rows:
        await conn.execute(sql.CHUNK_INSERT, *map(list, zip(*rows)))
        await conn.execute(sql.COUNTERS_ADD, *delta.arrays())
    return out, partitions


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's release hook. asyncpg's default sends `SELECT pg_advisory_unlock_all();
    CLOSE ALL; UNLISTEN *; RESET ALL` on every release, one more round trip and four more
    statements for each of ours. chunkd's own statements leave no session state; the one
    place user SQL runs on this pool resets explicitly (`reset_after_user_sql`). asyncpg
    still rolls back an open transaction itself before calling this."""


@contextlib.asynccontextmanager
async def reset_after_user_sql(conn: asyncpg.Connection, ran: Callable[[], bool]) -> AsyncIterator[None]:
    """User statements (ctx.tx) may leave session state (SET, advisory locks, LISTEN): if
    `ran()` says some ran, the connection goes back to the pool only after a full reset,
    or not at all."""
    try:
        yield
    finally:
        if ran():
            await _reset_session(conn)


async def _reset_session(conn: asyncpg.Connection) -> None:
    try:
        with anyio.CancelScope(shield=True), anyio.fail_after(5):
            await conn.execute(conn.get_reset_query())
    except Exception:  # noqa: BLE001 - a connection we cannot reset must not be reused
        # Already gone (dropped by Store.abandon_connections, or the server closed it: an
        # idle-in-transaction timeout, say) is fine; raising here would hide the error that
        # ended the user's transaction.
        with contextlib.suppress(Exception):
            conn.terminate()


def _fence_args(decided: Finish | None) -> tuple[int | None, int, bool]:
    """INSTANCE_FINISH's $6-$8: the run, and the steps whose chunks must all be done."""
    if decided is None:
        return None, 0, False
    return decided.run, decided.bound, decided.tolerate_failed


def latest_attempts(successes: Iterable[Success]) -> dict[int, int]:
    """Per chunk, the highest attempt among the results: attempts only grow (every claim adds
    one), so a lower attempt of the same chunk is stale whatever the row holds."""
    out: dict[int, int] = {}
    for s in successes:
        if s.attempt > out.get(s.chunk_id, -1):
            out[s.chunk_id] = s.attempt
    return out


def _fenced(successes: Sequence[Success], fence: dict[int, int], accepted: set[int], res: Recorded,
            refused_of: list[tuple[int, int]]) -> list[Success]:
    """The results CHUNK_COMPLETE took (`accepted`, sent with `fence`'s attempts), each chunk
    once; the others go to refused_of. Fills res's completed, refused and accepted."""
    ok: list[Success] = []
    for s in successes:
        if s.chunk_id in accepted and fence.get(s.chunk_id) == s.attempt:
            del fence[s.chunk_id]  # a second result of the same attempt counts once
            ok.append(s)
        else:
            refused_of.append((s.chunk_id, s.attempt))
    res.accepted = accepted
    res.refused += len(successes) - len(ok)
    res.completed = len(ok)
    return ok


class Store:
    def __init__(self, pool: asyncpg.Pool, partitions: int, dsn: str = "",
                 deadlines: Deadlines = DEFAULT, user_limits: SessionLimits | None = None) -> None:
        self.pool = pool
        self.partitions = partitions
        self.dsn = dsn
        self.deadlines = deadlines
        self._rr = itertools.count()
        # monotonic time a pool connection last came back healthy from the database (every
        # release of a live connection): "progress with the database" for the health checks
        self.last_round_trip = time.monotonic()
        self._conns: weakref.WeakSet[asyncpg.Connection] = weakref.WeakSet()
        # The database's own limits, re-applied (SET LOCAL) around user SQL on this pool;
        # None: the pool runs under the database's limits throughout (no own limits set).
        self.user_limits = user_limits

    @classmethod
    async def open(cls, dsn: str, partitions: int, *, min_size: int = 2, max_size: int = 10,
                   on_query: Callable[[Any], None] | None = None, deadlines: Deadlines = DEFAULT) -> "Store":
        """`on_query` sees every statement (the benchmark counts round trips with it). Every
        statement gets `deadlines.statement` unless it says otherwise (command_timeout: the
        server is also sent a cancel, and a connection that does not answer that either is
        terminated by asyncpg), and so do connects."""
        store: Store | None = None
        early: list[asyncpg.Connection] = []  # the pool's first connections, before the store exists

        async def init(conn: asyncpg.Connection) -> None:
            keep_alive(conn, deadlines.statement)
            (early.append if store is None else store._conns.add)(conn)
            if on_query is not None:
                conn.add_query_logger(on_query)

        async def reset(conn: asyncpg.Connection) -> None:
            if store is not None:
                store.last_round_trip = time.monotonic()
            await _keep_session(conn)

        probe = await asyncpg.connect(dsn, timeout=deadlines.statement, command_timeout=deadlines.statement,
                                      server_settings={"application_name": "chunkd"})
        try:
            row = await probe.fetchrow(sql.SESSION_LIMITS)
        finally:
            await probe.close()
        pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, init=init, reset=reset,
                                         command_timeout=deadlines.statement, timeout=deadlines.statement,
                                         server_settings={"application_name": "chunkd", **OWN_LIMITS})
        store = cls(pool, partitions, dsn, deadlines, SessionLimits(row[0], row[1], row[2], row[3] or 0.0))
        for c in early:
            store._conns.add(c)
        return store

    async def abandon_connections(self) -> int:
        """Drop every connection of the pool, in use or idle, without a word to the server
        (a silent connection would not answer one): statements waiting on them fail at once
        as connection errors, which every caller retries, and the pool opens new ones. For a
        daemon whose connections went silent (issue 22 row 4). Returns how many were dropped."""
        await self.pool.expire_connections()  # only marks them: returns at once
        conns = [c for c in self._conns if not c.is_closed()]
        for c in conns:
            c.terminate()
        return len(conns)

    async def apply_user_limits(self, conn: asyncpg.Connection) -> None:
        """In the caller's transaction, before user SQL: the database's own limits until it ends."""
        if self.user_limits is not None:
            await conn.execute(sql.SESSION_LIMITS_SET, *self.user_limits[:3])

    async def apply_own_limits(self, conn: asyncpg.Connection) -> None:
        """In the caller's transaction, after user SQL: chunkd's limits again for its own statements."""
        if self.user_limits is not None:
            await conn.execute(sql.SESSION_LIMITS_SET, *OWN_LIMITS.values())

    async def close(self) -> None:
        await self.pool.close()

    async def db_now(self) -> Any:
        """The database's clock: times that mean "as of the data" never come from the host's."""
        return await self.pool.fetchval(sql.DB_NOW)

    async def alive(self) -> bool:
        """Does the database answer a trivial query right now?"""
        try:
            return await self.pool.fetchval(sql.PING, timeout=5) == 1
        except Exception:  # noqa: BLE001 - any failure means no
            return False

    async def migrate(self) -> list[str]:
        async with self.pool.acquire(timeout=self.deadlines.statement) as conn:
            return await migrate(conn, self.deadlines.migration)

    def next_partition(self) -> int:
        return next(self._rr) % self.partitions

    # ------------------------------------------------------------ nodes, leader
    async def register_node(self, name: str, pid: int, declared_schedules: Sequence[str] = ()) -> int:
        """`declared_schedules`: those this daemon's job modules declare; a declared schedule
        no live daemon declares is orphaned (storage.schedules.Schedules.sweep_orphans)."""
        return await self.pool.fetchval(sql.NODE_REGISTER, name, pid, list(declared_schedules))

    async def unregister_node(self, node_id: int) -> None:
        await self.pool.execute(sql.NODE_DELETE, node_id)

    async def acquire_leadership(self, node_id: int, ttl: float) -> int | None:
        return await self.pool.fetchval(sql.LEADER_ACQUIRE, node_id, ttl)

    async def forget_dead_nodes(self, older_than: float) -> int:
        """Delete the rows of nodes whose heartbeat stopped `older_than` seconds ago."""
        return int((await self.pool.execute(sql.NODE_PURGE_STALE, older_than)).split()[-1])

    async def leader_held(self) -> bool:
        """Does some daemon hold the maintenance lease right now?"""
        return bool(await self.pool.fetchval(sql.LEADER_HELD, timeout=2))

    async def resign_leadership(self, node_id: int) -> None:
        await self.pool.execute(sql.LEADER_RESIGN, node_id)

    @staticmethod
    async def fence_leader(conn: asyncpg.Connection, leader: LeaderTerm | None) -> None:
        """Inside a leader's transaction, last before commit: raises NotLeader (so the
        transaction rolls back) unless `leader` still holds its term and lease."""
        if leader is not None and await conn.fetchval(sql.LEADER_FENCE, leader.node_id, leader.term) is None:
            raise NotLeader(f"maintenance term {leader.term} of node {leader.node_id} is over")

    # ------------------------------------------------------------ instances
    async def create_instances(self, items: Sequence[NewInstance]) -> tuple[list[Created], set[int]]:
        """insert_instances in a transaction of its own (a submit, a bulk submit)."""
        async with self.pool.acquire() as conn, conn.transaction():
            return await insert_instances(conn, items, self.next_partition)

    async def create_instance(self, job_name: str, version: int, params_json: str, gated: bool,
                              idempotency_key: str | None, first_chunk: bytes, max_attempts: int,
                              idempotency_request: str | None = None,
                              priority: int = 0) -> tuple[int, bool, int | None]:
        """One instance through create_instances: (instance id, created?, partition to notify)."""
        (res,), parts = await self.create_instances([NewInstance(
            job_name, version, params_json, gated, idempotency_key, idempotency_request, max_attempts, priority,
            first_chunk)])
        return res.instance_id, res.created, next(iter(parts), None)

    async def instance_runtime(self, instance_id: int) -> InstanceRow | None:
        row = await self.pool.fetchrow(sql.INSTANCE_RUNTIME, instance_id)
        return InstanceRow(**dict(row)) if row else None

    async def get_instance(self, instance_id: int) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(sql.INSTANCE_GET, instance_id)
        return dict(row) if row else None

    async def instance_detail(self, instance_id: int, warnings: int = 100) -> InstanceDetail | None:
        r = await self.pool.fetchrow(sql.INSTANCE_DETAIL, instance_id, warnings)
        if r is None:
            return None
        row = dict(r)
        counters = row.pop("detail_counters") or []
        states = row.pop("detail_chunk_states") or []
        return InstanceDetail(row, [StepCounts(*c) for c in counters], [(a, b, c) for a, b, c in states],
                              row.pop("detail_warnings") or [])

    async def mark_started(self, instance_ids: Sequence[int]) -> None:
        await self.start_and_load(instance_ids, ())

    async def start_and_load(self, start: Sequence[int], load: Sequence[int]) -> list[InstanceRow]:
        """mark_started(start), and instance_runtime of each of `load` (those that exist), in one statement."""
        return [InstanceRow(**dict(r)) for r in await self.pool.fetch(sql.INSTANCES_START_AND_LOAD,
                                                                       list(start), list(load))]

    async def active_instances(self) -> list[InstanceRow]:
        return [InstanceRow(**dict(r)) for r in await self.pool.fetch(sql.INSTANCE_ACTIVE_LIST)]

    async def active_instances_among(self, instance_ids: Sequence[int]) -> list[InstanceRow]:
        """Those of `instance_ids` not ended yet, by id."""
        if not instance_ids:
            return []
        return [InstanceRow(**dict(r)) for r in await self.pool.fetch(sql.INSTANCE_ACTIVE_AMONG, list(instance_ids))]

    async def take_changed_instances(self) -> set[int]:
        """The instances whose step counters changed (or that were restarted) since the last
        take, each given once: the caller keeps them until it has acted on them."""
        return {r[0] for r in await self.pool.fetch(sql.INSTANCES_TAKE_DIRTY)}

    async def step_counts(self, instance_ids: Sequence[int]) -> dict[int, list[StepCounts]]:
        out: dict[int, list[StepCounts]] = defaultdict(list)
        for r in await self.pool.fetch(sql.INSTANCE_COUNTERS, list(instance_ids)):
            out[r[0]].append(StepCounts(*r[1:]))
        return out

    async def instances_with_errored_chunks(self, instance_ids: Sequence[int]) -> set[int]:
        return {r[0] for r in await self.pool.fetch(sql.INSTANCE_HAS_ERRORED_CHUNKS, list(instance_ids))}

    async def set_instances_status(self, runs: dict[int, int], to: I,
                                   leader: LeaderTerm | None = None) -> set[int]:
        """Maintenance's moves: those still running, in the run given (instance id -> run), and
        allowed to move to `to`; returns their ids."""
        if not runs:
            return set()
        async with self.pool.acquire() as conn, conn.transaction():
            moved = {r[0] for r in await conn.fetch(sql.INSTANCES_SET_STATUS, list(runs), to.value,
                                                    maintenance_moves_from(to), list(runs.values()))}
            await self.fence_leader(conn, leader)
        return moved

    async def finalize(self, decided: Sequence[Finish], leader: LeaderTerm | None = None) -> set[int]:
        """-> FINALIZE those whose work steps' chunks are all done (rule 10) in the run given."""
        if not decided:
            return set()
        async with self.pool.acquire() as conn, conn.transaction():
            moved = {r[0] for r in await conn.fetch(
                sql.INSTANCES_FINALIZE, [d.instance_id for d in decided], [d.bound for d in decided],
                [d.tolerate_failed for d in decided], [d.run for d in decided])}
            await self.fence_leader(conn, leader)
        return moved

    async def set_progress(self, rows: Sequence[Progress]) -> None:
        if rows:
            await self.pool.execute(sql.INSTANCES_PROGRESS, *map(list, zip(*rows)))

    async def last_error(self, instance_id: int) -> tuple[int, str, int, int] | None:
        """(step, message, chunk id, attempt) of the error that failed the instance, if any."""
        row = await self.pool.fetchrow(sql.INSTANCE_LAST_ERROR, instance_id)
        return (row[0], row[1], row[2], row[3]) if row else None

    async def advance_gates(self, gates: Sequence[Finish], leader: LeaderTerm | None = None) -> dict[int, set[int]]:
        """Opens step `bound` of each gated instance, if every chunk before it is done and the
        instance is still in the run given (those someone else advanced already are left out).
        Returns, per advanced instance, the partitions to notify."""
        if not gates:
            return {}
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(sql.INSTANCES_ADVANCE_GATE, [g.instance_id for g in gates], [g.bound for g in gates],
                                    [g.run for g in gates], [g.tolerate_failed for g in gates])
            opened: dict[int, set[int]] = {r[0]: set() for r in rows}
            if rows:
                for inst, part in await conn.fetch(sql.CHUNKS_OPEN_GATE, [r[0] for r in rows], [r[1] for r in rows]):
                    opened[inst].add(part)
            await self.fence_leader(conn, leader)
        return opened

    async def complete_instances(self, decided: Sequence[Finish], leader: LeaderTerm | None = None) -> set[int]:
        """-> COMPLETED, in one transaction, those whose every chunk below their bound is done
        (rule 10) in the run given: finish_instance's move to COMPLETED for many at once."""
        if not decided:
            return set()
        ids = [d.instance_id for d in decided]
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(sql.INSTANCES_LOCK, ids)
            done = {r[0] for r in await conn.fetch(
                sql.INSTANCES_COMPLETE, ids, [d.run for d in decided], [d.bound for d in decided],
                [d.tolerate_failed for d in decided])}
            await self.fence_leader(conn, leader)
        return done

    async def finish_instance(self, instance_id: int, to: I, *, report_json: str | None = None,
                              error: str | None = None, conn: asyncpg.Connection | None = None,
                              running_too: bool = False, leader: LeaderTerm | None = None,
                              decided: Finish | None = None) -> bool:
        """COMPLETED / FAILED / CANCELLED, guarded; pending chunks (with `running_too`, also
        the running ones, whose results will then be refused) are cancelled in the same transaction.
        `decided`: maintenance's decision, fenced by its run (and, to COMPLETED, rule 10's check)."""
        async def run(c: asyncpg.Connection) -> bool:
            await c.execute(sql.INSTANCE_LOCK, instance_id)
            ok = await c.fetchval(sql.INSTANCE_FINISH, instance_id, to.value, instance_allowed_from(to),
                                  None if report_json is None else storable_json(report_json), storable(error),
                                  *_fence_args(decided))
            if ok is None:
                return False
            if to is not I.COMPLETED:
                stmt = sql.CHUNK_CANCEL_ALL if running_too else sql.CHUNK_CANCEL_PENDING
                steps = Counter(r[0] for r in await c.fetch(stmt, instance_id))
                delta = CounterDelta()
                for step, n in steps.items():
                    delta.add(instance_id, step, CANCELLED, n)
                if delta:
                    await c.execute(sql.COUNTERS_ADD, *delta.arrays())
            await self.fence_leader(c, leader)
            return True
        if conn is not None:
            return await run(conn)
        async with self.pool.acquire() as c, c.transaction():
            return await run(c)

    async def cancel_instance(self, instance_id: int) -> bool:
        return await self.finish_instance(instance_id, I.CANCELLED, error="cancelled by request")

    async def force_stop_instance(self, instance_id: int) -> bool:
        return await self.finish_instance(instance_id, I.CANCELLED, running_too=True,
                                          error="force-stopped by request")

    async def restart_instance(self, instance_id: int, reduction_step: int | None) -> set[int] | None:
        """FAILED/CANCELLED -> IN_PROGRESS; every chunk that did not complete runs again.
        Returns the partitions to notify, or None if the instance is not restartable."""
        async with self.pool.acquire() as conn, conn.transaction():
            # FOR UPDATE first: waits for the outcome batches and rescues holding the instance
            # FOR KEY SHARE, so none of them straddles the restart (see CHUNK_SETBACK).
            await conn.execute(sql.INSTANCE_LOCK, instance_id)
            row = await conn.fetchrow(sql.INSTANCE_RESTART, instance_id)
            if row is None:
                return None
            await conn.execute(sql.INSTANCE_MARK_DIRTY, instance_id)
            current, gated = row
            rows = await conn.fetch(sql.CHUNK_RESTART, instance_id, current if gated else 32767,
                                    -1 if reduction_step is None else reduction_step)
            delta = CounterDelta()
            parts: set[int] = set()
            for step, was, now, part in rows:
                delta.add(instance_id, step, FAILED if was == C.FAILED else CANCELLED, -1)
                if now == C.READY:
                    parts.add(part)
            if delta:
                await conn.execute(sql.COUNTERS_ADD, *delta.arrays())
            return parts

    async def list_instances(self, job: str | None, statuses: list[str], after: Any, before: Any,
                             start: int, count: int) -> tuple[int, list[dict[str, Any]]]:
        args = (job, statuses, after, before)
        total = await self.pool.fetchval(sql.INSTANCE_LIST_COUNT, *args)
        rows = await self.pool.fetch(sql.INSTANCE_LIST, *args, start, count)
        return total, [dict(r) for r in rows]

    async def list_chunks(self, instance_id: int, step: int | None, states: list[int], with_data: bool,
                          start: int, count: int, errors_only: bool = False) -> tuple[int, list[dict[str, Any]]]:
        total = await self.pool.fetchval(sql.CHUNK_LIST_COUNT, instance_id, step, states, errors_only)
        rows = await self.pool.fetch(sql.CHUNK_LIST, instance_id, step, states, errors_only, with_data, start, count)
        return total, [dict(r) for r in rows]

    async def throughput(self, instance_id: int, bucket_seconds: float) -> list[tuple[datetime, int]]:
        return [(r[0], r[1]) for r in await self.pool.fetch(sql.CHUNK_THROUGHPUT, instance_id, bucket_seconds)]

    async def nodes(self, seen_within: float) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.pool.fetch(sql.NODE_LIST, seen_within)]

    async def instances_by_status(self) -> dict[str, int]:
        return {r[0]: r[1] for r in await self.pool.fetch(sql.INSTANCE_COUNT_BY_STATUS)}

    async def warnings(self, instance_id: int, limit: int = 100) -> list[str]:
        return [r[0] for r in await self.pool.fetch(sql.WARNING_LIST, instance_id, limit)]


    # ------------------------------------------------------------ claims
    async def claim(self, partition: int, limit: int, node_id: int, lease_seconds: float,
                    from_rank: int = 0, suspect: bool = False, from_id: int = 0) -> list[ClaimedChunk]:
        """Up to `limit` READY chunks of `partition` from (from_rank, from_id) in (rank, id) order
        (fair share, see CHUNK_CLAIM); with `suspect`, one of them may be a suspect (its workers
        died holding it)."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(sql.CHUNK_CLAIM, partition, limit, node_id, lease_seconds, from_rank, suspect,
                                    from_id)
        return [ClaimedChunk(r[0], r[1], r[2], r[3], r[4], r[5], orphaned=r[6], rank=r[7]) for r in rows]

    async def mark_chunk_started(self, chunk_id: int, attempt: int) -> None:
        await self.pool.execute(sql.CHUNK_MARK_STARTED, chunk_id, attempt)

    # ------------------------------------------------------------ completion
    async def record_outcomes(self, successes: Sequence[Success], setbacks: Sequence[Setback]) -> Recorded:
        """One transaction: fenced completions, the transactional steps' writes, child
        chunks, warnings, fenced setbacks, counters. Returns what to publish."""
        res = Recorded(ready_partitions=set(), accepted=set(), setback_states={})
        if successes and not setbacks and not any(s.children or s.tx_ops or s.warnings for s in successes):
            return await self._complete_only(successes, res)
        delta = CounterDelta()
        refused_of: list[tuple[int, int]] = []  # (chunk, attempt) of each refused result
        user_sql = any(s.tx_ops for s in successes)
        async with self.pool.acquire() as conn, reset_after_user_sql(conn, lambda: user_sql), conn.transaction():
            instance_ids = sorted({s.instance_id for s in successes} | {b.instance_id for b in setbacks})
            closed: set[int] = set()
            if instance_ids:
                # FOR KEY SHARE orders us against a concurrent cancel/fail/restart of these
                # instances, so a child is never inserted claimable into a finished instance
                # and a setback sees the instance's current status (CHUNK_SETBACK).
                for r in await conn.fetch(sql.INSTANCE_STATUS_FOR_SHARE, instance_ids):
                    if r[1] in {s.value for s in INSTANCE_TERMINAL}:
                        closed.add(r[0])
            if successes:
                fence = latest_attempts(successes)
                ids = sorted(fence)  # CHUNK_COMPLETE's binary search needs them so
                accepted = {r[0] for r in await conn.fetch(sql.CHUNK_COMPLETE, ids, [fence[i] for i in ids])}
                ok = _fenced(successes, fence, accepted, res, refused_of)
                if user_sql and ok:
                    # the steps' own SQL under the database's limits (a DBA's statement or lock
                    # timeout fails that step's attempt: see the completer), ours after it
                    await self.apply_user_limits(conn)
                    await self._apply_tx_ops(conn, ok)
                    await self.apply_own_limits(conn)
                await self._insert_children(conn, ok, closed, delta, res)
                warn = [(s.instance_id, s.chunk_id, storable(w)) for s in ok for w in s.warnings[:MAX_WARNINGS]]
                if warn:
                    await conn.execute(sql.WARNING_INSERT, *map(list, zip(*warn)))
                for s in ok:
                    delta.add(s.instance_id, s.step, COMPLETED)
            if setbacks:
                rows = await conn.fetch(
                    sql.CHUNK_SETBACK, [b.chunk_id for b in setbacks], [b.attempt for b in setbacks],
                    [b.state for b in setbacks], [int(b.failure) for b in setbacks],
                    [b.delay for b in setbacks], [storable(b.message) for b in setbacks],
                    [storable(b.trace, MAX_TRACE) for b in setbacks])
                res.refused += len(setbacks) - len(rows)
                if len(rows) < len(setbacks):
                    landed = {r[0] for r in rows}
                    refused_of.extend((b.chunk_id, b.attempt) for b in setbacks if b.chunk_id not in landed)
                for cid, inst, step, state, part in rows:
                    res.setback_states[cid] = state
                    if state == C.FAILED:
                        res.failed += 1
                        delta.add(inst, step, FAILED)
                        delta.add(inst, step, ERRORS)
                    elif state == C.ERRORED:
                        res.errored += 1
                        delta.add(inst, step, ERRORS)
                    elif state == C.CANCELLED:
                        res.cancelled += 1
                        delta.add(inst, step, CANCELLED)
                    elif state == C.READY:  # released for the instance's new run
                        res.released += 1
                        res.ready_partitions.add(part)
                    else:
                        res.poll_waiting += 1
            if delta:
                res.closed = {(r[0], r[1]) for r in await conn.fetch(sql.COUNTERS_ADD_CLOSING, *delta.arrays())}
            if refused_of:  # rare: why (chunkd_chunks_refused{reason})
                res.refused_cancelled = await conn.fetchval(
                    sql.CHUNKS_REFUSED_CANCELLED, [c for c, _ in refused_of], [a for _, a in refused_of])
        return res

    async def _complete_only(self, successes: Sequence[Success], res: Recorded) -> Recorded:
        """record_outcomes of successes that carry nothing else: CHUNK_COMPLETE_COUNTED."""
        fence = latest_attempts(successes)
        ids = sorted(fence)
        instance_ids = sorted({s.instance_id for s in successes})
        refused_of: list[tuple[int, int]] = []
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(sql.CHUNK_COMPLETE_COUNTED, ids, [fence[i] for i in ids], instance_ids)
            accepted = {r[0] for r in rows}
            if any(r[1] for r in rows):
                closing = {r[0] for r in rows if r[1]}
                res.closed = {(s.instance_id, s.step) for s in successes if s.chunk_id in closing}
            _fenced(successes, fence, accepted, res, refused_of)
            if refused_of:  # rare: why (chunkd_chunks_refused{reason})
                res.refused_cancelled = await conn.fetchval(
                    sql.CHUNKS_REFUSED_CANCELLED, [c for c, _ in refused_of], [a for _, a in refused_of])
        return res

    async def _apply_tx_ops(self, conn: asyncpg.Connection, ok: Iterable[Success]) -> None:
        by_sql: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        for s in ok:
            for op in s.tx_ops:
                by_sql[op.sql].append(op.args)
        for text, args in by_sql.items():
            await conn.executemany(text, args, timeout=self.deadlines.user_sql)

    async def _insert_children(self, conn: asyncpg.Connection, ok: Sequence[Success], closed: set[int],
                               delta: CounterDelta, res: Recorded) -> None:
        rows: list[tuple[int, int, int, int, int, bytes, int]] = []
        ordinal: dict[int, int] = {}  # per instance: its children rank in turn with other instances'
        for s in ok:
            if not s.children:
                continue
            child_step = s.step + 1
            if s.instance_id in closed:
                state = int(C.CANCELLED)
                delta.add(s.instance_id, child_step, CANCELLED, len(s.children))
            else:
                state = int(C.GATE_WAITING if s.child_gated else C.READY)
            delta.add(s.instance_id, child_step, CREATED, len(s.children))
            n = ordinal.get(s.instance_id, 0)
            for data in s.children:
                part = self.next_partition()
                rows.append((s.instance_id, child_step, state, part, s.child_max_attempts, data, n))
                n += 1
                if state == C.READY:
                    res.ready_partitions.add(part)
            ordinal[s.instance_id] = n
        res.children = len(rows)
        if not rows:
            return
        if len(rows) >= _COPY_THRESHOLD:
            clocks = dict(await conn.fetch(sql.PARTITION_CLOCKS, sorted({r[3] for r in rows})))
            strides = dict(await conn.fetch(sql.INSTANCE_STRIDES, sorted(ordinal)))
            rows = [(*r[:6], clocks.get(r[3], 0) + sql.rank_offset(r[6], strides.get(r[0], sql.DEFAULT_STRIDE)))
                    for r in rows]
            await conn.copy_records_to_table("chunkd_chunk", records=rows, columns=sql.CHUNK_COPY_COLUMNS)
        else:
            await conn.execute(sql.CHUNK_INSERT, *map(list, zip(*rows)))

    # ------------------------------------------------------------ maintenance
    async def rescue_expired(self, limit: int) -> tuple[int, int, set[int], list[tuple[str, int, int, int, int]]]:
        """Expired leases back to READY (or FAILED past max attempts).
        (rescued, failed, partitions, the failed ones as (job, instance, step, chunk, attempt))."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(sql.CHUNK_RESCUE_EXPIRED, limit)
            delta = CounterDelta()
            failed = 0
            parts: set[int] = set()
            failed_chunks: list[tuple[str, int, int, int, int]] = []
            for inst, step, state, part, cid, attempt, job in rows:
                if state == C.FAILED:
                    failed += 1
                    failed_chunks.append((job, inst, step, cid, attempt))
                    delta.add(inst, step, FAILED)
                    delta.add(inst, step, ERRORS)
                elif state == C.CANCELLED:  # its instance ended meanwhile
                    delta.add(inst, step, CANCELLED)
                else:
                    parts.add(part)
            if delta:
                await conn.execute(sql.COUNTERS_ADD, *delta.arrays())
        return len(rows), failed, parts, failed_chunks

    async def release_due(self, limit: int) -> tuple[set[int], Counter[tuple[str, int, int]]]:
        """Retries and poll-waits whose time came, back to READY.
        Returns (partitions, retried ERRORED chunks by (job, version, step))."""
        retried: Counter[tuple[str, int, int]] = Counter()
        parts: set[int] = set()
        for r in await self.pool.fetch(sql.CHUNK_RELEASE_DUE_ERRORED, limit):
            parts.add(r[0])
            retried[(r[1], r[2], r[3])] += 1
        parts |= {r[0] for r in await self.pool.fetch(sql.CHUNK_RELEASE_DUE_POLL, limit)}
        return parts, retried

    async def table_health(self) -> list[TableHealth]:
        """chunkd's tables: live, dead and changed rows, and whether autovacuum looks after them."""
        return [TableHealth(*r) for r in await self.pool.fetch(sql.TABLE_HEALTH)]

    async def upkeep(self, table: str, vacuum: bool) -> str | None:
        """VACUUM (ANALYZE) or only ANALYZE one of chunkd's tables, on a connection of its own:
        it cannot run in a transaction, may take longer than any of chunkd's statements may,
        and must not hold a pool connection meanwhile. A DBA's statement_timeout does not
        apply to it; it never waits on a lock (SKIP_LOCKED), and, as autovacuum does, it
        gives way (is cancelled) as soon as it blocks anyone: a DDL statement (a migration, a
        DBA's ALTER) waiting behind it would hold every write queued behind that. Returns
        None when done, else why it was not (skipped by the server, or it gave way)."""
        stmt = (sql.TABLE_VACUUM if vacuum else sql.TABLE_ANALYZE).format(table=quote(table))
        conn = await asyncpg.connect(self.dsn, timeout=self.deadlines.statement, server_settings={
            "application_name": "chunkd upkeep", "statement_timeout": "0", "lock_timeout": "1s"})
        skipped: list[str] = []  # the server only warns when it skips a table (not the owner, locked)
        conn.add_log_listener(lambda _c, m: skipped.append(m.message) if "skipping" in m.message else None)
        gave_way = False
        try:
            pid = conn.get_server_pid()
            async with anyio.create_task_group() as tg:
                async def give_way() -> None:
                    nonlocal gave_way
                    while not await self.pool.fetchval(sql.UPKEEP_BLOCKING, pid):
                        await anyio.sleep(UPKEEP_YIELD_CHECK)
                    gave_way = True
                    tg.cancel_scope.cancel()
                tg.start_soon(give_way)
                await conn.execute(stmt, timeout=UPKEEP_DEADLINE)
                tg.cancel_scope.cancel()
        finally:
            # also when cancelled (a shutdown, or giving way): the server ends it with the session
            with anyio.CancelScope(shield=True), anyio.move_on_after(5), contextlib.suppress(Exception):
                await conn.close()
            if not conn.is_closed():
                conn.terminate()
        if gave_way:
            return "gave way to a session waiting on its lock (a DDL statement or a migration)"
        return skipped[0] if skipped else None

    async def stale_partitions(self, partitions: Iterable[int], older_than: float) -> set[int]:
        out = set()
        async with self.pool.acquire() as conn:
            for p in partitions:
                age = await conn.fetchval(sql.CHUNK_PARTITION_HEAD_AGE, p)
                if age is not None and age >= older_than:
                    out.add(p)
        return out

    async def rehome(self) -> set[int]:
        return {r[0] for r in await self.pool.fetch(sql.CHUNK_REHOME, self.partitions)}

    async def release_owned(self, node_id: int) -> list[int]:
        """Shutdown: every chunk this node holds back to READY; returns their partitions."""
        return [r[0] for r in await self.pool.fetch(sql.CHUNK_RELEASE_OWNED, node_id)]

    async def reduction_input(self, conn: asyncpg.Connection, instance_id: int, step: int,
                              prefetch: int = 500) -> AsyncIterator[bytes]:
        """Stream the reduction step's input chunks; `conn` must be inside a transaction."""
        async for r in conn.cursor(sql.CHUNK_REDUCTION_INPUT, instance_id, step, prefetch=prefetch):
            yield r[1]

    async def complete_reduction(self, conn: asyncpg.Connection, instance_id: int, step: int,
                                 report_json: str, leader: LeaderTerm | None, decided: Finish | None = None) -> bool:
        """In the caller's transaction: report written and input consumed exactly once.
        False when the instance is no longer in FINALIZE (cancelled, or finished by another
        leader); NotLeader when this leader's term is over. In both cases the caller must
        roll back, taking the reduction's own ctx.tx writes with it."""
        await self.apply_own_limits(conn)  # the reduction ran under the database's limits
        ok = await conn.fetchval(sql.INSTANCE_FINISH, instance_id, I.COMPLETED.value,
                                 [I.FINALIZE.value], storable_json(report_json), None, *_fence_args(decided))
        if ok is None:
            return False
        n = await conn.fetchval(sql.CHUNK_REDUCTION_CONSUMED, instance_id, step)
        delta = CounterDelta()
        delta.add(instance_id, step, COMPLETED, n)
        await conn.execute(sql.COUNTERS_ADD, *delta.arrays())
        await self.fence_leader(conn, leader)
        return True

    async def reduction_inputs(self, reductions: Sequence[tuple[int, int]],
                               max_bytes: int) -> tuple[dict[int, list[bytes]], set[int]]:
        """The input chunks of many small reductions ((instance, reduce step) each), in one
        read; and the instances whose input is over `max_bytes` (their data not read)."""
        out: dict[int, list[bytes]] = {i: [] for i, _ in reductions}
        large: set[int] = set()
        for r in await self.pool.fetch(sql.CHUNK_REDUCTION_INPUTS, [i for i, _ in reductions],
                                       [s for _, s in reductions], max_bytes):
            if r[2]:
                out[r[0]].append(r[1])
            else:
                large.add(r[0])
        for i in large:
            del out[i]
        return out, large

    async def complete_reductions(self, reduced: Sequence[Reduced], leader: LeaderTerm | None) -> set[int]:
        """complete_reduction for many instances in one transaction (reductions without user
        SQL): the instances still in FINALIZE, in their run, with every earlier chunk done,
        get their report and COMPLETED, and their input chunks are consumed exactly once.
        Returns those; NotLeader (everything rolled back) when the term is over."""
        if not reduced:
            return set()
        ids = [r.decided.instance_id for r in reduced]
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(sql.INSTANCES_LOCK, ids)
            done = {r[0] for r in await conn.fetch(
                sql.INSTANCES_FINISH_REDUCED, ids, [r.decided.run for r in reduced],
                [r.decided.bound for r in reduced], [r.decided.tolerate_failed for r in reduced],
                [storable_json(r.report_json) for r in reduced])}
            if done:
                ended = [r for r in reduced if r.decided.instance_id in done]
                delta = CounterDelta()
                for iid, step, n in await conn.fetch(sql.CHUNK_REDUCTIONS_CONSUMED,
                                                     [r.decided.instance_id for r in ended], [r.step for r in ended]):
                    delta.add(iid, step, COMPLETED, n)
                if delta:
                    await conn.execute(sql.COUNTERS_ADD, *delta.arrays())
            await self.fence_leader(conn, leader)
        return done

    @contextlib.asynccontextmanager
    async def reduction(self, instance_id: int, step: int, user_sql: Callable[[], bool]) -> AsyncIterator[PgReduction]:
        """One reduction's transaction (storage.protocol.ReductionTx), under the database's own
        limits while the reducer runs; `user_sql()` says whether its ctx.tx ran (the
        connection is then reset before it goes back to the pool)."""
        async with self.pool.acquire() as conn, reset_after_user_sql(conn, user_sql), conn.transaction():
            await self.apply_user_limits(conn)
            yield PgReduction(self, conn, instance_id, step)

    async def reduction_failed(self, instance_id: int, run: int, error: str, *, counted: bool,
                               leader: LeaderTerm | None) -> int | None:
        """Records a failed reduction attempt on the instance (counted, or only shown when the
        database went away); returns the attempts so far, None if it left FINALIZE or this run."""
        async with self.pool.acquire() as conn, conn.transaction():
            n = await conn.fetchval(sql.INSTANCE_REDUCTION_FAILED, instance_id, storable(error), counted, run)
            await self.fence_leader(conn, leader)
        return n

    async def any_ready(self) -> bool:
        return bool(await self.pool.fetchval(sql.CHUNK_ANY_READY))

    async def ended_among(self, instance_ids: Sequence[int]) -> set[int]:
        """Which of these instances have ended (cancelled, failed, completed)."""
        return {r[0] for r in await self.pool.fetch(sql.INSTANCES_ENDED_AMONG, list(instance_ids))}

    async def queue_depth(self) -> dict[tuple[int, str], int]:
        """(partition, state name) -> chunks, for READY, IN_PROGRESS and ERRORED."""
        return {(r["partition"], C(r["state"]).name): r["n"] for r in await self.pool.fetch(sql.QUEUE_DEPTH)}

    async def oldest_ready_age(self, partitions: Iterable[int]) -> dict[int, float]:
        """partition -> seconds since the head of its READY queue was created (0 if empty)."""
        rows = await self.pool.fetch(sql.QUEUE_OLDEST_READY, list(partitions))
        return {r["partition"]: r["age"] for r in rows}


class PgReduction:
    """storage.protocol.ReductionTx over one Postgres transaction."""

    def __init__(self, store: Store, conn: asyncpg.Connection, instance_id: int, step: int) -> None:
        self.store, self.conn, self.instance_id, self.step = store, conn, instance_id, step

    def input(self) -> AsyncIterator[bytes]:
        return self.store.reduction_input(self.conn, self.instance_id, self.step)

    async def finalizing(self, run: int) -> bool:
        row = await self.conn.fetchrow(sql.INSTANCE_GET, self.instance_id)
        return row is not None and row["status"] == I.FINALIZE.value and row["run"] == run

    async def execute(self, op: TxOp) -> None:
        # user SQL: its own, longer deadline (storage/deadlines.py)
        await self.conn.execute(op.sql, *op.args, timeout=self.store.deadlines.user_sql)

    async def complete(self, report_json: str, leader: LeaderTerm | None, decided: Finish) -> bool:
        return await self.store.complete_reduction(self.conn, self.instance_id, self.step, report_json, leader,
                                                   decided)
