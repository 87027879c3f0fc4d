"""The claim and executor settings in effect show in /metrics (issue 26): adapted when
CHUNKD_PARTITION_CONCURRENCY / CHUNKD_CLAIM_BATCH are unset, the operator's values when set;
and an adapting daemon runs a job to the end."""
from __future__ import annotations

import time

import asyncpg
import pytest

from tests.conftest import free_port, submit_direct, wait_ready, wait_status
from tests.integration.test_operator_metrics import scrape

pytestmark = pytest.mark.anyio


def settings_of(url: str) -> dict[str, float]:
    return {dict(labels)["name"]: v for (name, labels), v in scrape(url).items() if name == "chunkd_setting"}


async def test_metrics_show_the_adapted_settings_and_the_set_ones(dsn: str, conn: asyncpg.Connection,  # type: ignore[no-untyped-def]
                                                                 spawn_daemon) -> None:
    auto_port, set_port = free_port(), free_port()
    spawn_daemon(CHUNKD_HTTP_ADDR=f"127.0.0.1:{auto_port}", CHUNKD_PARTITIONS="2")
    spawn_daemon(CHUNKD_HTTP_ADDR=f"127.0.0.1:{set_port}", CHUNKD_PARTITIONS="2",
                 CHUNKD_PARTITION_CONCURRENCY="3", CHUNKD_CLAIM_BATCH="7")
    auto_url, set_url = f"http://127.0.0.1:{auto_port}", f"http://127.0.0.1:{set_port}"
    wait_ready(auto_url, 60)
    wait_ready(set_url, 60)
    assert settings_of(auto_url) == {"partitions": 2, "partition_concurrency": 256, "claim_batch": 500,
                                     "completer_batch": 1000,
                                     "adaptive_concurrency": 1, "adaptive_claim": 1}
    assert settings_of(set_url) == {"partitions": 2, "partition_concurrency": 3, "claim_batch": 7,
                                    "completer_batch": 1000,
                                    "adaptive_concurrency": 0, "adaptive_claim": 0}
    iid = await submit_direct(dsn, "chunkd.synthetic", {"chunks": 400, "work_ms": 5})
    assert await wait_status(conn, iid, {"COMPLETED", "FAILED"}, 120) == "COMPLETED"
    claims = {dict(labels)["partition"]: v for (name, labels), v in scrape(set_url).items()
              if name == "chunkd_claim_size"}
    assert claims == {"0": 7, "1": 7}   # set: every claim is CHUNKD_CLAIM_BATCH
    for _ in range(50):  # the gauge is set by the daemon's 1 s tick
        auto = scrape(auto_url)
        workers = [v for (name, _), v in auto.items() if name == "chunkd_executor_workers"]
        if workers:
            break
        time.sleep(0.1)
    sizes = [v for (name, _), v in auto.items() if name == "chunkd_claim_size"]
    assert len(workers) == 2 and all(16 <= w <= 256 for w in workers), workers
    assert len(sizes) == 2 and all(1 <= s <= 500 for s in sizes), sizes
