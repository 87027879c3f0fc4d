"""The heartbeat's own connection: it runs on a separate thread and event loop so a
step that blocks the main loop cannot starve it (Hatchet #322)."""
from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from storage import sql
from storage.counters import ERRORS, FAILED, CounterDelta
from storage.deadlines import keep_alive
from storage.states import C


class HeartbeatConnection:
    def __init__(self, dsn: str, timeout: float = 10.0) -> None:
        self._dsn = dsn
        self._timeout = timeout  # each connect and statement; a failure drops the connection
        self._conn: asyncpg.Connection | None = None

    async def beat(self, node_id: int, lease_seconds: float, held: Sequence[int], orphan_after: float,
                   partitions: Sequence[int] = ()) -> int:
        """Extend the leases of `held`; release owned chunks not held whose lease was last set
        more than `orphan_after` seconds ago (a failed attempt each: FAILED past max
        attempts); record the partitions this daemon consumes. Returns how many were released."""
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self._dsn, timeout=self._timeout, command_timeout=self._timeout)
            keep_alive(self._conn, self._timeout)
        try:
            ids = list(held)
            await self._conn.execute(sql.NODE_HEARTBEAT, node_id, lease_seconds, ids, list(partitions),
                                     timeout=self._timeout)
            async with self._conn.transaction():
                rows = await self._conn.fetch(sql.NODE_RELEASE_ORPHANS, node_id, ids,
                                              lease_seconds - orphan_after, timeout=self._timeout)
                delta = CounterDelta()
                for inst, step, state, _ in rows:
                    if state == C.FAILED:
                        delta.add(inst, step, FAILED)
                        delta.add(inst, step, ERRORS)
                if delta:
                    await self._conn.execute(sql.COUNTERS_ADD, *delta.arrays(), timeout=self._timeout)
            return len(rows)
        except BaseException:
            conn, self._conn = self._conn, None
            conn.terminate()
            raise

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
