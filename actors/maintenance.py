"""Maintenance: one leader per cluster (a lease row in Postgres) runs a pass of small duties
(actors/duties.py, actors/advancer.py, actors/reducer.py) every interval: rescue expired
leases, release retries, rehome, advance instances (gates, FINALIZE and its reduction,
COMPLETED, FAILED, progress), export the cluster gauges, reap dead nodes' rows and
re-publish partitions whose READY chunks waited too long. This loop owns only the
leadership, its term (the fencing token of every leader write) and the pass scheduling."""
from __future__ import annotations

import time
from collections.abc import Sequence

import anyio
import structlog

from actors.advancer import InstanceAdvancer, shape_of
from actors.doorbell import Doorbell
from actors.duties import (
    Duty,
    GaugeExporter,
    LeaseRescuer,
    NodeReaper,
    PassContext,
    Rehomer,
    Republisher,
    RetryReleaser,
    Vacuumer,
)
from actors.reducer import Reducer, ReportTooLarge
from actors.registry import Registry
from actors.settings import MaintenanceSettings
from channels.base import Channel
from metrics import ADVANCE_SECONDS, IS_LEADER, LEADER_CHANGES, MAINTENANCE_SECONDS
from storage.errors import TRANSIENT, Backoff
from storage.reader import Reader
from storage.protocol import EngineStore
from storage.types import LeaderTerm, NotLeader

__all__ = ["Maintenance", "ReportTooLarge", "leader_lease", "shape_of"]

log = structlog.get_logger("chunkd.maintenance")

# Seconds from the end of a pass to an advancing pass: twice what the last advancing pass
# took, within these bounds. Between full passes (every interval: the lease and every duty),
# a ring of the doorbell (this node's completer closed a step; the advancer's own moves call
# for another look) runs a pass of the InstanceAdvancer alone: it costs what changed since
# the last one, so while work flows they follow each other, each taking what came in
# meanwhile (a one-chunk job used to wait half an interval for its pass). Waiting twice what
# the pass took keeps the leader's passes at most a third of its time: under load a pass
# takes longer, the next waits longer and takes more instances at once (at the upper bound,
# as many as before; once as long as the pass, measured, cost a fifth of the throughput).
ADVANCE_SPACING = (0.01, 0.05)


def leader_lease(interval: float) -> float:
    """Seconds a leader's lease lasts; it is renewed every `interval`."""
    return max(5.0, 5 * interval)


def duties(settings: MaintenanceSettings, store: EngineStore, registry: Registry, reducer: Reducer) -> list[Duty]:
    """A pass, in order: chunks first (so the instances' counters include them), then the
    instances, then the figures and the housekeeping."""
    return [LeaseRescuer(store), RetryReleaser(store, registry), Rehomer(store),
            InstanceAdvancer(store, registry, reducer, settings.interval),
            GaugeExporter(store, settings.partitions), NodeReaper(store, settings.forget_nodes_after),
            Republisher(store, settings.partitions, settings.republish_after), Vacuumer(store, settings.vacuum)]


