"""`chunkd demo`: a daemon and a submit in one process, with a progress bar."""
from __future__ import annotations

import json
import sys
import time
from typing import Any

import anyio

import msgspec

from .api import instance_out
from .cli import TERMINAL, progress_bar
from .config import Config
from .node import Node
from .registry import Registry
from .submit import submit


async def run_demo(cfg: Config, registry: Registry, dsn: str, chunks: int) -> int:
    node = Node(cfg, registry, dsn)
    result: dict[str, object] = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(node.run)
        await node.ready.wait()
        engine = node.engine
        assert engine is not None
        params = json.dumps({"chunks": chunks, "fanout": 1})
        started = time.monotonic()
        res = await submit(engine.store, engine.channel, registry, "chunkd.synthetic", params)
        print(f"submitted chunkd.synthetic instance {res.instance_id} with {chunks} chunks", file=sys.stderr)
        row = await wait_for(engine.store, res.instance_id, timeout=600)
        elapsed = time.monotonic() - started
        result = msgspec.to_builtins(instance_out(row))
        result["elapsed_seconds"] = round(elapsed, 3)
        result["demo_chunks_per_second"] = round((2 * chunks + 2) / elapsed, 1) if elapsed else None
        node.stop()
    print(json.dumps(result, indent=2, default=str))
    return 0 if result.get("status") == "COMPLETED" else 1


async def wait_for(store: Any, instance_id: int, *, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        row = await store.get_instance(instance_id)
        print(f"\r{progress_bar(row['progress'])} {row['status']:<11}", end="", file=sys.stderr, flush=True)
        if row["status"] in TERMINAL:
            print(file=sys.stderr)
            return row
        if time.monotonic() > deadline:
            raise RuntimeError(f"instance {instance_id} still {row['status']} after {timeout}s")
        await anyio.sleep(0.25)
