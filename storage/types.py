"""Data that crosses the storage boundary."""
from __future__ import annotations

from typing import Any, NamedTuple

import msgspec

from storage.states import SUSPECT_AFTER


class ClaimedChunk(msgspec.Struct, array_like=True):
    id: int
    instance_id: int
    step: int
    attempt: int  # the fencing token for this claim
    failures: int
    data: bytes | None
    claimed_at: float = 0.0  # monotonic, set by the consumer: claim-to-complete latency
    orphaned: int = 0        # times its worker died holding it (migration 0008)
    rank: int = 0            # its place in the partition's fair-share order (migration 0012)

    @property
    def suspect(self) -> bool:
        return self.orphaned >= SUSPECT_AFTER


class TxOp(msgspec.Struct, array_like=True):
    """A write a transactional step asked for; applied in the completion's transaction."""
    sql: str
    args: tuple[Any, ...]


class Success(msgspec.Struct):
    chunk_id: int
    attempt: int
    instance_id: int
    step: int
    children: list[bytes] = []
    child_gated: bool = False       # children wait for a gate (gated job or reduction input)
    child_max_attempts: int = 3
    tx_ops: list[TxOp] = []
    warnings: list[str] = []


class Setback(msgspec.Struct):
    """A chunk that did not succeed: ERRORED (retry), FAILED, or POLL_WAITING."""
    chunk_id: int
    attempt: int
    instance_id: int
    step: int
    state: int
    failure: bool       # counts towards max_attempts
    delay: float        # seconds until it may run again
    message: str | None
    trace: str | None = None   # the traceback of the step's exception, if it raised


class Recorded(msgspec.Struct):
    completed: int = 0
    refused: int = 0                 # fenced out: a zombie's late result
    refused_cancelled: int = 0       # of those, results of an attempt cancelled while it ran (force-stop)
    errored: int = 0
    failed: int = 0
    poll_waiting: int = 0
    cancelled: int = 0
    released: int = 0                # cancel releases that found the instance restarted: READY again
    children: int = 0
    closed: set[tuple[int, int]] = set()  # (instance, step) whose last open chunk ended here
    ready_partitions: set[int] = set()
    accepted: set[int] = set()            # chunk ids whose completion committed
    setback_states: dict[int, int] = {}   # chunk id -> state it moved to


class InstanceRow(msgspec.Struct):
    id: int
    job_name: str
    job_version: int
    params: str
    gated: bool
    status: str
    current_step: int = 0
    elapsed: float = 0.0
    run: int = 1          # the instance's run: a restart starts the next (migration 0014)


class InstanceDetail(NamedTuple):
    row: dict[str, Any]                             # the chunkd_instance row
    counters: list[StepCounts]                      # by step
    chunk_states: list[tuple[int, int, int]]        # (step, state, chunks)
    warnings: list[str]                             # the first ones, in order


class StepCounts(msgspec.Struct, array_like=True):
    step: int
    created: int
    completed: int
    failed: int
    cancelled: int
    errors: int

    @property
    def pending(self) -> int:
        return self.created - self.completed - self.failed - self.cancelled


class TableHealth(msgspec.Struct, frozen=True):
    """One of chunkd's tables as the server's statistics see it, and the autovacuum rule
    that applies to it (its reloptions, else the server's settings)."""
    name: str
    live: int
    dead: int
    changed: int              # rows changed since the last ANALYZE
    autovacuum: bool          # the server's autovacuum is on and the table does not opt out
    vacuum_threshold: float
    vacuum_scale: float
    analyze_threshold: float
    analyze_scale: float
    maintainable: bool = True  # this role may VACUUM it (owner, the database's owner, superuser)
    counted: bool = True       # track_counts is on: the figures above mean something


class Progress(NamedTuple):
    """What maintenance shows of a running instance (a tuple: rows go to Postgres as columns)."""
    instance_id: int
    progress: float
    rate: float | None
    eta: float | None
    errors: int


class Finish(msgspec.Struct, frozen=True):
    """A maintenance decision to move an instance on, fenced in SQL (rule 10): it applies only
    in the run it was decided for, and only when every chunk of the steps below `bound` is
    COMPLETED (or FAILED, with `tolerate_failed`: a job that does not fail on a chunk's failure)."""
    instance_id: int
    run: int
    bound: int
    tolerate_failed: bool = False


class Reduced(NamedTuple):
    """A reduction's report, to be written with others' in one transaction
    (EngineStore.complete_reductions): completes the instance as `decided` fences it and
    consumes the input chunks of `step`."""
    decided: Finish
    step: int
    report_json: str


class LeaderTerm(msgspec.Struct, frozen=True):
    """The maintenance leader's fencing token: its writes commit only while it holds it."""
    node_id: int
    term: int


class NotLeader(Exception):
    """A leader's write found its term over (deposed while paused): it was rolled back."""


class NewInstance(msgspec.Struct, array_like=True):
    """An instance to create (storage.store.insert_instances), already checked."""
    job_name: str
    version: int
    params_json: str             # canonical
    gated: bool
    idempotency_key: str | None
    idempotency_request: str | None
    first_max_attempts: int
    priority: int = 0
    first_chunk: bytes = b""


class Created(msgspec.Struct, array_like=True):
    instance_id: int
    created: bool                # False: the idempotency key named an existing instance
