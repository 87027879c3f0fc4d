"""Partition consumer: claims READY chunks of one partition, only as many as the
executors have room for (backpressure), and hands them to the executor mailbox."""
from __future__ import annotations

import time

import anyio
import structlog
from anyio.streams.memory import MemoryObjectSendStream

from actors.adaptive import next_claim
from actors.engine import Engine
from metrics import CHUNKS_CLAIMED, CLAIM_BATCH, CLAIM_SIZE
from storage.errors import TRANSIENT, Backoff
from storage.types import ClaimedChunk

log = structlog.get_logger("chunkd.consumer")

RESCAN_EVERY = 5.0  # seconds: a full scan picks up rescued or released chunks with lower ids
CLAIM_SHIELD_SECONDS = 5.0  # once stopping, a claim in flight is waited for this long at most


class ClaimCursor:
    """Where the next claim starts in the partition's READY index, as (rank, id): claims take
    chunks in that order (fair share, migration 0012). Claimed rows leave dead entries at the
    front of that index until vacuum; starting past them keeps a claim's cost flat under a
    large backlog (pgqueuer #607). A short claim, or every RESCAN_EVERY seconds, starts again
    from the beginning, so nothing behind the cursor waits for long.

    The start lags one claim behind (where the claim before the last one ended): a chunk
    inserted while the last claim ran read the partition's clock before that claim advanced
    it, so it may rank below the last claim's end but not below the one before (a new id
    sorts after older ones of its rank). The price is re-reading one batch of claimed index
    entries per claim. An insert that read the clock even earlier waits for the rescan."""

    def __init__(self) -> None:
        self.next: tuple[int, int] = (0, 0)
        self.rescan_at = 0.0
        self._end: tuple[int, int] | None = None  # (rank, id) where the last full claim ended

    def _reset(self) -> None:
        self.next, self._end = (0, 0), None

    def start(self, now: float) -> tuple[int, int]:
        if now >= self.rescan_at:
            self.rescan_at = now + RESCAN_EVERY
            self._reset()
        return self.next

    def claimed(self, positions: list[tuple[int, int]], requested: int) -> None:
        """`positions`: (rank, id) of the chunks claimed in order (suspects left out)."""
        if requested <= 0:  # the whole batch went to a suspect: the cursor learnt nothing
            return
        if len(positions) < requested:
            self._reset()
            return
        if self._end is not None:
            self.next = (self._end[0], self._end[1] + 1)
        self._end = max(positions)


async def consume_partition(engine: Engine, partition: int, out: MemoryObjectSendStream[ClaimedChunk]) -> None:
    cfg = engine.settings.claim
    signal = engine.channel.signal(partition)
    claimed_metric = CHUNKS_CLAIMED.labels(str(partition))
    size_metric = CLAIM_SIZE.labels(str(partition))
    backoff = Backoff(0.1, 5.0)
    cursor = ClaimCursor()
    size, requested, got = cfg.claim_batch, 0, 0
    size_metric.set(size)
    while not engine.stopping:
        # At most room + one claim in flight: claim only when what it holds is within its room.
        await engine.inflight.wait_for_room(partition)
        if engine.stopping:
            return
        if not engine.channel.owns(partition) and not engine.starved:  # Kafka gave it to another daemon
            with anyio.move_on_after(cfg.poll_interval):  # (or none to us: see Node._check_starved)
                await engine.channel.assignment_changed.wait()
            continue
        if cfg.adaptive:  # idle executors: workers waiting on the mailbox (River sizes its fetch the same way)
            size = next_claim(out.statistics().tasks_waiting_receive, requested, got, cfg.claim_batch)
            size_metric.set(size)
        suspect = engine.inflight.take_suspect_slot()
        try:
            from_rank, from_id = cursor.start(time.monotonic())
            # Shielded: a claim cancelled in flight at shutdown may still commit on the server
            # after the shutdown has handed back what this daemon holds, leaving chunks
            # IN_PROGRESS for a node that is gone until their lease runs out. So the stop
            # waits for the claim's answer (bounded); what it claimed is then handed back.
            claiming = anyio.CancelScope(shield=True)
            engine.claims.add(claiming)
            try:
                with claiming:
                    chunks = await engine.store.claim(partition, size, engine.node_id,
                                                      cfg.lease_seconds, from_rank, suspect, from_id)
            finally:
                engine.claims.discard(claiming)
            if claiming.cancelled_caught:
                raise TimeoutError(f"claim took longer than {CLAIM_SHIELD_SECONDS:g} s")
            normal = [(c.rank, c.id) for c in chunks if not c.suspect]
            cursor.claimed(normal, size - (len(chunks) - len(normal)))
            engine.channel.acked(partition)  # hints so far are served: their offsets may be committed
            backoff.ok()
            requested, got = size, len(chunks)
        except TRANSIENT as e:
            if suspect:
                engine.inflight.suspect_claimed(None)
            delay = backoff.failed()
            log.warning("claim failed; retrying", partition=partition, error=repr(e), retry_in=delay)
            await anyio.sleep(delay)
            continue
        if chunks:
            engine.inflight.claimed(partition, chunks)
        took = next(((c.id, c.attempt) for c in chunks if c.suspect), None) if suspect else None
        if suspect:  # after `claimed`, so the slot stays taken while the suspect is held
            engine.inflight.suspect_claimed(took)
        if chunks:
            claimed_metric.inc(len(chunks))
            CLAIM_BATCH.observe(len(chunks))
            try:
                await engine.note_started({c.instance_id for c in chunks})
            except TRANSIENT:
                pass  # cosmetic (QUEUED -> IN_PROGRESS, maintenance does it too); runtimes are read per chunk then
            now = time.monotonic()
            for c in chunks:
                c.claimed_at = now
                out.send_nowait(c)  # never blocks: the mailbox holds room + one claim (PipelineSettings.mailbox_size)
            if len(chunks) == size:
                continue  # probably more waiting
        if took is not None:
            # Suspects run one at a time per process, so after a crash that orphaned many
            # running chunks (hundreds, with many workers) the next one is claimed as soon as
            # this one is done, not a poll interval later: minutes of a queue otherwise.
            with anyio.move_on_after(cfg.poll_interval):
                await engine.inflight.suspect_done()
            continue
        await signal.wait(cfg.poll_interval)
        await anyio.sleep(0)
