"""A real TCP proxy between a daemon and Postgres that can make connections go silent: the
bytes stop flowing but no FIN or RST is ever sent (a firewall or NAT that forgot the
connections, a failover behind a virtual IP). It runs on its own thread and event loop, so
a test that blocks (waiting for a subprocess) does not stall it."""
from __future__ import annotations

import asyncio
import threading
from urllib.parse import urlsplit, urlunsplit


class _Link:
    """One client connection and its upstream; silenced, it reads and drops both ways."""

    def __init__(self, silenced: bool) -> None:
        self.silenced = silenced


class SilencingProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._links: set[_Link] = set()
        self._new_silenced = False
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="silencing-proxy", daemon=True)
        self._writers: list[asyncio.StreamWriter] = []

    def start(self) -> "SilencingProxy":
        self._thread.start()
        assert self._started.wait(10), "proxy did not start"
        return self

    def silence(self) -> int:
        """Every connection open now goes silent for good; new ones still work. Returns how many."""
        links = list(self._links)
        for link in links:
            link.silenced = True
        return len(links)

    def blackhole(self, on: bool = True) -> None:
        """New connections too are accepted and then silent (with silence(): nothing gets through)."""
        self._new_silenced = on

    def connections(self) -> int:
        return sum(1 for link in self._links if not link.silenced)

    def close(self) -> None:
        async def stop() -> None:
            for w in self._writers:
                w.transport.abort()
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop.stop()
        asyncio.run_coroutine_threadsafe(stop(), self._loop)
        self._thread.join(5)

    def dsn(self, dsn: str) -> str:
        """`dsn` (postgresql://user@host:port/db) through this proxy."""
        parts = urlsplit(dsn)
        user = parts.netloc.rpartition("@")[0]
        return urlunsplit((parts.scheme, f"{user}@127.0.0.1:{self.port}" if user else f"127.0.0.1:{self.port}",
                           parts.path, parts.query, parts.fragment))

    @classmethod
    def to(cls, dsn: str) -> "SilencingProxy":
        """A started proxy to the server of `dsn`."""
        parts = urlsplit(dsn)
        return cls(parts.hostname or "127.0.0.1", parts.port or 5432).start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()
        server.close()
        self._loop.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(self._new_silenced)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers += [writer, up_writer]
        self._links.add(link)
        try:
            await asyncio.gather(self._pump(reader, up_writer, link), self._pump(up_reader, writer, link))
        finally:
            self._links.discard(link)

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: _Link) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                if link.silenced:
                    continue  # read (so the sender's kernel sees its bytes acknowledged) and dropped
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.CancelledError):
            pass
        if not link.silenced:  # a silent link never tells the other side anything
            try:
                dst.close()
            except Exception:  # noqa: BLE001
                pass
