"""The event loop the daemon's commands run on."""
from __future__ import annotations

import asyncio
from collections.abc import Callable


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop (locked in requirements.lock) where it is installed, else asyncio's own loop.
    The daemon is one event loop doing everything (HTTP, claims, steps, completions,
    maintenance), so the loop's own cost per callback is paid many times per chunk; with
    uvloop and httptools, `chunkd bench --workload jobs --jobs 3000 --chunks-per-job 1
    --clients 16` cost 3-25% less daemon CPU per instance in three interleaved pairs
    (README: "Issue 26, this session"). Same asyncio API: anyio, asyncpg and uvicorn run
    on it unchanged."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
