"""Stopper: makes cancel mean stop on this daemon. Several times a second it asks the
database which instances of the chunks it holds have ended (cancelled, force-stopped,
failed); their claimed chunks are then never started (the executor releases them as
CANCELLED) and their running steps are told: `ctx.cancelled` is set and async steps are
cancelled at their next await. Postgres is the truth, so this works the same on every
daemon and over every channel; the daemon that served the cancel learns of it at once."""
from __future__ import annotations

import anyio
import structlog

from actors.engine import InFlight, Stops
from storage.errors import TRANSIENT, Backoff
from storage.store import Store

log = structlog.get_logger("chunkd.stopper")

POLL_SECONDS = 0.25


async def watch_ended(store: Store, inflight: InFlight, stops: Stops) -> None:
    """Gets only what it uses: the store to ask, the chunks this daemon holds, and the stops."""
    backoff = Backoff(0.25, 5.0)
    while True:
        held = inflight.held_instances()
        if held:
            stops.fresh = set()
            try:
                ended = await store.ended_among(sorted(held))
                backoff.ok()
            except TRANSIENT as e:
                delay = backoff.failed()
                log.warning("checking for ended instances failed; retrying", error=repr(e), retry_in=delay)
                await anyio.sleep(delay)
                continue
            new = ended - stops.ended
            if new:
                told = stops.stop(new)
                log.info("instances ended: their chunks here stop", instances=sorted(new), running_told=told)
            # The database's answer, plus what was stopped here while it was asked; an instance
            # restarted since it ended drops out, so its new run's chunks start again.
            stops.ended = ended | stops.fresh
        else:
            stops.ended, stops.fresh = set(), set()
        await anyio.sleep(POLL_SECONDS)
