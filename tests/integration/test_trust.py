"""Issue 14: nothing a step or a user sends can wedge or kill a daemon, and the API
keeps to its limits and its origin. Real daemons, real Postgres, real sockets."""
from __future__ import annotations

import json
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import anyio
import asyncpg
import pytest

from daemon.cli.client import ApiCallError, ApiClient
from storage.states import C
from tests.chaos.channels import wait_for
from tests.conftest import free_port, run_cli, submit_direct, wait_status
from tests.integration.helpers import running_node, submit_job

pytestmark = pytest.mark.anyio

TABLES = """
CREATE TABLE test_started (instance_id bigint, n int, at timestamptz);
CREATE TABLE test_reduced (instance_id bigint, node int);
"""
REPLACEMENT = "\ufffd"


async def test_nul_in_a_step_error_fails_that_chunk_alone(dsn: str, conn: asyncpg.Connection) -> None:
    """A step raises an error whose text holds NUL: its batch-mates complete, the chunk
    is retried up to max_attempts and FAILED with the text made storable, the instance
    ends, and the daemon keeps working."""
    await conn.execute(TABLES)
    async with running_node(dsn, CHUNKD_CLAIM_BATCH="50") as node:
        res = await submit_job(node, "test.trust", chunks=20, nul="error")
        assert await wait_status(conn, res.instance_id, {"COMPLETED", "FAILED"}, 60) == "FAILED"
        bad = await conn.fetchrow("SELECT state, failures, error_message, error_trace FROM chunkd_chunk "
                                  f"WHERE instance_id = $1 AND step = 1 AND state = {C.FAILED:d}", res.instance_id)
        assert bad["failures"] == 3 and bad["error_message"] == f"RuntimeError: binary input {REPLACEMENT} here"
        assert "Traceback" in bad["error_trace"] and "t_work" in bad["error_trace"]
        done = await conn.fetchval("SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND step = 1 "
                                   f"AND state = {C.COMPLETED:d}", res.instance_id)
        assert done >= 1  # batch-mates were written; the others were cancelled by fail-fast
        assert await conn.fetchval(f"SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND state IN ({C.READY:d}, {C.IN_PROGRESS:d})",
                                   res.instance_id) == 0
        runs_of_bad = await conn.fetchval("SELECT count(*) FROM test_started WHERE instance_id = $1 AND n = 0",
                                          res.instance_id)
        assert runs_of_bad == 3  # never more than max_attempts
        ok = await submit_job(node, "test.trust", chunks=5)  # the daemon still works
        assert await wait_status(conn, ok.instance_id, {"COMPLETED", "FAILED"}, 60) == "COMPLETED"


@pytest.mark.parametrize("where", ["warn", "report", "reduce-error"])
async def test_nul_in_warnings_reports_and_reduction_errors_is_stored(
        dsn: str, conn: asyncpg.Connection, where: str) -> None:
    await conn.execute(TABLES)
    async with running_node(dsn) as node:
        res = await submit_job(node, "test.trust", chunks=3, nul=where)
        status = await wait_status(conn, res.instance_id, {"COMPLETED", "FAILED"}, 60)
        row = await conn.fetchrow("SELECT report::text, error_message FROM chunkd_instance WHERE id = $1",
                                  res.instance_id)
        if where == "warn":
            assert status == "COMPLETED"
            warned = await conn.fetchval("SELECT message FROM chunkd_warning WHERE instance_id = $1", res.instance_id)
            assert warned == f"odd byte {REPLACEMENT} in row"
        elif where == "report":
            assert status == "COMPLETED" and json.loads(row[0])["note"] == f"nul {REPLACEMENT} here"
        else:
            assert status == "FAILED" and f"reduction saw {REPLACEMENT}" in row[1]
            assert await conn.fetchval("SELECT count(*) FROM test_reduced WHERE instance_id = $1", res.instance_id) == 0
        again = await submit_job(node, "test.trust", chunks=2)  # maintenance and the daemon are alive
        assert await wait_status(conn, again.instance_id, {"COMPLETED", "FAILED"}, 60) == "COMPLETED"


