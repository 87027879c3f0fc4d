"""Heartbeat on its own thread and event loop: extends every lease this process holds in
one UPDATE, even while a step blocks the main event loop."""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence

import structlog

from storage.heartbeat import HeartbeatConnection

log = structlog.get_logger("chunkd.heartbeat")


class Heartbeat(threading.Thread):
    def __init__(self, dsn: str, node_id: int, lease_seconds: float, period: float,
                 held: Callable[[], Sequence[int]],
                 partitions: Callable[[], Sequence[int]] = lambda: ()) -> None:
        super().__init__(name="chunkd-heartbeat", daemon=True)
        self._dsn = dsn
        self._node_id = node_id
        self._lease = lease_seconds
        self._period = period
        self._held = held
        self._partitions = partitions
        self._stop = threading.Event()
        # monotonic time of the last renewal (read by the main loop's database watch: a
        # float assignment is atomic); the start counts as one
        self.last_ok = time.monotonic()

    def run(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        # a beat that cannot finish within a period (at least 1 s) drops its connection, so
        # the next one, a period later, dials anew: a silent connection costs one beat
        conn = HeartbeatConnection(self._dsn, max(self._period, 1.0))
        try:
            while not self._stop.is_set():
                try:
                    released = await conn.beat(self._node_id, self._lease, self._held(), 2 * self._period,
                                               self._partitions())
                    self.last_ok = time.monotonic()
                    if released:
                        log.info("released chunks this process no longer tracks", chunks=released)
                except Exception as e:  # noqa: BLE001 - keep beating; leases expire if we cannot
                    log.warning("heartbeat failed", error=repr(e))
                await asyncio.get_running_loop().run_in_executor(None, self._stop.wait, self._period)
        finally:
            try:
                await conn.close()
            except Exception:  # noqa: BLE001
                pass

    def stop(self) -> None:
        self._stop.set()
