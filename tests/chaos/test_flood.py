"""Issue 22 row 7: an async first step that emits without bound (an unchecked parameter)
must not take the daemon down: the per-run caps fail the step naming the limit, the
daemon's memory stays bounded and its HTTP keeps answering meanwhile."""
from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request

import anyio
import asyncpg
import pytest

from tests.conftest import free_port, submit_direct, wait_ready

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

GUARD_BYTES = 2 << 30    # the old code grows without bound: stop it here and call it a failure
BOUND_BYTES = 1536 << 20  # what the daemon may reach with the default caps


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Watch(threading.Thread):
    """Samples the daemon's RSS and /healthz latency; kills the daemon past GUARD_BYTES."""

    def __init__(self, pid: int, url: str) -> None:
        super().__init__(daemon=True)
        self.pid, self.url = pid, url
        self.peak = 0
        self.slowest = 0.0
        self.unanswered = 0
        self.killed = False
        self.stop = threading.Event()

    def run(self) -> None:
        last_probe = 0.0
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, rss(self.pid))
            except OSError:
                return
            if self.peak > GUARD_BYTES:
                os.kill(self.pid, signal.SIGKILL)
                self.killed = True
                return
            if time.monotonic() - last_probe >= 0.5:
                last_probe = time.monotonic()
                threading.Thread(target=self._probe, daemon=True).start()
            time.sleep(0.05)

    def _probe(self) -> None:
        started = time.monotonic()
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=10) as r:
                r.read()
            self.slowest = max(self.slowest, time.monotonic() - started)
        except OSError:
            self.unanswered += 1


async def test_unbounded_emitter_fails_naming_the_limit(dsn: str, conn: asyncpg.Connection, spawn_daemon) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    d = spawn_daemon(CHUNKD_HTTP_ADDR=f"127.0.0.1:{port}", CHUNKD_LOG_LEVEL="info")
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    watch = Watch(d.proc.pid, url)
    watch.start()
    try:
        iid = await submit_direct(dsn, "test.flood", {"n": 0})
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline and not watch.killed:
            status = await conn.fetchval("SELECT status FROM chunkd_instance WHERE id = $1", iid)
            if status in ("FAILED", "COMPLETED"):
                break
            await anyio.sleep(0.2)
        await anyio.sleep(1.0)  # and it still answers afterwards
    finally:
        watch.stop.set()
        watch.join(5)
    assert not watch.killed, f"the daemon grew past {GUARD_BYTES >> 20} MiB of RSS (killed)"
    assert status == "FAILED", status
    msg = await conn.fetchval("SELECT error_message FROM chunkd_instance WHERE id = $1", iid)
    assert "CHUNKD_MAX_CHUNKS_PER_RUN" in msg and "1,000,000 chunks" in msg, msg
    assert watch.peak < BOUND_BYTES, f"peak RSS {watch.peak >> 20} MiB"
    assert watch.unanswered == 0 and watch.slowest < 10, (watch.unanswered, watch.slowest)
    # nothing of the failed run was written
    assert await conn.fetchval("SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND step = 1", iid) == 0
    print(f"peak RSS {watch.peak >> 20} MiB, slowest /healthz {watch.slowest:.2f} s")
    assert d.terminate() == 0