async def test_orphaned_chunks_count_an_attempt(conn: asyncpg.Connection, dsn: str) -> None:
    """A chunk this daemon owns but lost track of (an actor of ours crashed with it) is
    handed back by the heartbeat as a failed attempt, FAILED at max attempts: a result
    that crashes the daemon every time cannot run forever."""
    from storage.heartbeat import HeartbeatConnection
    iid = await submit_direct(dsn, "test.gated", {"chunks": 1})
    node = await conn.fetchval("INSERT INTO chunkd_node (name, pid) VALUES ('x', 1) RETURNING id")
    await conn.execute(f"UPDATE chunkd_chunk SET state = {C.IN_PROGRESS:d}, attempt = 3, failures = 2, max_attempts = 3, "
                       "lease_owner = $1, lease_until = now() - interval '1 second' WHERE instance_id = $2", node, iid)
    beat = HeartbeatConnection(dsn)
    try:
        assert await beat.beat(node, 30, [], 10) == 1
    finally:
        await beat.close()
    row = await conn.fetchrow("SELECT state, failures, error_message FROM chunkd_chunk WHERE instance_id = $1", iid)
    assert row["state"] == 6 and row["failures"] == 3 and "lost this chunk" in row["error_message"]
    assert await conn.fetchval("SELECT failed FROM chunkd_step_counter WHERE instance_id = $1 AND step = 0", iid) == 1


async def test_a_beat_extends_every_lease_it_can_without_waiting_for_a_completion(conn: asyncpg.Connection,
                                                                                  dsn: str) -> None:
    """The heartbeat waited for row locks: behind a completion writing one of its chunks it
    stalled (every lease of the daemon unextended meanwhile), and with the completion locking
    in another order the two deadlocked (seen in Postgres's log, a second lost each time: the
    chaos suite and torture seeds, heartbeat against CHUNK_SETBACK and CHUNK_COMPLETE). A
    chunk being written is about to leave IN_PROGRESS; the beat skips it. On the old code the
    beat below waits on the locked row until its timeout and extends nothing."""
    from storage.heartbeat import HeartbeatConnection
    iid = await submit_direct(dsn, "test.gated", {"chunks": 1})
    node = await conn.fetchval("INSERT INTO chunkd_node (name, pid) VALUES ('x', 1) RETURNING id")
    await conn.execute(f"INSERT INTO chunkd_chunk (instance_id, step, state, partition, max_attempts, attempt, "
                       f"lease_owner, lease_until) SELECT $1, 1, {C.IN_PROGRESS:d}, 0, 3, 1, $2, now() + interval '5 s' "
                       f"FROM generate_series(1, 3)", iid, node)
    ids = [r[0] for r in await conn.fetch("SELECT id FROM chunkd_chunk WHERE lease_owner = $1 ORDER BY id", node)]
    writer = await asyncpg.connect(dsn)
    beat = HeartbeatConnection(dsn, timeout=5.0)
    try:
        async with writer.transaction():
            await writer.execute("UPDATE chunkd_chunk SET data = NULL WHERE id = $1", ids[1])  # a completion under way
            started = time.monotonic()
            assert await beat.beat(node, 60, ids, 2) == 0
            assert time.monotonic() - started < 2.5
        leases = dict(await conn.fetch("SELECT id, lease_until > now() + interval '30 s' FROM chunkd_chunk "
                                       "WHERE id = ANY($1)", ids))
        assert leases == {ids[0]: True, ids[1]: False, ids[2]: True}
    finally:
        await beat.close()
        await writer.close()


async def test_oversized_chunk_fails_naming_the_limit(dsn: str, conn: asyncpg.Connection) -> None:
    await conn.execute(TABLES)
    async with running_node(dsn, CHUNKD_MAX_CHUNK_BYTES="1MiB") as node:
        res = await submit_job(node, "test.trust", chunks=6, emit_bytes=3 << 20, work_ms=200)
        assert await wait_status(conn, res.instance_id, {"COMPLETED", "FAILED"}, 60) == "FAILED"
        msg = await conn.fetchval(f"SELECT error_message FROM chunkd_chunk WHERE instance_id = $1 AND state = {C.FAILED:d}",
                                  res.instance_id)
        assert "over the limit of 1,048,576 bytes (CHUNKD_MAX_CHUNK_BYTES)" in msg
        assert await conn.fetchval(f"SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND state IN ({C.READY:d}, {C.IN_PROGRESS:d})",
                                   res.instance_id) == 0
        assert await conn.fetchval("SELECT coalesce(max(octet_length(data)), 0) FROM chunkd_chunk "
                                   "WHERE instance_id = $1", res.instance_id) < 1 << 20


