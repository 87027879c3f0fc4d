"""The event loop the daemon's commands run on."""
from __future__ import annotations

import asyncio
from collections.abc import Callable


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop (locked in requirements.lock) where it is installed, else asyncio's own loop.
    The daemon is one event loop doing everything (HTTP, claims, steps, completions,
    maintenance), so the loop's own cost per callback is paid many times per chunk. Measured
    with httptools, three interleaved rounds against asyncio's loop and h11 (README, issue 26's
    "Third interleaved run"): daemon CPU per 1-chunk instance 1.39 / 1.26 -> 1.09 / 1.10 ms in
    the two undisturbed rounds. Same asyncio API: anyio, asyncpg and uvicorn run
    on it unchanged."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
