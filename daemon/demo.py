"""`chunkd demo`: a daemon and a submit in one process, with a progress bar."""
from __future__ import annotations

import json
import sys
import time

import anyio

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
        from .cli import instance_summary, wait_for
        row = await wait_for(engine.store, res.instance_id, timeout=600, bar=True)
        elapsed = time.monotonic() - started
        result = instance_summary(row)
        result["elapsed_seconds"] = round(elapsed, 3)
        result["demo_chunks_per_second"] = round((2 * chunks + 2) / elapsed, 1) if elapsed else None
        node.stop()
    print(json.dumps(result, indent=2))
    return 0 if result.get("status") == "COMPLETED" else 1
