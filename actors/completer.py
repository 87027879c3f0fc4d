"""Completer: batches finished chunks and writes them in one transaction (River's batch
completer is the model), then publishes the partitions that gained READY children."""
from __future__ import annotations

import functools
import time
from collections import Counter

import anyio
import asyncpg
import structlog

from metrics import (CLAIM_TO_COMPLETE, CHUNKS_COMPLETED, CHUNKS_ERRORED, CHUNKS_FAILED, CHUNKS_POLL_WAITING, CHUNKS_REFUSED,
                     FLUSH_SECONDS, FLUSH_SIZE)
from storage.errors import TRANSIENT, Backoff
from storage.states import SETBACK_BY_ATTEMPTS
from storage.states import C
from storage.types import Setback, Success

from .engine import Engine, Outcome

log = structlog.get_logger("chunkd.completer")



async def complete_forever(engine: Engine) -> None:
    """Runs until the mailbox is closed and drained (shutdown), flushing as it goes."""
    recv = engine.completer_recv
    cfg = engine.cfg
    wait = cfg.completer_flush_ms / 1000
    while True:
        try:
            first = await recv.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            return
        batch = [first]
        _drain(recv, batch, cfg.completer_batch)
        if len(batch) < cfg.completer_batch and wait > 0:
            await anyio.sleep(wait)
            _drain(recv, batch, cfg.completer_batch)
        await flush(engine, batch)


def _drain(recv: anyio.abc.ObjectReceiveStream[Outcome], batch: list[Outcome], limit: int) -> None:
    while len(batch) < limit:
        try:
            batch.append(recv.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            return


async def flush(engine: Engine, batch: list[Outcome]) -> None:
    try:
        await _flush(engine, batch)
    except asyncpg.PostgresError as e:
        # Not the connection: something in the batch (a transactional step's own write, say)
        # broke the transaction. Find the culprit by writing one at a time; it errors alone.
        if len(batch) > 1:
            for one in batch:
                await flush(engine, [one])
            return
        (o,) = batch
        if not isinstance(o.result, Success):
            engine.inflight.forget([o.result.chunk_id])
            raise
        r = o.result
        log.warning("a chunk's transactional writes failed", job=o.job, step=o.step, chunk_id=r.chunk_id, error=repr(e))
        setback = Setback(r.chunk_id, r.attempt, r.instance_id, r.step, SETBACK_BY_ATTEMPTS, True, 1.0,
                          f"the step's transactional writes failed: {type(e).__name__}: {e}"[:2000])
        await _flush(engine, [Outcome(setback, o.job, o.step, o.partition, o.claimed_at)])


async def _flush(engine: Engine, batch: list[Outcome]) -> None:
    successes = [o.result for o in batch if isinstance(o.result, Success)]
    setbacks = [o.result for o in batch if isinstance(o.result, Setback)]
    backoff = Backoff(0.05, 5.0)
    while True:
        started = time.perf_counter()
        try:
            res = await engine.store.flush(successes, setbacks)  # type: ignore[arg-type]
            break
        except TRANSIENT as e:
            # Safe to retry: the fencing token refuses anything that already committed.
            delay = backoff.failed()
            log.warning("completer flush failed; retrying", error=repr(e), batch=len(batch), retry_in=delay)
            await anyio.sleep(delay)
        except asyncpg.PostgresError:
            raise  # the caller isolates the culprit
        except BaseException:
            # This batch is lost with us: stop extending its leases so maintenance rescues it.
            engine.inflight.forget([o.result.chunk_id for o in batch])
            raise
    FLUSH_SECONDS.observe(time.perf_counter() - started)
    FLUSH_SIZE.observe(len(batch))
    engine.inflight.forget([o.result.chunk_id for o in batch])
    if res.refused:
        CHUNKS_REFUSED.inc(res.refused)
        log.info("results refused by fencing token", count=res.refused)
    _count(batch, res.accepted, res.setback_states)
    if res.ready_partitions:
        await engine.channel.publish(res.ready_partitions)


@functools.lru_cache(maxsize=4096)
def claim_to_complete(job: str, step: str):  # type: ignore[no-untyped-def]
    return CLAIM_TO_COMPLETE.labels(job, step)


def _count(batch: list[Outcome], accepted: set[int], setback_states: dict[int, int]) -> None:
    tally: Counter[tuple[str, str, str]] = Counter()
    now = time.monotonic()
    for o in batch:
        cid = o.result.chunk_id
        if cid in accepted:
            tally[("completed", o.job, o.step)] += 1
            if o.claimed_at:
                claim_to_complete(o.job, o.step).observe(now - o.claimed_at)
        elif cid in setback_states:
            tally[(C(setback_states[cid]).name, o.job, o.step)] += 1
    for (kind, job, step), n in tally.items():
        metric = {"completed": CHUNKS_COMPLETED, "ERRORED": CHUNKS_ERRORED, "FAILED": CHUNKS_FAILED,
                  "POLL_WAITING": CHUNKS_POLL_WAITING}[kind]
        metric.labels(job, step).inc(n)
