"""The metrics an operator looks for (issue 18), against real Postgres and a real daemon:
queue depth and the stall detector from the store, gate/reduction/leader counters, API
latency by route template, readiness as a metric, the real build version; plus the app's
submit script and the image's healthcheck script against that daemon."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib.metadata import version
from pathlib import Path

import anyio
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from storage.states import C
from storage.store import Store
from tests.conftest import free_port, wait_ready, wait_status

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


async def test_queue_depth_and_oldest_ready_age_from_the_store(dsn: str, conn: asyncpg.Connection) -> None:
    store = await Store.open(dsn, partitions=3)
    try:
        iid, _, _ = await store.create_instance("chunkd.synthetic", 1, '{"chunks": 1}', False, None, b"", 3)
        await conn.execute("DELETE FROM chunkd_chunk")  # only the rows below
        rows = [(0, C.READY, 120), (0, C.READY, 30), (0, C.IN_PROGRESS, 0), (1, C.ERRORED, 0), (1, C.ERRORED, 0),
                (2, C.COMPLETED, 500), (2, C.GATE_WAITING, 900), (1, C.POLL_WAITING, 0)]
        for partition, state, age in rows:
            await conn.execute(  # a claimed (IN_PROGRESS) chunk always holds a lease, as claims set it
                "INSERT INTO chunkd_chunk (instance_id, step, state, partition, max_attempts, created_at, lease_until) "
                "VALUES ($1, 1, $2::smallint, $3, 3, now() - make_interval(secs => $4), "
                "CASE WHEN $2::smallint = 3 THEN now() + interval '30 seconds' END)", iid, int(state), partition, float(age))
        assert await store.queue_depth() == {(0, "READY"): 2, (0, "IN_PROGRESS"): 1, (1, "ERRORED"): 2}
        ages = await store.oldest_ready_age(range(3))
        assert set(ages) == {0, 1, 2} and ages[1] == 0 and ages[2] == 0  # nothing READY there
        assert 119 <= ages[0] < 180  # the head (lowest id) is the 120 s old one
    finally:
        await store.close()


async def test_operator_metrics_from_a_daemon_running_a_gated_job(
        dsn: str, conn: asyncpg.Connection, spawn_daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    token = "m-" + "x" * 30
    tokens = tmp_path / "tokens"
    tokens.write_text(f"manage:{token}\n")
    app_token = tmp_path / "manage-token"
    app_token.write_text(token + "\n")
    # As in the pod: all interfaces (allowed because there are tokens), a tokens file.
    spawn_daemon(CHUNKD_HTTP_ADDR=f"0.0.0.0:{port}", CHUNKD_API_TOKENS_FILE=str(tokens), CHUNKD_PARTITIONS="3")
    wait_ready(url, 60)

    # The app's side, as deploy/examples/submit.py does it in the pod.
    res = subprocess.run([sys.executable, str(ROOT / "deploy/examples/submit.py"), "test.gated",
                          json.dumps({"chunks": 20}), "ops-key-1"],
                         env={"CHUNKD_API_URL": url, "APP_CHUNKD_TOKEN_FILE": str(app_token), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    iid = json.loads(res.stdout)["id"]
    assert await wait_status(conn, iid, {"COMPLETED", "FAILED"}, 90) == "COMPLETED"

    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(url + "/api/v1/no-such-thing/12345", timeout=5)
    req = urllib.request.Request(f"{url}/api/v1/instances/{iid}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200

    job = ("job", "test.gated")
    deadline = time.monotonic() + 60
    while True:  # the leader exports its gauges every 5 s; wait for the finished instance
        m = scrape(url)
        if m.get(("chunkd_instances", (("status", "COMPLETED"),))) == 1:
            break
        assert time.monotonic() < deadline, "the leader never exported the COMPLETED instance"
        await anyio.sleep(0.5)

    assert m[("chunkd_gates_advanced_total", (job, ("step", "g_square")))] == 1
    assert m[("chunkd_reductions_total", (job, ("outcome", "completed")))] == 1
    assert m[("chunkd_maintenance_leader_changes_total", (("change", "acquired"),))] == 1
    assert m[("chunkd_maintenance_leader", ())] == 1
    assert m[("chunkd_ready", ())] == 1
    for p in ("0", "1", "2"):  # every configured partition has a series, 0 when idle
        assert m[("chunkd_queue_oldest_ready_age_seconds", (("partition", p),))] == 0
        for state in ("READY", "IN_PROGRESS", "ERRORED"):
            assert m[("chunkd_queue_chunks", (("partition", p), ("state", state)))] == 0
    submit = (("method", "POST"), ("route", "/api/v1/instances"), ("status", "201"))
    assert m[("chunkd_http_request_duration_seconds_count", submit)] == 1
    unknown = (("method", "GET"), ("route", "unmatched"), ("status", "404"))
    assert m[("chunkd_http_request_duration_seconds_count", unknown)] == 1
    by_id = (("method", "GET"), ("route", "/api/v1/instances/{id:int}"), ("status", "200"))
    assert m[("chunkd_http_request_duration_seconds_count", by_id)] == 1
    routes = {dict(labels)["route"] for name, labels in m if name == "chunkd_http_request_duration_seconds_count"}
    assert not any(re.search(r"/\d+(/|$)", r) for r in routes), routes  # templates, never ids
    [build] = [dict(labels) for name, labels in m if name == "chunkd_build_info"]
    assert build["version"] == version("chunkd")

    # The image's HEALTHCHECK script against the live daemon: the wildcard address maps to loopback.
    hc = subprocess.run([sys.executable, str(ROOT / "deploy/docker/healthcheck.py")],
                        env={"CHUNKD_HTTP_ADDR": f"0.0.0.0:{port}", "PATH": "/usr/bin:/bin"},
                        capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert hc.returncode == 0, hc.stderr


def _healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "deploy/docker/healthcheck.py")], env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=30, cwd=ROOT)


def test_healthcheck_with_http_off_and_with_a_value_the_daemon_refuses() -> None:
    off = _healthcheck({"CHUNKD_HTTP_ADDR": "off"})
    assert off.returncode == 0 and "off" in off.stdout
    bad = _healthcheck({"CHUNKD_HTTP_ADDR": ":8080"})  # chunkd exits 2 on it: the container is unhealthy
    assert bad.returncode == 1 and "CHUNKD_HTTP_ADDR" in bad.stderr
    closed = _healthcheck({"CHUNKD_HTTP_ADDR": "0.0.0.0:1"})  # nothing listens on port 1
    assert closed.returncode == 1 and "127.0.0.1:1/healthz" in closed.stderr
