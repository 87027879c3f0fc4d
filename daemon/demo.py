"""`chunkd demo`: 100,000 FHIR-like resources exported to NDJSON with chunkd.bulk-export,
a daemon and a submit in one process, with a live progress bar."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from prometheus_client import REGISTRY

from storage.demo_data import seed_demo_resources

from .cli import TERMINAL, progress_bar
from .config import Config
from .node import Node
from .registry import Registry
from .submit import submit


async def run_demo(cfg: Config, registry: Registry, dsn: str, rows: int) -> int:
    cfg = _demo_config(cfg)
    node = Node(cfg, registry, dsn)
    out_dir = Path(cfg.export_dir).resolve() / "demo"
    code = 1
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: node.run(handle_signals=True))
        await node.ready.wait()
        engine = node.engine
        assert engine is not None
        say(f"chunkd demo: database {'CHUNKD_DATABASE_URL' if cfg.database_url else 'embedded Postgres in ' + str(Path(cfg.home).resolve() / 'pgdata')}")
        t0 = time.monotonic()
        await seed_demo_resources(engine.store.pool, rows)
        say(f"created {rows:,} FHIR-like resources (Patient, Observation) as JSONB in table demo_resource "
            f"({time.monotonic() - t0:.1f}s)")
        params = {"table": "demo_resource", "output": "demo", "type_column": "resource_type",
                  "column": "resource", "chunk_size": 1000}
        started = time.monotonic()
        res = await submit(engine.store, engine.channel, registry, "chunkd.bulk-export", json.dumps(params),
                           reader=engine.reader)
        say(f"submitted chunkd.bulk-export as instance {res.instance_id}")
        row = await wait_for(engine.store, res.instance_id, timeout=600)
        elapsed = time.monotonic() - started
        node.stop()
    if row["status"] == "COMPLETED":
        code = 0
        text = (out_dir / "manifest.json").read_text()
        manifest = json.loads(text)
        print(text)
        total = sum(o["count"] for o in manifest["output"])
        say(f"\nexported {total:,} resources into {len(manifest['output'])} NDJSON files under {out_dir}")
        say(f"manifest: {out_dir / 'manifest.json'}")
        say(f"throughput: {total / elapsed:,.0f} resources/s ({_completed_chunks():,.0f} step runs, "
            f"submit to COMPLETED in {elapsed:.1f}s)")
        say("metrics: run `chunkd run` and scrape http://127.0.0.1:8080/metrics "
            "(e.g. chunkd_chunks_completed_total, chunkd_claim_to_complete_seconds)")
    else:
        say(f"export ended {row['status']}: {row['error_message']}")
    return code


def _demo_config(cfg: Config) -> Config:
    import msgspec
    # a free port: the demo must not fail because something already listens on 8080
    # the demo exports its own table: on the allow-list whatever CHUNKD_EXPORT_TABLES says
    return msgspec.structs.replace(cfg, http_addr=("127.0.0.1", 0) if cfg.http_addr else None,
                                   maintenance_interval=min(cfg.maintenance_interval, 0.2),
                                   export_tables=(*cfg.export_tables, "public.demo_resource"))


def _completed_chunks() -> float:
    return sum(s.value for m in REGISTRY.collect() if m.name == "chunkd_chunks_completed"
               for s in m.samples if s.name.endswith("_total"))


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def wait_for(store: Any, instance_id: int, *, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    tty = sys.stderr.isatty()
    last = ""
    while True:
        row = await store.get_instance(instance_id)
        line = f"{progress_bar(row['progress'])} {row['status']:<11}"
        if tty:
            print(f"\r{line}", end="", file=sys.stderr, flush=True)
        elif line != last:
            print(line, file=sys.stderr, flush=True)
        last = line
        if row["status"] in TERMINAL:
            if tty:
                print(file=sys.stderr)
            return row
        if time.monotonic() > deadline:
            raise RuntimeError(f"instance {instance_id} still {row['status']} after {timeout}s")
        await anyio.sleep(0.2)