class Maintenance:
    def __init__(self, settings: MaintenanceSettings, store: EngineStore, channel: Channel, registry: Registry,
                 reader: Reader, node_id: int, pass_duties: Sequence[Duty] | None = None,
                 doorbell: Doorbell | None = None) -> None:
        """Only what it uses: its settings, the store, the channel it publishes on, the
        registry (reductions, handlers), ctx.db's reader for reductions, this node's id, and
        the doorbell this node's completer rings when a step closed (Engine.doorbell)."""
        self.settings, self.store, self.channel, self.node_id = settings, store, channel, node_id
        # the reductions it starts (chunkd.testing waits for them and skips their backoff)
        self.reducer = Reducer(store, reader, settings.max_report_bytes)
        self.duties = (list(pass_duties) if pass_duties is not None
                       else duties(settings, store, registry, self.reducer))
        self.leader = False
        self.term: LeaderTerm | None = None  # the fencing token of every leader write
        self.wake = doorbell if doorbell is not None else Doorbell()

    async def run(self) -> None:
        cfg = self.settings
        ttl = leader_lease(cfg.interval)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            backoff = Backoff(0.2, 5.0)
            try:
                while True:
                    try:
                        await self._round(ttl)
                        backoff.ok()
                    except NotLeader as e:
                        log.warning("maintenance term ended mid-pass; its writes were rolled back", error=str(e))
                        self._lose()
                    except TRANSIENT as e:
                        delay = backoff.failed()
                        log.warning("maintenance pass failed; retrying", error=repr(e), retry_in=delay)
                        await anyio.sleep(delay)
                        continue
                    try:
                        ended = anyio.current_time()
                        await self._advance_until(ended, ended + cfg.interval)
                    except NotLeader as e:
                        log.warning("maintenance term ended mid-pass; its writes were rolled back", error=str(e))
                        self._lose()
                    except TRANSIENT as e:  # the next full pass comes now, and backs off if need be
                        log.warning("maintenance pass failed; retrying", error=repr(e))
            finally:
                if self.leader:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                        try:
                            await self.store.resign_leadership(self.node_id)
                        except TRANSIENT:
                            pass
                    self._lose()

    async def _advance_until(self, last: float, deadline: float) -> None:
        """Until `deadline` (the next full pass), an advancing pass each time the doorbell
        rings, if we lead, spaced (ADVANCE_SPACING) from the end of the last pass of either
        kind (`last`: the full one's); a follower's rings are answered and dropped (the leader's
        passes decide, at its own interval)."""
        took = ADVANCE_SPACING[0]
        while anyio.current_time() < deadline:
            with anyio.move_on_after(deadline - anyio.current_time()):
                await self.wake.wait()
            if not self.wake.rung:
                return
            self.wake.answer()
            if not self.leader:
                continue
            spacing = min(ADVANCE_SPACING[1], max(ADVANCE_SPACING[0], 2 * took))
            start = max(anyio.current_time(), last + spacing)
            await anyio.sleep(max(0.0, start - anyio.current_time()))
            if start + spacing >= deadline:
                return  # the full pass, due about now, advances too
            started = time.perf_counter()
            await self.advance_once()
            took = time.perf_counter() - started
            ADVANCE_SECONDS.observe(took)
            last = anyio.current_time()

    def _lose(self) -> None:
        if self.leader:
            LEADER_CHANGES.labels("lost").inc()
        self.leader = False
        self.wake.answered_here = False
        self.term = None
        IS_LEADER.set(0)

    async def _round(self, ttl: float) -> None:
        """Renew (or take) the leader lease; if we hold it, run one pass."""
        if not self.settings.scheduling:
            return  # CHUNKD_SCHEDULING=false: a secondary node never leads
        term = await self.store.acquire_leadership(self.node_id, ttl)
        if term is not None and not self.leader:
            log.info("became maintenance leader", term=term)
            LEADER_CHANGES.labels("acquired").inc()
            for duty in self.duties:
                if isinstance(duty, InstanceAdvancer):
                    duty.sweep_next()  # another leader took the change markers meanwhile
        was_leader, self.leader = self.leader, term is not None
        self.wake.answered_here = self.leader
        self.term = LeaderTerm(self.node_id, term) if term is not None else None
        IS_LEADER.set(1 if self.leader else 0)
        if was_leader and not self.leader:
            log.info("lost maintenance leadership")
            LEADER_CHANGES.labels("lost").inc()
            GaugeExporter.clear()
        if self.leader:
            started = time.perf_counter()
            await self.pass_once()
            MAINTENANCE_SECONDS.observe(time.perf_counter() - started)

    async def pass_once(self) -> None:
        """Each duty in order under this term; the partitions they name are published once,
        at the end (after their writes committed)."""
        await self._run_duties(self.duties)

    async def advance_once(self) -> None:
        """The duties marked `advances` (the InstanceAdvancer, the RetryReleaser) alone, under
        the term the last full pass renewed (their writes are fenced by it all the same)."""
        await self._run_duties([d for d in self.duties if getattr(d, "advances", False)])

    async def _run_duties(self, duties: Sequence[Duty]) -> None:
        ctx = PassContext(self.term, self.wake.ring, self._tg.start_soon)
        publish: set[int] = set()
        for duty in duties:
            publish |= await duty.run(ctx)
        if publish:
            await self.channel.publish(publish)
