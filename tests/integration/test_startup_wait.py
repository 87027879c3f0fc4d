"""A daemon whose database is not up yet waits for it (issue 24 row 7).

A sidecar must not crash-loop because Postgres restarts or starts after it: `chunkd run`
keeps /healthz alive, answers /readyz 503 naming the database it waits for, and starts
when the database answers. Here the database "appears" when a plain TCP forwarder starts
listening on the port the daemon was given, forwarding to the real Postgres (no mocks).
Bad credentials and a missing database are not waited for: one line, exit 2."""
from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.conftest import free_port, wait_ready


def _get(url: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _wait_for(what: str, check, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
        except OSError:
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout}s")
        time.sleep(0.1)


class Forwarder:
    """127.0.0.1:port → target, in a thread of its own; started when the test says."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port, self.target = port, target
        self.forwarding = False  # until then: accept and hang up at once, like a server going down
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.AbstractServer | None = None

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.forwarding:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def start(self) -> None:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self.port), self.loop).result(10)

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def closed_port_dsn(dsn: str) -> Iterator[tuple[str, int]]:
    """The test's database, but on a loopback port where nothing listens (yet)."""
    port = free_port()
    parts = urlsplit(dsn)
    netloc = f"{parts.username}@127.0.0.1:{port}" if parts.username else f"127.0.0.1:{port}"
    yield urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), port


def test_a_daemon_waits_for_a_database_that_comes_up_later(dsn: str, closed_port_dsn: tuple[str, int],
                                                           spawn_daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    late_dsn, db_port = closed_port_dsn
    http = free_port()
    url = f"http://127.0.0.1:{http}"
    d = spawn_daemon(CHUNKD_DATABASE_URL=late_dsn, CHUNKD_HTTP_ADDR=f"127.0.0.1:{http}")

    status, body = _wait_for("/readyz answers", lambda: _get(url + "/readyz"))
    assert status == 503
    waiting = _wait_for("/readyz names the database it waits for",
                        lambda: next((p for p in _get(url + "/readyz")[1]["problems"]
                                      if f"waiting for the database at 127.0.0.1:{db_port}/" in p), None))
    assert "ConnectionRefusedError" in waiting, waiting
    time.sleep(3)  # several refused attempts later: still alive, still waiting
    assert d.proc.poll() is None, (tmp_path / "daemon0.log").read_text()
    assert _get(url + "/healthz")[0] == 200
    assert _get(url + "/readyz")[0] == 503

    target = urlsplit(dsn)
    forwarder = Forwarder(db_port, (target.hostname or "127.0.0.1", target.port or 5432))
    forwarder.start()  # something listens, but hangs up at once: a server restarting
    try:
        _wait_for("the wait names the dropped connection",
                  lambda: any("waiting for the database" in p and "ConnectionRefusedError" not in p
                              for p in _get(url + "/readyz")[1]["problems"]))
        assert d.proc.poll() is None, (tmp_path / "daemon0.log").read_text()
        forwarder.forwarding = True  # the database "comes up"
        wait_ready(url, timeout=60)
        assert d.proc.poll() is None
        assert d.terminate(60) == 0
    finally:
        forwarder.stop()


def test_sigterm_while_waiting_for_the_database_exits_0(closed_port_dsn: tuple[str, int], spawn_daemon) -> None:  # type: ignore[no-untyped-def]
    late_dsn, _ = closed_port_dsn
    http = free_port()
    d = spawn_daemon(CHUNKD_DATABASE_URL=late_dsn, CHUNKD_HTTP_ADDR=f"127.0.0.1:{http}")
    _wait_for("waiting", lambda: any("waiting for the database" in p
                                     for p in _get(f"http://127.0.0.1:{http}/readyz")[1]["problems"]))
    started = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(30) == 0
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("change, says", [
    (lambda p: p._replace(path="/chunkd_no_such_db"), 'database "chunkd_no_such_db" does not exist'),
    (lambda p: p._replace(netloc=f"chunkd_no_such_role@{p.hostname}:{p.port or 5432}"),
     'role "chunkd_no_such_role" does not exist'),
], ids=["missing-database", "unknown-role"])
def test_a_database_that_refuses_chunkd_is_exit_2_not_a_wait(dsn: str, change, says: str, spawn_daemon,  # type: ignore[no-untyped-def]
                                                             tmp_path: Path) -> None:
    bad = urlunsplit(change(urlsplit(dsn)))
    d = spawn_daemon(CHUNKD_DATABASE_URL=bad)
    assert d.proc.wait(30) == 2
    err = (tmp_path / "daemon0.log").read_text()
    assert says in err and "check CHUNKD_DATABASE_URL" in err, err
    assert "Traceback" not in err, err
