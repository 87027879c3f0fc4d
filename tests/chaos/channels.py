"""Running the fault scenarios over each notification channel: postgres and kafka."""
from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio


def kafka_env(broker: Any, group: str = "g1", **extra: str) -> dict[str, str]:
    return {"CHUNKD_CHANNEL": "kafka", "CHUNKD_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "CHUNKD_KAFKA_GROUP": group,
            "CHUNKD_PARTITIONS": "8", "CHUNKD_LOG_LEVEL": "info", "CHUNKD_LEASE_SECONDS": "2",
            "CHUNKD_HEARTBEAT_SECONDS": "0.5", **extra}


def postgres_env(**extra: str) -> dict[str, str]:
    return {"CHUNKD_LEASE_SECONDS": "2", "CHUNKD_HEARTBEAT_SECONDS": "0.5", "CHUNKD_LOG_LEVEL": "info", **extra}


def assigned(daemon: Any) -> set[int]:
    """Every partition the daemon's log says Kafka ever assigned it."""
    out: set[int] = set()
    for line in daemon.log_path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("event") == "kafka partitions assigned":
            out |= set(r["partitions"])
    return out


async def has_partitions(daemon: Any) -> bool:
    return bool(assigned(daemon))


async def wait_for(cond: Callable[[], Awaitable[bool]], timeout: float, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        assert time.monotonic() < deadline, f"{what} not met within {timeout}s"
        await anyio.sleep(0.1)
