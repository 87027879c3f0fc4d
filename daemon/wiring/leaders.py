"""Is anything advancing? A daemon that runs chunks but sees no maintenance leader for
long says so on /readyz (issue 24 row 6): with CHUNKD_SCHEDULING=false on every daemon no
gate opens, no retry is released, no instance completes, yet every daemon looked ready.

The watch runs on the node's liveness tick (bounded, at most every CHECK_EVERY seconds);
the probe only reads its verdict. A normal failover (the leader killed: its lease expires,
another daemon takes it within one lease plus a maintenance interval) stays under
LEASES_WITHOUT_LEADER leases."""
from __future__ import annotations

import time

import structlog

from actors.maintenance import leader_lease
from metrics import MAY_LEAD
from storage.errors import TRANSIENT
from storage.store import Store

log = structlog.get_logger("chunkd.node")

CHECK_EVERY = 2.0           # seconds between looks at the leader row
LEASES_WITHOUT_LEADER = 3   # leaderless this many leader leases: not ready


class LeaderWatch:
    def __init__(self, store: Store, may_lead: bool, maintenance_interval: float) -> None:
        self.store = store
        self.may_lead = may_lead
        self.after = LEASES_WITHOUT_LEADER * leader_lease(maintenance_interval)
        self.led_at = time.monotonic()  # counted from this daemon's start, not the epoch
        self._checked_at = 0.0
        self._said = False
        MAY_LEAD.set(1 if may_lead else 0)

    async def check(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < CHECK_EVERY:
            return
        self._checked_at = now
        try:
            held = await self.store.leader_held()
        except TRANSIENT:
            return  # the database's own problem, reported as such
        if held:
            if self._said:
                log.info("a maintenance leader is back")
            self.led_at, self._said = now, False
        elif (problem := self.problem()) and not self._said:
            self._said = True
            log.warning(problem)

    def problem(self) -> str | None:
        leaderless = time.monotonic() - self.led_at
        if leaderless < self.after:
            return None
        why = ("this daemon may lead (CHUNKD_SCHEDULING=true) but has not taken the lease" if self.may_lead
               else "no running daemon may lead: is CHUNKD_SCHEDULING=false on every daemon?")
        return (f"no maintenance leader for {leaderless:.0f}s ({why}); gates, retries, lease rescues and "
                "instance completion are stopped")
