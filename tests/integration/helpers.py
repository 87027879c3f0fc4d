"""In-process daemon for integration tests (real Postgres, real LISTEN/NOTIFY)."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from actors.instances import Submitted, submit
from daemon.jobs import load_registry
from daemon.wiring.config import load
from daemon.wiring.node import Node


def test_config(**env: str):  # type: ignore[no-untyped-def]
    base = {"CHUNKD_JOBS": "tests.testjobs", "CHUNKD_MAINTENANCE_INTERVAL": "0.1", "CHUNKD_POLL_INTERVAL": "0.5",
            "CHUNKD_LOG_LEVEL": "warning", "CHUNKD_SHUTDOWN_GRACE_SECONDS": "5",
            "CHUNKD_HTTP_ADDR": "127.0.0.1:0", "CHUNKD_RETENTION_EVERY": "0"}
    base.update(env)
    return load(base)


@asynccontextmanager
async def running_node(dsn: str, **env: str) -> AsyncIterator[Node]:
    cfg = test_config(**env)
    node = Node(cfg, load_registry(cfg.jobs), dsn)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: node.run(handle_signals=False))
        with anyio.fail_after(30):
            await node.ready.wait()
        try:
            yield node
        finally:
            node.stop()


async def submit_job(node: Node, job: str, key: str | None = None, **params: object) -> Submitted:
    engine = node.engine
    assert engine is not None
    return await submit(engine.store, engine.channel, engine.registry, job, json.dumps(params),
                        idempotency_key=key)
