"""One-for-one supervision of the actors.

A child that raises is restarted after a backoff; more than `max_restarts` restarts
within `window` seconds means something is badly wrong, so the supervisor gives up and
the daemon exits non-zero (the container runtime restarts it). A crash caused by a database
outage (storage.errors.is_transient) is restarted with the same backoff but does not count
towards that limit: the daemon waits the outage out, reporting not-ready, instead of exiting.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import structlog

from metrics import ACTOR_RESTARTS
from storage.errors import is_transient

T = TypeVar("T")
log = structlog.get_logger("chunkd.supervisor")


class SupervisorGaveUp(RuntimeError):
    pass


class RestartPolicy:
    """Restart intensity (pure: the clock is passed in)."""

    def __init__(self, max_restarts: int = 10, window: float = 60.0,
                 backoff_base: float = 0.2, backoff_max: float = 10.0) -> None:
        self.max_restarts = max_restarts
        self.window = window
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._times: deque[float] = deque()
        self._streak: dict[str, int] = {}

    def record(self, name: str, now: float, counts: bool = True) -> float:
        """Register a crash of `name`; returns the backoff, or raises SupervisorGaveUp.
        `counts=False` (an outage, not a bug): backoff only, no step towards giving up."""
        if counts:
            self._times.append(now)
        while self._times and self._times[0] < now - self.window:
            self._times.popleft()
        if len(self._times) > self.max_restarts:
            raise SupervisorGaveUp(
                f"{len(self._times)} actor restarts within {self.window:.0f}s (last: {name}); giving up")
        streak = self._streak.get(name, 0)
        self._streak[name] = streak + 1
        return min(self.backoff_max, self.backoff_base * (2 ** streak))

    def healthy(self, name: str) -> None:
        self._streak.pop(name, None)


class Supervisor:
    def __init__(self, policy: RestartPolicy | None = None) -> None:
        self.policy = policy or RestartPolicy()

    async def supervise(self, name: str, kind: str, fn: Callable[[], Awaitable[None]],
                        healthy_after: float = 30.0) -> None:
        """Run `fn` until it returns; restart it when it raises."""
        while True:
            started = time.monotonic()
            try:
                await fn()
                return
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:  # noqa: BLE001 - a supervisor's job is to catch everything
                if time.monotonic() - started > healthy_after:
                    self.policy.healthy(name)
                outage = is_transient(exc)
                delay = self.policy.record(name, time.monotonic(), counts=not outage)
                ACTOR_RESTARTS.labels(kind).inc()
                if outage:
                    log.warning("actor lost the database; restarting", actor=name, kind=kind, error=repr(exc),
                                retry_in=round(delay, 2))
                else:
                    log.error("actor crashed; restarting", actor=name, kind=kind, error=repr(exc),
                              retry_in=round(delay, 2), exc_info=True)
                await anyio.sleep(delay)