async def test_sigterm_ends_within_the_grace_period_whatever_the_database_does(
        pg_server: str, dsn: str, conn: asyncpg.Connection, spawn_daemon) -> None:  # type: ignore[no-untyped-def]
    """The database refuses every connection while the daemon holds work: SIGTERM still
    ends it within its grace period and the bounded clean-up steps."""
    await conn.execute(TABLES)
    d = spawn_daemon(CHUNKD_SHUTDOWN_GRACE_SECONDS="2", CHUNKD_PARTITION_CONCURRENCY="4")
    iid = await submit_direct(dsn, "test.trust", {"chunks": 200, "work_ms": 300})
    deadline = time.monotonic() + 60
    while await conn.fetchval("SELECT count(*) FROM test_started WHERE instance_id = $1", iid) < 10:
        assert time.monotonic() < deadline
        await anyio.sleep(0.1)
    db = dsn.rsplit("/", 1)[1]
    admin = await asyncpg.connect(pg_server)
    try:
        await admin.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 "
                            "AND pid <> pg_backend_pid()", db)
        started = time.monotonic()
        d.proc.send_signal(15)
        code = d.proc.wait(60)
        took = time.monotonic() - started
    finally:
        await admin.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
        await admin.close()
    assert took < 40, f"SIGTERM took {took:.0f}s"
    assert code in (0, 1)


async def test_restart_and_retention_are_ordered(dsn: str, conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    """Restart an old FAILED instance while retention is purging it. Made deterministic: the
    test holds a lock on the instance's last chunk, so the purge stops there mid-way; the
    restart comes then. Either it is refused (409, the purge wins whole) or, if it ran, the
    instance is kept whole; the counters always equal the rows. (The old code restarted it
    half-purged: instance IN_PROGRESS with a fraction of its chunks.)"""
    api = api_daemon(CHUNKD_LOG_LEVEL="warning")
    c = ApiClient(api.url)
    n = 40_000
    iid = await conn.fetchval("""INSERT INTO chunkd_instance (job_name, job_version, params, gated, status, finished_at)
                                 VALUES ('test.gated', 1, '{"chunks": 40000}', true, 'FAILED', now() - interval '40 days')
                                 RETURNING id""")
    await conn.execute("""INSERT INTO chunkd_chunk (instance_id, step, state, partition, max_attempts, failures)
                          SELECT $1, 1, 6, g % 4, 3, 3 FROM generate_series(1, $2) g""", iid, n)
    await conn.execute("INSERT INTO chunkd_step_counter (instance_id, step, created, failed) VALUES ($1, 1, $2, $2)",
                       iid, n)
    holder = await asyncpg.connect(dsn)
    tx = holder.transaction()
    await tx.start()
    await holder.execute("SELECT 1 FROM chunkd_chunk WHERE id = (SELECT max(id) FROM chunkd_chunk WHERE instance_id = $1) "
                         "FOR UPDATE", iid)
    purge = c.call("POST", "/api/v1/instances", body={"job": "chunkd.retention", "parameters": {}})

    async def purge_blocked() -> bool:  # the purge's DELETE waits on our lock: the purge is under way
        return await conn.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = "
                                   "'chunkd_chunk'::regclass") > 0 or await conn.fetchval(
            "SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1", iid) < n
    await wait_for(purge_blocked, 60, "the purge under way")
    outcome: list[int] = []

    def restart() -> None:
        try:
            c.call("POST", f"/api/v1/instances/{iid}/restart")
            outcome.append(200)
        except ApiCallError as e:
            outcome.append(e.status)
            assert e.status != 409 or "being purged" in e.message or "IN_PROGRESS" in e.message, e.message
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, restart)  # (the old code's restart blocked on our lock)
        await anyio.sleep(2)
        await tx.rollback()  # let the purge (and whatever the restart waits for) go on
    await holder.close()
    assert await wait_status(conn, purge["id"], {"COMPLETED", "FAILED"}, 60) == "COMPLETED"
    exists = await conn.fetchval("SELECT count(*) FROM chunkd_instance WHERE id = $1", iid)
    chunks = await conn.fetchval("SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1", iid)
    if exists:
        assert outcome == [200] and chunks == n, (outcome, chunks)  # the restart won: nothing of it was purged
        counted = await conn.fetchval("SELECT created FROM chunkd_step_counter WHERE instance_id = $1 AND step = 1", iid)
        assert counted == chunks
    else:
        assert chunks == 0  # purged whole: no chunk was left behind by a restart that came in between
        assert outcome != [200], outcome  # a restart that had won would have kept the instance


