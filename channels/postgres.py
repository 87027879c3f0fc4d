"""LISTEN/NOTIFY channel (the default). Payloads are partition numbers, never chunk ids:
NOTIFY costs a query and caps at 8 KB, and one hint per partition is all a consumer needs."""
from __future__ import annotations

from collections.abc import Callable, Iterable

import anyio
import asyncpg
import structlog

from channels.base import AllPartitions, LocalSignals, PartitionSignal

CHANNEL = "chunkd_work"
# A follower's completer closed a step: the maintenance leader's doorbell (no payload). Its own
# channel, so that a daemon of an earlier version ignores it instead of misreading a payload.
ADVANCE = "chunkd_advance"
_NOTIFY = "SELECT pg_notify($1, $2)"

log = structlog.get_logger("chunkd.channel.postgres")


class PostgresChannel(AllPartitions):
    name = "postgres"

    def __init__(self, dsn: str, partitions: int, *, reconnect_max: float = 5.0, timeout: float = 30.0,
                 on_connect: Callable[[asyncpg.Connection], None] | None = None) -> None:
        """`timeout` bounds each connect and statement (a silent connection must not hold a
        publish or the listener for ever); `on_connect` sees each new connection (socket options)."""
        self._dsn = dsn
        self._timeout = timeout
        self._on_connect = on_connect
        self.partitions = partitions
        self.assignment_changed = anyio.Event()
        self._local = LocalSignals(partitions)
        self._listen: asyncpg.Connection | None = None
        self._send: asyncpg.Connection | None = None
        self._send_lock = anyio.Lock()
        self._reconnect_max = reconnect_max
        self._rung: Callable[[], None] = lambda: None

    def signal(self, partition: int) -> PartitionSignal:
        return self._local.signal(partition)

    def connected(self) -> bool:
        return self._listen is not None and not self._listen.is_closed()

    async def publish(self, partitions: Iterable[int]) -> None:
        parts = sorted(set(partitions))
        if not parts:
            return
        self._local.wake(parts)  # our own consumers need no round trip
        await self._notify(CHANNEL, ",".join(map(str, parts)))

    async def ring_leader(self) -> None:
        await self._notify(ADVANCE, "")

    def on_leader_rung(self, ring: Callable[[], None]) -> None:
        self._rung = ring

    async def _notify(self, channel: str, payload: str) -> None:
        try:
            async with self._send_lock:
                if self._send is None or self._send.is_closed():
                    self._send = await self._connect()
                await self._send.execute(_NOTIFY, channel, payload)
        except Exception as e:  # noqa: BLE001 - any connection fault, asyncpg's InternalClientError too
            # A lost hint only delays work: maintenance re-publishes stale READY partitions,
            # and the leader's next full pass sees a closed step.
            log.warning("notify failed", error=repr(e))
            send, self._send = self._send, None
            if send is not None:
                send.terminate()  # it may be silent: no goodbye

    async def _connect(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(self._dsn, timeout=self._timeout, command_timeout=self._timeout)
        if self._on_connect is not None:
            self._on_connect(conn)
        return conn

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            self._local.wake(int(p) for p in payload.split(",") if p)
        except ValueError:
            log.warning("ignored malformed notification", payload=payload[:100])

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        delay = 0.1
        started = False
        while True:
            try:
                conn = await self._connect()
                try:
                    await conn.add_listener(CHANNEL, self._on_notify)
                    await conn.add_listener(ADVANCE, lambda *_: self._rung())
                    self._listen = conn
                    delay = 0.1
                    self._local.wake_all()  # we may have missed hints while away
                    self._rung()            # and a follower's ring
                    if not started:
                        started = True
                        task_status.started()
                    while not conn.is_closed():
                        await anyio.sleep(1.0)
                        await conn.execute("SELECT 1")  # notices a dead connection promptly
                finally:
                    self._listen = None
                    with anyio.CancelScope(shield=True):
                        try:
                            await conn.close(timeout=2)
                        except Exception:  # noqa: BLE001 - a silent connection: drop it without a word
                            conn.terminate()
            except Exception as e:  # noqa: BLE001 - the listener outlives any connection fault
                # (seen during a server restart: InternalClientError "cannot switch to state 15")
                log.warning("listener connection lost; reconnecting", error=repr(e), retry_in=delay)
            if not started:
                started = True
                task_status.started()
            await anyio.sleep(delay)
            delay = min(delay * 2, self._reconnect_max)

    async def close(self) -> None:
        if self._send is not None and not self._send.is_closed():
            await self._send.close()
