"""What a partition's consumer claims when the operator did not say (CHUNKD_CLAIM_BATCH and
CHUNKD_PARTITION_CONCURRENCY unset): the settings in effect, and the size of the next claim.

Pure functions, no I/O: the consumer (actors/consumer.py) asks `next_claim` before every
claim, and the configuration (daemon/wiring/config.py) asks `resolve` once.

The rule is River's producer's (a fetch sized by the free worker slots) with a floor and a ramp
for a long backlog: a claim that came back short means the queue is short, so the next one asks
for what the idle executors can start now, but at least CLAIM_FLOOR (see there); a claim that
came back full means more is waiting, so the next one asks for twice as much, up to the most
one claim may take (fewer statements per chunk, which is what a long backlog is bound by)."""
from __future__ import annotations

import msgspec

# Executor workers per partition when CHUNKD_PARTITION_CONCURRENCY is unset: at most this many
# (the setting in effect), grown from WORKERS_START while every worker waits inside a step
# (async steps that sleep or do I/O: more would run) and shrunk when most are idle, by
# `workers_wanted`. A worker is an asyncio task, so async steps are not capped by a
# thread-sized number; plain-function steps are also capped by anyio's thread limiter (40
# threads for the whole process). Not simply the maximum from the start: idle workers cost
# the no-op drain a task wake-up per chunk (measured: 256 per partition drained at about half
# the rate of 16). Scaled down with many partitions.
AUTO_WORKERS = 1024         # in all, over the partitions
AUTO_WORKERS_MIN = 8        # per partition, however many partitions
AUTO_WORKERS_MAX = 256      # per partition
WORKERS_START = 16          # per partition, and the fewest it shrinks to
# The most one claim may take when CHUNKD_CLAIM_BATCH is unset (the bench's drain gains little
# past 500 and a claim's statement grows with it); scaled down with many partitions so that
# what a daemon holds stays bounded.
AUTO_CLAIM = 2000           # in all, over the partitions
AUTO_CLAIM_MIN = 50
AUTO_CLAIM_MAX = 500
# The least a claim asks for. A partition claims again only once what it holds, results not yet
# committed included, is within its workers, so each claim costs a claim, the steps and a
# completer commit before the next: asking for only the idle workers (16) capped a partition
# near 16 per cycle, and 200-chunk jobs at 5,000 chunks/s queued up (p99 ~4 s against 0.2 s
# with the old fixed 100). On a short queue a claim returns what there is anyway.
CLAIM_FLOOR = 100


class Effective(msgspec.Struct, frozen=True, kw_only=True):
    """The claim and executor settings in effect, and whether each was adapted (unset)."""
    partition_concurrency: int   # executor workers per partition
    claim_batch: int             # the most one claim takes
    adaptive_concurrency: bool
    adaptive_claim: bool



def _clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, v))


def resolve(partitions: int, concurrency: int | None, claim_batch: int | None) -> Effective:
    """`None`: unset, adapted. A value: the operator's, used as is."""
    workers = concurrency if concurrency is not None else _clamp(AUTO_WORKERS // partitions, AUTO_WORKERS_MIN,
                                                                 AUTO_WORKERS_MAX)
    batch = claim_batch if claim_batch is not None else _clamp(AUTO_CLAIM // partitions, AUTO_CLAIM_MIN,
                                                              AUTO_CLAIM_MAX)
    return Effective(partition_concurrency=workers, claim_batch=batch, adaptive_concurrency=concurrency is None,
                     adaptive_claim=claim_batch is None)


def next_claim(idle_workers: int, last_requested: int, last_got: int, most: int) -> int:
    """The size of a partition's next claim: `idle_workers` executors wait for work now; the
    last claim asked for `last_requested` and got `last_got`; one claim takes at most `most`."""
    if last_requested > 0 and last_got >= last_requested:   # full: a backlog, ramp up
        want = max(2 * last_requested, idle_workers)
    else:                                                    # short (or the first): what can start now
        want = max(idle_workers, CLAIM_FLOOR)
    return _clamp(want, 1, most)


def workers_wanted(current: int, in_step: int, waiting: int, idle: int, most: int) -> int:
    """How many executor workers a partition should have (adaptive concurrency), sampled now:
    `current` workers, `in_step` of them inside a step (suspended there, when sampled from
    another task: a step that never awaits is never seen inside), `waiting` claimed chunks in
    its mailbox, `idle` workers waiting for one. At most `most`."""
    least = min(WORKERS_START, most)
    if waiting > 0 and 4 * in_step >= 3 * current:   # work waits while the workers wait inside steps
        return min(most, 2 * current)
    if 2 * idle > current:                            # mostly idle: retire a part of the idle ones
        return max(least, current - idle // 2)
    return max(least, min(most, current))
