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
from metrics import IS_LEADER, LEADER_CHANGES, MAINTENANCE_SECONDS
from storage.errors import TRANSIENT, Backoff
from storage.reader import Reader
from storage.protocol import EngineStore
from storage.types import LeaderTerm, NotLeader

__all__ = ["Maintenance", "ReportTooLarge", "leader_lease", "shape_of"]

log = structlog.get_logger("chunkd.maintenance")

# Seconds between a pass and the next when woken (instances moved, a gate opened), at least:
# a pass costs what changed since the last one, so passes may follow closely while work
# flows (a one-chunk job waits for a pass twice: to finalize, and after its reduction).
_WOKEN_SPACING = 0.05


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
                 reader: Reader, node_id: int, pass_duties: Sequence[Duty] | None = None) -> None:
        """Only what it uses: its settings, the store, the channel it publishes on, the
        registry (reductions, handlers), ctx.db's reader for reductions, and this node's id."""
        self.settings, self.store, self.channel, self.node_id = settings, store, channel, node_id
        # the reductions it starts (chunkd.testing waits for them and skips their backoff)
        self.reducer = Reducer(store, reader, settings.max_report_bytes)
        self.duties = (list(pass_duties) if pass_duties is not None
                       else duties(settings, store, registry, self.reducer))
        self.leader = False
        self.term: LeaderTerm | None = None  # the fencing token of every leader write
        self.wake = anyio.Event()

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
                    ended = anyio.current_time()
                    with anyio.move_on_after(cfg.interval):
                        await self.wake.wait()
                    self.wake = anyio.Event()
                    # woken: not back to back, the pass's other duties each cost a round trip
                    await anyio.sleep(max(0.0, ended + min(cfg.interval, _WOKEN_SPACING) - anyio.current_time()))
            finally:
                if self.leader:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                        try:
                            await self.store.resign_leadership(self.node_id)
                        except TRANSIENT:
                            pass
                    self._lose()

    def _lose(self) -> None:
        if self.leader:
            LEADER_CHANGES.labels("lost").inc()
        self.leader = False
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
        ctx = PassContext(self.term, self.wake.set, self._tg.start_soon)
        publish: set[int] = set()
        for duty in self.duties:
            publish |= await duty.run(ctx)
        if publish:
            await self.channel.publish(publish)