async def test_api_input_limits_are_4xx(api_daemon) -> None:  # type: ignore[no-untyped-def]
    c = ApiClient(api_daemon().url)
    deep = b'{"job": "chunkd.synthetic", "parameters": {"chunks": 1, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}}"
    for body, status, fragment in [
        (deep, 400, "nested more than 64"),
        (json.dumps({"job": "chunkd.synthetic", "parameters": {"chunks": 1}, "idempotency_key": "k" * 20_000}).encode(),
         422, "idempotency_key is 20000 characters; the limit is 255"),
        (json.dumps({"job": "j" * 5000, "parameters": {}}).encode(), 422, "job is 5000 characters"),
    ]:
        with pytest.raises(ApiCallError) as e:
            c.call("POST", "/api/v1/instances", body=body)
        assert e.value.status == status and fragment in e.value.message, e.value
    shallow: object = 1
    for _ in range(70):
        shallow = {"a": shallow}
    with pytest.raises(ApiCallError) as e:
        c.call("POST", "/api/v1/instances", body={"job": "chunkd.synthetic", "parameters": {"chunks": 1, "x": shallow}})
    assert e.value.status == 422 and "nested more than 64" in e.value.message
    with pytest.raises(ApiCallError) as e:
        c.call("POST", "/api/v1/schedules", body={"id": "s", "job": "chunkd.synthetic", "every_seconds": 60,
                                                   "parameters": {"chunks": 1, "x": shallow}})
    assert e.value.status == 422


