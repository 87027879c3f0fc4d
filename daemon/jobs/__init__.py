"""Jobs that ship with chunkd, and the one way to build a daemon's registry with them."""
from __future__ import annotations

from collections.abc import Iterable

from actors.registry import Registry, build_registry

BUILTIN_MODULES = ("daemon.jobs.synthetic", "daemon.jobs.bulk_export", "daemon.jobs.reindex",
                   "daemon.jobs.retention")


def load_registry(modules: Iterable[str], app_dir: str | None = None) -> Registry:
    """The built-in jobs plus the user's modules (CHUNKD_JOBS), found from `app_dir`."""
    return build_registry(modules, app_dir, BUILTIN_MODULES)
