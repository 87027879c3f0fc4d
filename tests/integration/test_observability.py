"""A real daemon process: /metrics after a job, health endpoints, JSON logs."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.request

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import daemon_env, run_cli, wait_status

pytestmark = pytest.mark.anyio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_health_and_json_logs(dsn: str, conn: asyncpg.Connection, spawn_daemon, tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    d = spawn_daemon(CHUNKD_HTTP_ADDR=f"127.0.0.1:{port}", CHUNKD_LOG_LEVEL="info", CHUNKD_LOG_FORMAT="json",
                     CHUNKD_NODE_ID="obs-node")
    base = f"http://127.0.0.1:{port}"
    import anyio
    for _ in range(100):
        try:
            if get(base + "/readyz")[0] == 200:
                break
        except OSError:
            pass
        await anyio.sleep(0.1)
    n = 500
    res = run_cli("submit", "chunkd.synthetic", "--params", json.dumps({"chunks": n, "fanout": 1}), "--json",
                  env=daemon_env(dsn, CHUNKD_API_URL=base))
    iid = json.loads(res.stdout)["instance_id"]
    assert await wait_status(conn, iid, {"COMPLETED", "FAILED"}, 60) == "COMPLETED"

    status, text = get(base + "/metrics")
    assert status == 200
    m = samples(text)  # parses with prometheus_client's own parser
    job = ("job", "chunkd.synthetic")
    assert m[("chunkd_chunks_completed_total", (job, ("step", "plan")))] == 1
    assert m[("chunkd_chunks_completed_total", (job, ("step", "work")))] == n
    claimed = sum(v for (name, _), v in m.items() if name == "chunkd_chunks_claimed_total")
    assert claimed == n + 1
    assert m[("chunkd_claim_to_complete_seconds_count", (job, ("step", "work")))] == n
    assert m[("chunkd_step_duration_seconds_count", (job, ("step", "work")))] == n
    assert sum(v for (name, _), v in m.items() if name == "chunkd_completer_flush_size_sum") == n + 1
    assert m[("chunkd_partitions_assigned", ())] == 4
    assert any(name == "chunkd_build_info" and dict(labels)["version"] == "0.1.0" for name, labels in m)
    assert not any("instance" in dict(labels) or "chunk" in dict(labels) for _, labels in m)  # bounded labels

    promtool = shutil.which("promtool")
    if promtool:
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check.stdout + check.stderr

    assert get(base + "/healthz")[0] == 200
    ready = get(base + "/readyz")
    assert ready[0] == 200 and json.loads(ready[1])["status"] == "ok"

    assert d.terminate() == 0
    lines = d.log_path.read_text().splitlines()
    assert lines
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(r.get("node") == "obs-node" for r in records)
    changes = [r for r in records if r.get("event") == "instance state change"]
    assert {r["status"] for r in changes} >= {"FINALIZE", "COMPLETED"}
    assert all(r["job"] == "chunkd.synthetic" and r["instance_id"] == iid for r in changes)
    assert not any(r.get("chunk_id") for r in records if r.get("level") == "info")  # no per-chunk info lines


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (Debian package 'prometheus'; `make test` tries to install it)")
def test_promtool_is_available_for_the_metrics_check() -> None:
    assert shutil.which("promtool")


def test_http_port_in_use_is_a_clear_start_up_error(dsn: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = run_cli("run", env=daemon_env(dsn, CHUNKD_HTTP_ADDR=f"127.0.0.1:{port}"), timeout=30)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"chunkd: cannot listen on CHUNKD_HTTP_ADDR=127.0.0.1:{port}: Address already in use"]


async def test_readyz_follows_the_database(pg_server: str, dsn: str, spawn_daemon) -> None:  # type: ignore[no-untyped-def]
    import anyio
    port = free_port()
    spawn_daemon(CHUNKD_HTTP_ADDR=f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"

    async def readyz_becomes(code: int) -> dict:  # type: ignore[type-arg]
        for _ in range(150):
            try:
                status, body = get(base + "/readyz")
                if status == code:
                    return json.loads(body)
            except OSError:
                pass
            await anyio.sleep(0.1)
        raise AssertionError(f"/readyz never answered {code}")

    await readyz_becomes(200)
    db = dsn.rsplit("/", 1)[1]
    admin = await asyncpg.connect(pg_server)
    try:
        await admin.execute(f'ALTER DATABASE "{db}" WITH ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", db)
        body = await readyz_becomes(503)
        assert any("database unreachable" in p or "channel not connected" in p for p in body["problems"])
        assert get(base + "/healthz")[0] == 200  # alive, just not ready
        await admin.execute(f'ALTER DATABASE "{db}" WITH ALLOW_CONNECTIONS true')
        await readyz_becomes(200)
    finally:
        await admin.execute(f'ALTER DATABASE "{db}" WITH ALLOW_CONNECTIONS true')
        await admin.close()
