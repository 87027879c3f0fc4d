"""Chunk and instance state machines: the single table of legal moves.

Every UPDATE in `storage.sql` that changes a state is guarded by the prior states
this table allows for its target (see `allowed_from`), so an illegal move is
refused by the database rather than merely avoided by the code.
"""
from __future__ import annotations

import enum


class ChunkState(enum.IntEnum):
    # smallint on the hot table; the names are what users and the API see.
    GATE_WAITING = 1
    READY = 2
    IN_PROGRESS = 3
    POLL_WAITING = 4
    ERRORED = 5
    FAILED = 6
    COMPLETED = 7
    CANCELLED = 8


class InstanceState(str, enum.Enum):
    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    FINALIZE = "FINALIZE"
    COMPLETED = "COMPLETED"
    ERRORED = "ERRORED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


C = ChunkState
I = InstanceState

# (from, to) -> why it is legal.  Nothing else is.
CHUNK_MOVES: dict[tuple[ChunkState, ChunkState], str] = {
    (C.GATE_WAITING, C.READY): "gate advanced: the previous step finished",
    (C.GATE_WAITING, C.COMPLETED): "consumed by the reduction step",
    (C.GATE_WAITING, C.CANCELLED): "instance cancelled or failed",
    (C.READY, C.IN_PROGRESS): "claimed (attempt + 1, lease set)",
    (C.READY, C.CANCELLED): "instance cancelled or failed",
    (C.IN_PROGRESS, C.COMPLETED): "step succeeded (fenced by attempt)",
    (C.IN_PROGRESS, C.ERRORED): "step raised; will retry after backoff",
    (C.IN_PROGRESS, C.FAILED): "permanent error, max attempts, or undecodable data",
    (C.IN_PROGRESS, C.POLL_WAITING): "step asked to run again later",
    (C.IN_PROGRESS, C.READY): "lease expired (rescued) or released at shutdown",
    (C.IN_PROGRESS, C.CANCELLED): "instance force-stopped",
    (C.POLL_WAITING, C.READY): "poll delay passed",
    (C.POLL_WAITING, C.CANCELLED): "instance cancelled or failed",
    (C.ERRORED, C.READY): "retry backoff passed",
    (C.ERRORED, C.CANCELLED): "instance cancelled or failed",
    # operator restart of a FAILED/CANCELLED instance: only what did not complete runs again
    (C.FAILED, C.READY): "instance restarted",
    (C.FAILED, C.GATE_WAITING): "instance restarted (behind a gate)",
    (C.CANCELLED, C.READY): "instance restarted",
    (C.CANCELLED, C.GATE_WAITING): "instance restarted (behind a gate)",
}

INSTANCE_MOVES: dict[tuple[InstanceState, InstanceState], str] = {
    (I.QUEUED, I.IN_PROGRESS): "first chunk claimed",
    (I.QUEUED, I.COMPLETED): "nothing to do",
    (I.QUEUED, I.FAILED): "a chunk failed",
    (I.QUEUED, I.CANCELLED): "cancelled",
    (I.IN_PROGRESS, I.ERRORED): "some chunks are retrying",
    (I.IN_PROGRESS, I.FINALIZE): "every work chunk done; reduction starts",
    (I.IN_PROGRESS, I.COMPLETED): "every chunk done, no reduction",
    (I.IN_PROGRESS, I.FAILED): "a chunk failed",
    (I.IN_PROGRESS, I.CANCELLED): "cancelled",
    (I.ERRORED, I.IN_PROGRESS): "retries cleared",
    (I.ERRORED, I.FINALIZE): "every work chunk done; reduction starts",
    (I.ERRORED, I.COMPLETED): "every chunk done, no reduction",
    (I.ERRORED, I.FAILED): "a chunk failed",
    (I.ERRORED, I.CANCELLED): "cancelled",
    (I.FINALIZE, I.COMPLETED): "reduction wrote the report",
    (I.FINALIZE, I.FAILED): "reduction raised",
    (I.FINALIZE, I.CANCELLED): "cancelled while stuck in FINALIZE",
    (I.FAILED, I.IN_PROGRESS): "restarted by an operator",
    (I.CANCELLED, I.IN_PROGRESS): "restarted by an operator",
}

# A setback whose target (ERRORED or FAILED) the database decides from the chunk's own
# failures and max_attempts.
SETBACK_BY_ATTEMPTS = 0

# Deaths in a row (worker gone while holding the chunk) after which a chunk is a suspect
# and runs alone among suspects (see migration 0008). The index there says 2 as well.
SUSPECT_AFTER = 2

CHUNK_TERMINAL = frozenset({C.FAILED, C.COMPLETED, C.CANCELLED})   # left only by an operator restart
INSTANCE_TERMINAL = frozenset({I.COMPLETED, I.FAILED, I.CANCELLED})
RESTARTABLE = frozenset({I.FAILED, I.CANCELLED})


def chunk_allowed_from(to: ChunkState, among: frozenset[ChunkState] | None = None) -> list[int]:
    """The prior states a move into `to` may start from (optionally narrowed)."""
    return sorted(int(a) for (a, b) in CHUNK_MOVES if b == to and (among is None or a in among))


def instance_allowed_from(to: InstanceState) -> list[str]:
    return sorted(a.value for (a, b) in INSTANCE_MOVES if b == to)


def maintenance_moves_from(to: InstanceState) -> list[str]:
    """The statuses maintenance may move an instance from to `to`: only a running one. An
    ended instance comes back only by an operator's restart (which starts a new run): a pass
    that read an instance ERRORED and decided "retries cleared" just before a cancel
    committed once moved the CANCELLED instance back to IN_PROGRESS (its run unchanged), and
    the next pass failed it for its cancelled chunks."""
    return [s for s in instance_allowed_from(to) if I(s) not in INSTANCE_TERMINAL]
