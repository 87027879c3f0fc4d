"""`chunkd demo`: 100,000 FHIR-like resources exported to NDJSON with chunkd.bulk-export,
a daemon and a submit in one process, with a live progress bar.

On a terminal the first screen is for a person: a bar redrawn in place, no JSON log lines
(unless CHUNKD_LOG_LEVEL/CHUNKD_LOG_FORMAT ask for them), then a short table of files per
resource type, the summary and where the manifest is. Piped (stderr not a terminal), stdout
is the manifest JSON and stderr holds only log-shaped lines (JSON by default): the progress
every few seconds and the summary as records of their own, never a terminal bar."""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import anyio
from prometheus_client import REGISTRY

from actors.instances import submit
from actors.registry import Registry
from daemon.cli.render import TERMINAL, progress_bar, table
from daemon.wiring.config import Config
from daemon.wiring.logs import configure, output_logger
from daemon.wiring.node import Node
from daemon.cli.demo_data import TABLE, seed_demo_resources

PIPED_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal


def quiet_logs_on_tty() -> None:
    """On a terminal the bar and the summary are the output: log only errors, as text, unless
    CHUNKD_LOG_LEVEL or CHUNKD_LOG_FORMAT ask for more."""
    if sys.stderr.isatty() and not ({"CHUNKD_LOG_LEVEL", "CHUNKD_LOG_FORMAT"} & set(os.environ)):
        configure("error", "console")


async def run_demo(cfg: Config, registry: Registry, dsn: str, rows: int) -> int:
    cfg = _demo_config(cfg)
    quiet_logs_on_tty()
    out = Out(cfg.log_format)
    say = out.say
    node = Node(cfg, registry, dsn)
    out_dir = Path(cfg.export_dir).resolve() / "demo"
    # a second run must not show the first run's files: the folder is the demo's own
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    code = 1
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: node.run(handle_signals=True))
        await node.ready.wait()
        engine = node.engine
        assert engine is not None
        say(f"chunkd demo: database {'CHUNKD_DATABASE_URL' if cfg.database_url else 'embedded Postgres in ' + str(Path(cfg.home).resolve() / 'pgdata')}")
        t0 = time.monotonic()
        await seed_demo_resources(engine.store.pool, rows)
        say(f"created {rows:,} FHIR-like resources (Patient, Observation) as JSONB in table {TABLE} "
            f"({time.monotonic() - t0:.1f}s)")
        params = {"table": TABLE, "output": "demo", "type_column": "resource_type",
                  "column": "resource", "chunk_size": 1000}
        started = time.monotonic()
        res = await submit(engine.store, engine.channel, registry, "chunkd.bulk-export", json.dumps(params),
                           reader=engine.reader)
        say(f"submitted chunkd.bulk-export as instance {res.instance_id}")
        row = await wait_for(engine.store, res.instance_id, out, timeout=600)
        elapsed = time.monotonic() - started
        node.stop()
    if row["status"] == "COMPLETED":
        code = 0
        text = (out_dir / "manifest.json").read_text()
        manifest = json.loads(text)
        if not sys.stdout.isatty():
            print(text)  # piped: the manifest is the machine-readable result
        total = sum(o["count"] for o in manifest["output"])
        out.files(manifest["output"])
        say(f"exported {total:,} resources into {len(manifest['output'])} NDJSON files under {out_dir}")
        say(f"manifest: {out_dir / 'manifest.json'}")
        say(f"throughput: {total / elapsed:,.0f} resources/s ({_completed_chunks():,.0f} step runs, "
            f"submit to COMPLETED in {elapsed:.1f}s)")
        say("metrics: run `chunkd run` and scrape http://127.0.0.1:8080/metrics "
            "(e.g. chunkd_chunks_completed_total, chunkd_claim_to_complete_seconds)")
    else:
        say(f"export ended {row['status']}: {row['error_message']}")
    return code


def files_table(outputs: list[dict[str, Any]]) -> str:
    """One row per resource type: how many files, how many resources."""
    files: dict[str, int] = defaultdict(int)
    count: dict[str, int] = defaultdict(int)
    for o in outputs:
        files[o["type"]] += 1
        count[o["type"]] += o["count"]
    return table([{"type": t, "files": f"{files[t]:,}", "resources": f"{count[t]:,}"} for t in sorted(files)],
                 ["type", "files", "resources"])


def _demo_config(cfg: Config) -> Config:
    import msgspec
    # a free port: the demo must not fail because something already listens on 8080
    # the demo exports its own table: on the allow-list whatever CHUNKD_EXPORT_TABLES says
    return msgspec.structs.replace(cfg, http_addr=("127.0.0.1", 0) if cfg.http_addr else None,
                                   maintenance_interval=min(cfg.maintenance_interval, 0.2),
                                   export_tables=(*cfg.export_tables, f"public.{TABLE}"))


def _completed_chunks() -> float:
    return sum(s.value for m in REGISTRY.collect() if m.name == "chunkd_chunks_completed"
               for s in m.samples if s.name.endswith("_total"))


class Out:
    """Where the demo's words go: text for a person on a terminal, log-shaped records when
    stderr is piped (the log's format, unfiltered: they are the command's output)."""

    def __init__(self, log_format: str) -> None:
        self.tty = sys.stderr.isatty()
        self.log = None if self.tty else output_logger(log_format).bind(command="demo")

    def say(self, text: str) -> None:
        if self.log is None:
            print(text, file=sys.stderr, flush=True)
        elif text.strip():
            self.log.info(text.strip())

    def files(self, outputs: list[dict[str, Any]]) -> None:
        if self.log is None:
            self.say("\n" + files_table(outputs) + "\n")
            return
        per_type: dict[str, int] = defaultdict(int)
        for o in outputs:
            per_type[o["type"]] += o["count"]
        self.log.info("files written", files=len(outputs), resources_per_type=dict(sorted(per_type.items())))

    def progress(self, row: dict[str, Any], final: bool) -> None:
        eta = row.get("eta_seconds") if row["status"] not in TERMINAL else None
        if self.log is not None:
            self.log.info("progress", instance_id=row["id"], status=row["status"],
                          progress_percent=round(row["progress"] * 100, 1),
                          eta_seconds=None if eta is None else round(eta))
            return
        line = f"{progress_bar(row['progress'])} {row['status']:<11}" + (
            f" eta {eta:4.0f}s" if eta is not None else " " * 9)
        print(f"\r{line}", end="\n" if final else "", file=sys.stderr, flush=True)  # redrawn in place


async def wait_for(store: Any, instance_id: int, out: Out, *, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    printed_at = 0.0
    while True:
        row = await store.get_instance(instance_id)
        now = time.monotonic()
        final = row["status"] in TERMINAL
        if out.tty or final or now - printed_at >= PIPED_EVERY:
            out.progress(row, final)
            printed_at = now
        if final:
            return row
        if time.monotonic() > deadline:
            raise RuntimeError(f"instance {instance_id} still {row['status']} after {timeout}s")
        await anyio.sleep(0.2)