def raw_request(port: int, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        s.sendall(f"{method} {path} HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                  .encode() + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


async def test_browser_pages_cannot_drive_the_api(conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    """No tokens on loopback (the default): a page from another origin posting text/plain,
    a foreign Origin, or a DNS-rebinding Host is refused, and nothing is written."""
    api = api_daemon()
    port = int(api.url.rsplit(":", 1)[1])
    body = json.dumps({"job": "chunkd.synthetic", "parameters": {"chunks": 1}}).encode()
    own = f"127.0.0.1:{port}"
    cases = [
        ({"Host": own, "Content-Type": "text/plain", "Origin": "http://evil.example"}, 415),
        ({"Host": own, "Content-Type": "text/plain"}, 415),
        ({"Host": own, "Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({"Host": own, "Content-Type": "application/json", "Origin": "http://evil.example"}, 403),
        ({"Host": own, "Content-Type": "application/json", "Origin": "null"}, 403),
        ({"Host": f"rebind.evil.example:{port}", "Content-Type": "application/json"}, 421),
    ]
    for headers, status in cases:
        assert raw_request(port, "POST", "/api/v1/instances", headers, body) == status, headers
    assert raw_request(port, "GET", "/api/v1/instances", {"Host": f"rebind.evil.example:{port}"}) == 421
    assert await conn.fetchval("SELECT count(*) FROM chunkd_instance") == 0
    ok = {"Host": own, "Content-Type": "application/json", "Origin": f"http://{own}"}
    assert raw_request(port, "POST", "/api/v1/instances", ok, body) == 201
    assert raw_request(port, "GET", "/api/v1/jobs", {"Host": f"localhost:{port}"}) == 200  # loopback names pass
    assert raw_request(port, "GET", "/healthz", {"Host": "anything.example"}) == 200  # probes are exempt


async def test_hash_inside_a_token_is_part_of_it(tmp_path: Path, api_daemon) -> None:  # type: ignore[no-untyped-def]
    tokens = tmp_path / "tokens"
    tokens.write_text("# operators\nmanage:Abc#Xy7secret\n  # indented comment\nview:v1\n")
    api = api_daemon(CHUNKD_API_TOKENS_FILE=str(tokens))
    with pytest.raises(ApiCallError) as e:
        ApiClient(api.url, "Abc").call("GET", "/api/v1/jobs")
    assert e.value.status == 401
    assert ApiClient(api.url, "Abc#Xy7secret").call("GET", "/api/v1/whoami")["scope"] == "manage"
    assert ApiClient(api.url, "v1").call("GET", "/api/v1/whoami")["scope"] == "view"


async def test_probes_answer_while_the_broker_is_away(dsn: str, spawn_daemon) -> None:  # type: ignore[no-untyped-def]
    """CHUNKD_CHANNEL=kafka with no broker: /healthz answers alive at once and /readyz
    says what start-up waits for, instead of a port that accepts and never answers."""
    port = free_port()
    spawn_daemon(CHUNKD_CHANNEL="kafka", CHUNKD_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
                 CHUNKD_HTTP_ADDR=f"127.0.0.1:{port}")
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as r:
                assert r.status == 200
                break
        except (ConnectionRefusedError, urllib.error.URLError) as e:
            if isinstance(e, urllib.error.HTTPError):
                raise
            assert time.monotonic() < deadline, "healthz never answered"
            await anyio.sleep(0.2)
    await anyio.sleep(3)  # well past the first broker attempt
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3)
    assert e.value.code == 503
    problems = json.loads(e.value.read())["problems"]
    assert any("waiting for the Kafka broker" in p for p in problems), problems
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as r:
        assert r.status == 200


async def test_failure_keeps_its_traceback_in_api_and_cli(conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    """Issue 17, item 6: the chunk's last error keeps its (bounded) traceback."""
    await conn.execute(TABLES)
    api = api_daemon()
    c = ApiClient(api.url)
    inst = c.call("POST", "/api/v1/instances", body={"job": "test.trust", "parameters": {"chunks": 2, "nul": "error"}})
    assert await wait_status(conn, inst["id"], {"COMPLETED", "FAILED"}, 60) == "FAILED"
    page = c.call("GET", f"/api/v1/instances/{inst['id']}/chunks", query={"errors": "true"})
    (bad,) = [ch for ch in page["chunks"] if ch["status"] == "FAILED"]
    assert bad["error_trace"].startswith("Traceback") and 'in t_work' in bad["error_trace"]
    assert "RuntimeError: binary input" in bad["error_trace"]
    out = run_cli("chunks", str(inst["id"]), "--errors", env=api.cli_env())
    assert out.returncode == 0, out.stderr
    assert "Traceback (most recent call last)" in out.stdout and "in t_work" in out.stdout


def _takes_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (/proc's SigCgt mask, bit 15 - 1)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


def test_a_sigterm_while_the_daemon_still_starts_is_a_clean_stop(spawn_daemon) -> None:  # type: ignore[no-untyped-def]
    """The torture (seed 2049) stopped a daemon 0.2 s after restarting it: the process was still
    importing, had no handler, and died of the signal (exit -15, nothing shut down). `chunkd
    run` now takes SIGTERM first thing (daemon/cli/entry.py); sent the moment the process
    takes it, the daemon stops as on any SIGTERM, once it listens, and exits 0. On the old
    code the process took SIGTERM only once its event loop ran: no start-up stop is logged."""
    d = spawn_daemon(CHUNKD_LOG_LEVEL="info")
    assert d.proc is not None
    deadline = time.monotonic() + 60
    while not _takes_sigterm(d.proc.pid):
        assert d.proc.poll() is None and time.monotonic() < deadline, "chunkd run never took SIGTERM"
        time.sleep(0.001)
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(60) == 0
    assert "signal received during start-up: shutting down" in d.log_path.read_text()
