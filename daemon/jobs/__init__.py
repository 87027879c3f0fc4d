"""Jobs that ship with chunkd, and the one way to build a daemon's registry with them."""
from __future__ import annotations

from collections.abc import Iterable

from actors.registry import Registry, build_registry

BUILTIN_MODULES = ("daemon.jobs.synthetic", "daemon.jobs.bulk_export", "daemon.jobs.reindex",
                   "daemon.jobs.retention")


def configure_builtins(registry: Registry, keep: float, keep_failed: float, every: float) -> None:
    """The built-in jobs' declared schedules as this daemon's settings shape them
    (CHUNKD_RETENTION, CHUNKD_RETENTION_FAILED, CHUNKD_RETENTION_EVERY; every=0: none)."""
    from daemon.jobs import retention
    sched = retention.configured(keep, keep_failed, every)
    if sched is None:
        registry.schedules.pop(retention.schedule.name, None)
    else:
        registry.schedules[sched.name] = sched
        registry.builtin_schedules.add(sched.name)


def load_registry(modules: Iterable[str], app_dir: str | None = None) -> Registry:
    """The built-in jobs plus the user's modules (CHUNKD_JOBS), found from `app_dir`."""
    return build_registry(modules, app_dir, BUILTIN_MODULES)
