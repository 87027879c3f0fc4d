"""Idempotency keys compare the request: same key + same request -> the original (200);
same key + another job, version or parameters -> 409 naming the difference."""
from __future__ import annotations

import asyncpg
import pytest

from daemon.cli.client import ApiCallError, ApiClient
from tests.conftest import run_cli

pytestmark = pytest.mark.anyio


def conflict(c: ApiClient, body: dict) -> ApiCallError:  # type: ignore[type-arg]
    with pytest.raises(ApiCallError) as e:
        c.call("POST", "/api/v1/instances", body=body)
    return e.value


async def test_same_key_other_request_is_409_naming_the_difference(conn: asyncpg.Connection, api_daemon) -> None:  # type: ignore[no-untyped-def]
    api = api_daemon()
    c = ApiClient(api.url)
    body = {"job": "chunkd.synthetic", "parameters": {"chunks": 3}, "idempotency_key": "nightly-2026-12-03"}
    first = c.call("POST", "/api/v1/instances", body=body)
    assert c.call("POST", "/api/v1/instances", body=body)["id"] == first["id"]  # same request: the original

    # before: each of these returned the first instance with 200 and no word
    e = conflict(c, {**body, "parameters": {"chunks": 4}})
    assert e.status == 409 and e.code == "idempotency_conflict"
    assert "parameters $.chunks: first 3, now 4" in e.message and str(first["id"]) in e.message
    assert e.details == {"differences": ["parameters $.chunks: first 3, now 4"]}
    e = conflict(c, {**body, "job": "test.poller", "parameters": {}})
    assert e.status == 409 and "job: first 'chunkd.synthetic', now 'test.poller'" in e.message
    e = conflict(c, {**body, "version": 1})
    assert e.status == 409 and "version: first latest, now 1" in e.message
    assert await conn.fetchval("SELECT count(*) FROM chunkd_instance") == 1

    # the CLI says it in one line, exit 1 (a refusal, not bad input)
    res = run_cli("submit", "chunkd.synthetic", "--params", '{"chunks": 5}', "--idempotency-key",
                  "nightly-2026-12-03", env=api.cli_env())
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1
    assert "parameters $.chunks: first 3, now 5" in res.stderr and "HTTP 409" in res.stderr


def test_differences_are_pure_and_named() -> None:
    import json

    from actors.instances import idempotency_differences
    row = {"job_name": "j", "job_version": 2, "params": json.dumps({"a": 1, "b": {"c": [1]}}),
           "idempotency_request": json.dumps({"version": None})}
    assert idempotency_differences(row, "j", None, json.dumps({"a": 1, "b": {"c": [1]}})) == []
    assert idempotency_differences(row, "j", None, json.dumps({"a": 1.0, "b": {"c": [2]}, "d": 0})) == [
        "parameters $.a: first 1, now 1.0", "parameters $.b.c: first [1], now [2]", "parameters $.d: first absent, now 0"]
    legacy = {**row, "idempotency_request": None}  # written before migration 0010
    assert idempotency_differences(legacy, "j", 2, row["params"]) == []
    assert idempotency_differences(legacy, "j", 1, row["params"]) == ["version: first 2, now 1"]
