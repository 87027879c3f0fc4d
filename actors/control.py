"""Stopping and restarting an instance: the one place every route that does it (chunkd's
API and the seed-compatible ones) goes through."""
from __future__ import annotations

from typing import Any

from actors.engine import Engine
from actors.job import StepKind
from actors.registry import Registry


async def stop(engine: Engine, instance_id: int, *, force: bool) -> bool:
    """Cancel (force: running chunks too). False if the instance had already ended. Its
    steps on this daemon stop at once; on the others within a poll (actors/stopper.py)."""
    store = engine.store
    if not await (store.force_stop_instance(instance_id) if force else store.cancel_instance(instance_id)):
        return False
    engine.stops.stop({instance_id})
    return True


async def restart(engine: Engine, registry: Registry, row: dict[str, Any]) -> bool:
    """FAILED/CANCELLED -> IN_PROGRESS; only what did not complete runs again. False if the
    instance is not restartable (any more). Raises UnknownJobError for a job not loaded here."""
    job = registry.get(row["job_name"], row["job_version"])
    reduction = job.steps[-1].index if job.steps[-1].kind is StepKind.REDUCE else None
    parts = await engine.store.restart_instance(row["id"], reduction)
    if parts is None:
        return False
    engine.stops.restarted(row["id"])
    if parts:
        await engine.channel.publish(parts)
    return True
