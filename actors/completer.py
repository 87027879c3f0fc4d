"""Completer: batches finished chunks and writes them in one transaction (River's batch
completer is the model), then publishes the partitions that gained READY children."""
from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable

import anyio
import asyncpg
import structlog

from actors.doorbell import Doorbell
from actors.engine import InFlight, Outcome
from actors.settings import CompleterSettings
from channels.base import Channel
from metrics import (
    CHUNKS_COMPLETED,
    CHUNKS_ERRORED,
    CHUNKS_FAILED,
    CHUNKS_POLL_WAITING,
    CHUNKS_REFUSED,
    CLAIM_TO_COMPLETE,
    FLUSH_SECONDS,
    FLUSH_SIZE,
)
from storage.errors import BAD_INPUT, Backoff, is_transient, limit_reason
from storage.states import SETBACK_BY_ATTEMPTS, C
from storage.protocol import EngineStore
from storage.types import Setback, Success

log = structlog.get_logger("chunkd.completer")


class Completer:
    """What the completer uses, and nothing else: its settings, its mailbox, the store that
    records outcomes, the channel it publishes READY partitions on, the in-flight table
    it releases, and the doorbell of this node's maintenance, rung when a step closed."""

    def __init__(self, settings: CompleterSettings, recv: anyio.abc.ObjectReceiveStream[Outcome], store: EngineStore,
                 channel: Channel, inflight: InFlight, doorbell: Doorbell | None = None) -> None:
        self.settings, self.recv, self.store, self.channel, self.inflight = settings, recv, store, channel, inflight
        self.doorbell = doorbell if doorbell is not None else Doorbell()
        self.setback_log = SetbackLog()

    async def run(self) -> None:
        await complete_forever(self)


async def complete_forever(c: Completer) -> None:
    """Runs until the mailbox is closed and drained (shutdown), flushing as it goes."""
    recv = c.recv
    cfg = c.settings
    wait = cfg.flush_ms / 1000
    setback_log = c.setback_log
    while True:
        try:
            if setback_log.pending:  # a storm's "suppressed" line is due even if nothing else comes
                first = None
                with anyio.move_on_after(SetbackLog.WINDOW):
                    first = await recv.receive()
                setback_log.summarize_due()
                if first is None:
                    continue
            else:
                first = await recv.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            setback_log.summarize_due(everything=True)
            return
        batch = [first]
        size = _drain(recv, batch, cfg.batch, _size(first))
        if len(batch) < cfg.batch and size < FLUSH_BYTES and wait > 0:
            await anyio.sleep(wait)
            _drain(recv, batch, cfg.batch, size)
        await flush(c, batch)


# A flush stops taking results past this many bytes of child data: one transaction (and
# one protocol message) stays far below Postgres's 1 GB limits whatever the steps emit.
FLUSH_BYTES = 64 << 20
# Transient failures in a row after which, if the database still answers a ping, the batch
# is taken for the cause and split (a lone result is replaced by a bare setback): a result
# that breaks the connection every time must not hold the rest, nor be retried forever
# while its lease is kept alive. During a real outage the ping fails and nothing is blamed.
SPLIT_AFTER = 5


def _size(o: Outcome) -> int:
    r = o.result
    return sum(map(len, r.children)) if type(r) is Success and r.children else 0


def _drain(recv: anyio.abc.ObjectReceiveStream[Outcome], batch: list[Outcome], limit: int, size: int) -> int:
    while len(batch) < limit and size < FLUSH_BYTES:
        try:
            o = recv.receive_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            break
        batch.append(o)
        r = o.result
        if type(r) is Success and r.children:  # (inline: once per chunk)
            size += sum(map(len, r.children))
    return size


