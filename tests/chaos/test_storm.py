"""2,000 submissions at once through the HTTP API: each is accepted (201) or cleanly refused
(429/503 with Retry-After); every accepted one completes; none is lost or invented."""
from __future__ import annotations

import asyncio
import json
import random
import time

import asyncpg
import pytest

from storage.states import C

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

TOKEN = "storm-manage-token"


async def post(host: str, port: int, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on its own connection (so 2,000 really are in flight at once)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                     .encode() + body)
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, payload


async def test_submission_storm(conn: asyncpg.Connection, api_daemon, channel) -> None:  # type: ignore[no-untyped-def]
    # A low admission limit, so that the storm is shed in part and both answers are exercised.
    api = api_daemon(f"manage:{TOKEN}", **channel(CHUNKD_API_MAX_SUBMITS="500", CHUNKD_LOG_LEVEL="warning"))
    host, port = api.url.removeprefix("http://").split(":")
    n = 2_000

    def body(i: int) -> bytes:
        return json.dumps({"job": "test.gated", "parameters": {"chunks": 2}, "idempotency_key": f"storm-{i}"}).encode()

    started = time.monotonic()
    results = await asyncio.gather(*(post(host, int(port), "/api/v1/instances", body(i)) for i in range(n)))
    took = time.monotonic() - started
    statuses = [s for s, _, _ in results]
    accepted = {i: json.loads(b)["id"] for i, (s, _, b) in enumerate(results) if s == 201}
    refused = [i for i, (s, _, _) in enumerate(results) if s in (429, 503)]
    print(f"{n} submissions at once in {took:.1f}s: {len(accepted)} accepted, {len(refused)} refused")
    assert set(statuses) <= {201, 429, 503}, sorted(set(statuses))
    assert len(accepted) + len(refused) == n and accepted and refused
    assert all("retry-after" in results[i][1] for i in refused)
    assert b"CHUNKD_API_MAX_SUBMITS" in results[refused[0]][2]
    # none lost, none invented: the database holds exactly the accepted ones
    assert {r[0] for r in await conn.fetch("SELECT id FROM chunkd_instance")} == set(accepted.values())

    # each refused client retries after Retry-After (plus up to 4 s of jitter) with the same idempotency key
    rng = random.Random(7)

    async def client(i: int) -> tuple[int, int]:
        for attempt in range(1, 60):
            await asyncio.sleep(float(results[i][1]["retry-after"]) + 4 * rng.random())  # spread the herd
            status, _, b = await post(host, int(port), "/api/v1/instances", body(i))
            if status in (200, 201):
                return json.loads(b)["id"], attempt
            assert status in (429, 503), status
        raise AssertionError(f"submission {i} refused 60 times")
    retried = await asyncio.gather(*(client(i) for i in refused))
    accepted |= {i: iid for i, (iid, _) in zip(refused, retried)}
    rounds = max(a for _, a in retried)
    print(f"all accepted {time.monotonic() - started:.1f}s after the storm began")
    assert len(accepted) == n and len(set(accepted.values())) == n
    assert await conn.fetchval("SELECT count(*) FROM chunkd_instance") == n

    deadline = time.monotonic() + 240
    while (left := await conn.fetchval("SELECT count(*) FROM chunkd_instance WHERE status <> 'COMPLETED'")) > 0:
        assert time.monotonic() < deadline, f"{left} instances not COMPLETED"
        await asyncio.sleep(0.5)
    assert await conn.fetchval(f"SELECT count(*) FROM chunkd_chunk WHERE step = 1 AND state = {C.COMPLETED:d}") == 2 * n
    assert await conn.fetchval(f"SELECT count(*) FROM chunkd_chunk WHERE state <> {C.COMPLETED:d}") == 0
    assert await conn.fetchval("""SELECT count(*) FROM chunkd_instance WHERE report = '{"count": 2, "total": 1}'""") == n
    print(f"all {n} completed {time.monotonic() - started:.1f}s after the storm began (at most {rounds} retries for one client)")
