"""Stopper: makes cancel mean stop on this daemon. Several times a second it asks the
database which instances of the chunks it holds have ended (cancelled, force-stopped,
failed); their claimed chunks are then never started (the executor releases them as
CANCELLED) and their running steps are told: `ctx.cancelled` is set and async steps are
cancelled at their next await. Postgres is the truth, so this works the same on every
daemon and over every channel; the daemon that served the cancel learns of it at once."""
from __future__ import annotations

import anyio
import structlog

from actors.engine import Engine
from storage.errors import TRANSIENT, Backoff

log = structlog.get_logger("chunkd.stopper")

POLL_SECONDS = 0.25


def stop_running(engine: Engine, instance_ids: set[int]) -> int:
    """Mark these instances ended here and interrupt their running steps; returns how many were told."""
    engine.ended |= instance_ids
    told = 0
    for slot in list(engine.step_slots):
        if slot.instance_id in instance_ids:
            slot.stop()
            told += 1
    return told


async def watch_ended(engine: Engine) -> None:
    backoff = Backoff(0.25, 5.0)
    while True:
        held = engine.inflight.held_instances()
        if held:
            try:
                ended = await engine.store.ended_among(sorted(held))
                backoff.ok()
            except TRANSIENT as e:
                delay = backoff.failed()
                log.warning("checking for ended instances failed; retrying", error=repr(e), retry_in=delay)
                await anyio.sleep(delay)
                continue
            new = ended - engine.ended
            if new:
                told = stop_running(engine, new)
                log.info("instances ended: their chunks here stop", instances=sorted(new), running_told=told)
            engine.ended = ended | (engine.ended & held)  # forget instances we no longer hold
        else:
            engine.ended = set()
        await anyio.sleep(POLL_SECONDS)
