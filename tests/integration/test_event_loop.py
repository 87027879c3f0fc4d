"""The daemon runs on uvloop and uvicorn parses HTTP with httptools (both locked): what
`chunkd run` runs on is what the benchmarks measured (daemon/wiring/loop.py)."""
from __future__ import annotations

import json
import urllib.request

import pytest

pytestmark = pytest.mark.anyio


async def test_the_daemon_says_it_runs_on_uvloop_and_serves_keep_alive(api_daemon) -> None:  # type: ignore[no-untyped-def]
    api = api_daemon(CHUNKD_LOG_LEVEL="info")
    started = [json.loads(line) for line in api.daemon.log_path.read_text().splitlines()
               if line.startswith("{") and '"daemon started"' in line]
    assert started and started[0]["event_loop"] == "uvloop", started
    for _ in range(3):  # the C parser answers as h11 did
        with urllib.request.urlopen(api.url + "/api/v1/jobs", timeout=10) as r:
            assert r.status == 200 and r.headers["content-type"].startswith("application/json")
            assert "chunkd.synthetic" in {j["name"] for j in json.loads(r.read())["jobs"]}
