"""Issue 16: the API answers keep-alive requests without a fixed delay, and instances in one
partition share the claim (a small job does not wait behind a big job's backlog)."""
from __future__ import annotations

import http.client
import json
import time
from urllib.parse import urlsplit


def test_keep_alive_requests_pay_no_fixed_delay(api_daemon) -> None:  # type: ignore[no-untyped-def]
    """Nagle + delayed ACK cost ~40 ms per request after the first on one connection; 20
    requests on ONE connection must take far less than 20 x 40 ms."""
    api = api_daemon()
    u = urlsplit(api.url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        for path in ("/healthz", "/api/v1/instances"):
            c.request("GET", path)  # warm: connection open, route and first query done
            r = c.getresponse()
            assert r.status == 200, r.read()
            r.read()
            sock = c.sock
            started = time.perf_counter()
            for _ in range(20):
                c.request("GET", path)
                r = c.getresponse()
                assert r.status == 200
                r.read()
            total = time.perf_counter() - started
            assert c.sock is sock, "the server closed the keep-alive connection"
            assert total < 0.4, f"20 keep-alive GET {path} took {total * 1000:.0f} ms (a fixed delay per request?)"
    finally:
        c.close()


# ------------------------------------------------------------------ fair share
import anyio  # noqa: E402
import asyncpg  # noqa: E402
import pytest  # noqa: E402

from benchmarks.seed import seed_backlog  # noqa: E402
from storage.states import C
from storage.store import Store  # noqa: E402
from storage.types import Success  # noqa: E402
from tests.conftest import wait_status  # noqa: E402


@pytest.mark.anyio
async def test_small_instance_is_claimed_before_the_rest_of_a_large_backlog(dsn: str, conn: asyncpg.Connection) -> None:
    """Store level, one partition: a large instance's 5,000 READY chunks, 300 of them claimed;
    a small instance submitted then (first chunk, then its 10 children) has all its chunks
    claimed while the large instance still has most of its backlog: each of its two steps
    waits at most one quantum of the large instance (instances take turns by QUANTUM chunks)."""
    from daemon.jobs.synthetic import SyntheticParams, Work
    from storage.codec import encode
    from storage.sql import QUANTUM
    store = await Store.open(dsn, partitions=1)
    try:
        node = await store.register_node("test", 1)
        large = await seed_backlog(conn, "chunkd.synthetic", 1, SyntheticParams(chunks=5000, fanout=0), 1,
                                   [Work(i) for i in range(5000)], 1, 3)
        first = await store.claim(0, 300, node, 60)
        assert {c.instance_id for c in first} == {large} and len(first) == 300
        small, created, _ = await store.create_instance("chunkd.synthetic", 1, '{"chunks": 10, "fanout": 0}',
                                                        False, None, b"", 3)
        assert created
        claimed_large = 0

        async def claim_until(pred, what: str) -> list:  # type: ignore[no-untyped-def,type-arg]
            nonlocal claimed_large
            got: list = []  # type: ignore[type-arg]
            while not pred(got):
                batch = await store.claim(0, 50, node, 60)
                assert batch, f"{what} was never claimed"
                got += [c for c in batch if c.instance_id == small]
                claimed_large += sum(c.instance_id == large for c in batch)
            return got
        (plan,) = await claim_until(lambda got: len(got) == 1, "the small instance's first chunk")
        res = await store.record_outcomes([Success(chunk_id=plan.id, attempt=plan.attempt, instance_id=small, step=0,
                                         children=[encode(Work(i)) for i in range(10)])], [])
        assert res.completed == 1 and res.children == 10
        await claim_until(lambda got: len(got) == 10, "the small instance's work chunks")
        assert claimed_large <= 2 * (QUANTUM + 50), claimed_large  # two turns, claim granularity
        left = await conn.fetchval(f"SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND state = {C.READY:d}", large)
        assert left >= 4000, left
    finally:
        await store.close()


@pytest.mark.anyio
async def test_small_job_completes_while_a_big_job_drains(dsn: str, conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    """A real daemon, one partition: a 20,000-chunk job with 2 ms per chunk (~10 s here) is
    draining when a 20-chunk job is submitted; the small job completes while most of the big
    job's backlog is still READY."""
    from daemon.cli.client import ApiClient
    api = api_daemon(CHUNKD_PARTITIONS="1", CHUNKD_PARTITION_CONCURRENCY="8", CHUNKD_CLAIM_BATCH="100")
    client = ApiClient(api.url)
    big = client.call("POST", "/api/v1/instances",
                      body={"job": "chunkd.synthetic", "parameters": {"chunks": 20000, "fanout": 0, "work_ms": 2}})["id"]
    deadline = time.monotonic() + 30
    while (await conn.fetchval(f"SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND step = 1 AND state = {C.COMPLETED:d}",
                               big)) < 500:  # the big job's work step is draining
        assert time.monotonic() < deadline, "the big job never started draining"
        await anyio.sleep(0.05)
    small = client.call("POST", "/api/v1/instances",
                        body={"job": "chunkd.synthetic", "parameters": {"chunks": 20, "fanout": 0}})["id"]
    await wait_status(conn, small, {"COMPLETED"}, timeout=30)
    ready = await conn.fetchval(f"SELECT count(*) FROM chunkd_chunk WHERE instance_id = $1 AND state = {C.READY:d}", big)
    assert ready >= 10000, f"the small job completed only when the big one had {ready} READY chunks left"
    client.call("POST", f"/api/v1/instances/{big}/cancel")


@pytest.mark.anyio
async def test_priority_weights_the_claim(dsn: str, conn: asyncpg.Connection) -> None:
    """Two instances' backlogs in one partition, priority 1 and -1 (each level doubles the
    share): the claims take 4 quanta of the first for 1 of the second."""
    from daemon.jobs.synthetic import Work
    from storage.codec import encode
    from storage.sql import QUANTUM
    store = await Store.open(dsn, partitions=1)
    try:
        node = await store.register_node("test", 1)
        ids = {}
        for prio in (-1, 1):
            iid, _, _ = await store.create_instance("chunkd.synthetic", 1, '{"chunks": 2000, "fanout": 0}',
                                                    False, None, b"", 3, priority=prio)
            ids[prio] = iid
        assert await conn.fetchval("SELECT priority FROM chunkd_instance WHERE id = $1", ids[1]) == 1
        plans = await store.claim(0, 10, node, 60)
        assert len(plans) == 2
        # both plans complete in one flush, each emitting 2,000 chunks
        res = await store.record_outcomes([Success(chunk_id=p.id, attempt=p.attempt, instance_id=p.instance_id, step=0,
                                         children=[encode(Work(i)) for i in range(2000)]) for p in plans], [])
        assert res.children == 4000
        first = await store.claim(0, 5 * QUANTUM, node, 60)
        high = sum(c.instance_id == ids[1] for c in first)
        low = sum(c.instance_id == ids[-1] for c in first)
        assert (high, low) == (4 * QUANTUM, QUANTUM)
    finally:
        await store.close()


# ------------------------------------------------------------------ bulk submit
@pytest.mark.anyio
async def test_bulk_submit_one_result_per_item(conn: asyncpg.Connection, api_daemon, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from daemon.cli.client import ApiCallError, ApiClient
    from tests.conftest import run_cli
    api = api_daemon()
    client = ApiClient(api.url)
    syn = "chunkd.synthetic"
    before = client.call("POST", "/api/v1/instances", body={"job": syn, "parameters": {"chunks": 2},
                                                            "idempotency_key": "old", "priority": 2})
    assert await conn.fetchval("SELECT priority FROM chunkd_instance WHERE id = $1", before["id"]) == 2
    with pytest.raises(ApiCallError) as e:
        client.call("POST", "/api/v1/instances", body={"job": syn, "priority": 9})
    assert e.value.status == 422 and e.value.details == {"path": "$.priority"}, e.value  # issue 24 row 8
    assert "priority must be between -3 and 3, got 9" in e.value.message
    items = [
        {"job": syn, "parameters": {"chunks": 3}},                                   # 0 created
        {"job": syn, "parameters": {"chunks": 3}, "idempotency_key": "k1", "priority": -1},  # 1 created
        {"job": syn, "parameters": {"chunks": 3}, "idempotency_key": "k1", "priority": -1},  # 2 same as 1
        {"job": syn, "parameters": {"chunks": 4}, "idempotency_key": "k1"},          # 3 conflict with 1
        {"job": "no.such.job"},                                                     # 4 unknown job
        {"job": syn, "parameters": {"chunks": -1}},                                  # 5 invalid parameters
        {"job": syn, "priority": 7},                                                # 6 bad priority
        {"job": syn, "parameters": {"chunks": 2}, "idempotency_key": "old"},         # 7 existing instance
        {"job": syn, "parameters": {"chunks": 5}, "idempotency_key": "old2"},        # 8 created
    ]
    res = client.call("POST", "/api/v1/instances:batch", body={"items": items})
    st = [r["status"] for r in res["results"]]
    assert [r["index"] for r in res["results"]] == list(range(len(items)))
    assert st == [201, 201, 200, 409, 404, 422, 422, 200, 201], res
    assert res["results"][6]["error"]["details"] == {"path": "$.priority"}
    r = res["results"]
    assert r[2]["id"] == r[1]["id"] and r[7]["id"] == before["id"]
    assert r[3]["error"]["code"] == "idempotency_conflict" and r[4]["error"]["code"] == "unknown_job"
    assert (res["created"], res["existing"], res["refused"]) == (3, 2, 4)
    new = [r[0]["id"], r[1]["id"], r[8]["id"]]
    # nothing written for the refused items; each created one whole: first chunk, counters, priority
    assert await conn.fetchval("SELECT count(*) FROM chunkd_instance") == 4
    assert await conn.fetchval("SELECT priority FROM chunkd_instance WHERE id = $1", r[1]["id"]) == -1
    for iid in new:
        await wait_status(conn, iid, {"COMPLETED"}, timeout=30)
    assert [await conn.fetchval("SELECT report->>'chunks' FROM chunkd_instance WHERE id = $1", i) for i in new] \
        == ["3", "3", "5"]  # the reduction saw every work chunk of each
    with pytest.raises(ApiCallError) as e:
        client.call("POST", "/api/v1/instances:batch", body={"items": []})
    assert e.value.status == 400
    # the CLI: JSON Lines in, one line per result out with --json
    f = tmp_path / "batch.jsonl"
    f.write_text("\n".join(json.dumps({"job": syn, "parameters": {"chunks": 1}, "idempotency_key": f"cli{i}"})
                           for i in range(3)) + "\n" + json.dumps({"job": "nope"}) + "\n")
    out = run_cli("submit-batch", str(f), "--json", env=api.cli_env())
    assert out.returncode == 1, out.stderr  # one item refused
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert [x["status"] for x in lines] == [201, 201, 201, 404]
    out = run_cli("submit-batch", str(f), env=api.cli_env())
    assert "0 created, 3 existing, 1 refused" in out.stdout, out.stdout + out.stderr