class _Unstorable(Exception):
    """The batch cannot be written as it is (an error of its content, not of the database)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(repr(cause))
        self.cause = cause


async def flush(c: Completer, batch: list[Outcome]) -> None:
    """Write a batch; if its content breaks the transaction, bisect it so the culprit is
    written alone and replaced by a bare setback: batch-mates are never held back by it."""
    try:
        await _flush(c, batch)
        return
    except _Unstorable as e:
        cause = e.cause
    if len(batch) > 1:
        mid = len(batch) // 2
        try:
            await flush(c, batch[:mid])
        except BaseException:
            # the first half let go of what it held (our bug, or cancelled); the second half
            # is never written either: let go of it too, or it stays held for ever
            c.inflight.forget([(o.result.chunk_id, o.result.attempt) for o in batch[mid:]])
            raise
        await flush(c, batch[mid:])
        return
    (o,) = batch
    r = o.result
    if isinstance(r, Success) and r.tx_ops:
        what = "the step's transactional writes failed"
    elif isinstance(r, Success):
        what = "the step's result could not be stored"
    else:
        what = "the chunk's error could not be stored"
    log.warning("a chunk's result could not be written; recording a bare failure instead", job=o.job,
                step=o.step, chunk_id=r.chunk_id, error=repr(cause))
    reason = limit_reason(cause)
    bare = Setback(r.chunk_id, r.attempt, r.instance_id, r.step, SETBACK_BY_ATTEMPTS, True, 1.0,
                   f"{what}: {reason + ': ' if reason else ''}{type(cause).__name__}: {cause}")
    try:
        await _flush(c, [Outcome(bare, o.job, o.step, o.partition, o.claimed_at)], bare=True)
    except _Unstorable as e:
        # Not even a bare setback can be written: give the chunk up; the heartbeat hands it
        # back as an orphan and counts the attempt, so it ends FAILED at max attempts.
        log.error("a chunk's failure could not be written either; giving it up", chunk_id=r.chunk_id,
                  error=repr(e.cause))
        c.inflight.forget([(r.chunk_id, r.attempt)])


async def _flush(c: Completer, batch: list[Outcome], *, bare: bool = False) -> None:
    successes = [o.result for o in batch if isinstance(o.result, Success)]
    setbacks = [o.result for o in batch if isinstance(o.result, Setback)]
    backoff = Backoff(0.05, 5.0)
    failures = 0
    while True:
        started = time.perf_counter()
        try:
            res = await c.store.record_outcomes(successes, setbacks)  # type: ignore[arg-type]
            break
        except anyio.get_cancelled_exc_class():
            c.inflight.forget([(o.result.chunk_id, o.result.attempt) for o in batch])
            raise
        except Exception as e:
            if not bare and limit_reason(e) is not None and any(s.tx_ops for s in successes):  # type: ignore[attr-defined]
                # A DBA's statement or lock timeout: only the steps' own SQL runs under the
                # database's limits here (storage.store.OWN_LIMITS), so it is a step's work
                # that is too slow: find it and count its attempt, do not retry it blindly.
                raise _Unstorable(e) from e
            if is_transient(e):
                # Safe to retry: the fencing token refuses anything that already committed.
                failures += 1
                if failures >= SPLIT_AFTER and not bare and await c.store.alive():
                    raise _Unstorable(e) from e  # the database answers: it is this batch
                delay = backoff.failed()
                log.warning("completer flush failed; retrying", error=repr(e), batch=len(batch), retry_in=delay)
                await anyio.sleep(delay)
                continue
            if isinstance(e, (asyncpg.PostgresError, *BAD_INPUT)):
                raise _Unstorable(e) from e  # the caller isolates the culprit
            # Our bug: this batch is lost with us; stop extending its leases so they are rescued.
            c.inflight.forget([(o.result.chunk_id, o.result.attempt) for o in batch])
            raise
    FLUSH_SECONDS.observe(time.perf_counter() - started)
    FLUSH_SIZE.observe(len(batch))
    c.inflight.forget([(o.result.chunk_id, o.result.attempt) for o in batch])
    if res.refused:
        CHUNKS_REFUSED.labels("cancelled").inc(res.refused_cancelled)
        CHUNKS_REFUSED.labels("lease_lost").inc(res.refused - res.refused_cancelled)
        log.info("results refused by fencing token", count=res.refused, cancelled=res.refused_cancelled)
    _count(batch, res.accepted, res.setback_states)
    if res.setback_states:  # only batches with setbacks: nothing per successful chunk
        c.setback_log.note(batch, res.setback_states)
    if res.ready_partitions:
        await c.channel.publish(res.ready_partitions)
    if res.failed or (res.closed and any(o.decides and (o.result.instance_id, o.result.step) in res.closed
                                         for o in batch)):
        # an instance may move on (FINALIZE, a gate, COMPLETED, FAILED): if this node leads
        # maintenance, its next pass comes now, not at the interval (a one-chunk job waited
        # half an interval for it on average); the leader may be another daemon (after the
        # READY hints: work first)
        c.doorbell.ring()
        if not c.doorbell.answered_here:
            await c.channel.ring_leader()


@functools.lru_cache(maxsize=4096)
def claim_to_complete(job: str, step: str):  # type: ignore[no-untyped-def]
    return CLAIM_TO_COMPLETE.labels(job, step)


def _count(batch: list[Outcome], accepted: set[int], setback_states: dict[int, int]) -> None:
    tally: Counter[tuple[str, str, str]] = Counter()
    now = time.monotonic()
    accepted = set(accepted)   # each chunk counted once: two attempts of one chunk may share a batch
    for o in batch:
        cid = o.result.chunk_id
        if cid in accepted:
            accepted.discard(cid)
            tally[("completed", o.job, o.step)] += 1
            if o.claimed_at:
                claim_to_complete(o.job, o.step).observe(now - o.claimed_at)
        elif cid in setback_states:
            tally[(C(setback_states[cid]).name, o.job, o.step)] += 1
    for (kind, job, step), n in tally.items():
        if kind in ("CANCELLED", "READY"):
            continue  # released (its instance ended, or was restarted since): not a step outcome
        metric = {"completed": CHUNKS_COMPLETED, "ERRORED": CHUNKS_ERRORED, "FAILED": CHUNKS_FAILED,
                  "POLL_WAITING": CHUNKS_POLL_WAITING}[kind]
        metric.labels(job, step).inc(n)


class SetbackLog:
    """Chunk failures (FAILED) and errors that will be retried (ERRORED) at warning, each with
    job, step, instance, chunk and attempt; at most PER_JOB lines per job per WINDOW seconds, the
    rest counted and told in one "suppressed" line per job when the window is over, so a storm
    of failing chunks cannot flood the log. The instance failure itself is logged at error by
    maintenance."""

    PER_JOB = 5
    WINDOW = 1.0
    _LOGGED = {int(C.FAILED): "chunk failed", int(C.ERRORED): "chunk errored; it will be retried"}

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._since: dict[str, float] = {}   # job -> start of its current window
        self._lines: dict[str, int] = {}     # job -> lines logged in that window
        self._suppressed: dict[str, int] = {}

    @property
    def pending(self) -> bool:
        return bool(self._suppressed)

    def note(self, batch: list[Outcome], setback_states: dict[int, int]) -> None:
        now = self.clock()
        for o in batch:
            r = o.result
            event = self._LOGGED.get(setback_states.get(r.chunk_id, -1))
            if event is None or not isinstance(r, Setback):
                continue
            job = o.job
            since = self._since.get(job)
            if since is None or now - since >= self.WINDOW:
                self._summarize(job)
                self._since[job], self._lines[job] = now, 0
            if self._lines[job] < self.PER_JOB:
                self._lines[job] += 1
                log.warning(event, job=job, step=o.step, instance_id=r.instance_id, chunk_id=r.chunk_id,
                            attempt=r.attempt, error=(r.message or "")[:_MAX_LOGGED_ERROR])
            else:
                self._suppressed[job] = self._suppressed.get(job, 0) + 1

    def summarize_due(self, *, everything: bool = False) -> None:
        now = self.clock()
        for job in [j for j in self._suppressed if everything or now - self._since[j] >= self.WINDOW]:
            self._summarize(job)

    def _summarize(self, job: str) -> None:
        n = self._suppressed.pop(job, 0)
        if n:
            log.warning("chunk failures suppressed", job=job, suppressed=n,
                        limit=f"{self.PER_JOB} lines per {self.WINDOW:g} s per job")


_MAX_LOGGED_ERROR = 500  # characters of a step's error in a log line (the chunk keeps it whole)
