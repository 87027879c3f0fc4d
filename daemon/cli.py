"""`chunkd` command line."""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import anyio
import asyncpg

from actors.runtime import SupervisorGaveUp
from storage.states import C, INSTANCE_TERMINAL

from . import config as config_mod
from .config import Config, ConfigError
from .embedded import EmbeddedPostgresError, start_embedded
from .http import HttpBindError
from .logs import configure
from .registry import Registry, UnknownJobError, build_registry
from .sdk import JobDefinitionError
from .submit import SubmitError


class CliError(Exception):
    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _fail(message: str, code: int) -> NoReturn:
    print(f"chunkd: {message}", file=sys.stderr)
    raise SystemExit(code)


def resolve_dsn(cfg: Config) -> str:
    return cfg.database_url or start_embedded(cfg.home)


def load_registry(cfg: Config) -> Registry:
    return build_registry(cfg.jobs)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chunkd", description="Batch jobs in chained steps, work chunks in Postgres.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the daemon")
    sub.add_parser("migrate", help="apply database migrations and exit")
    s = sub.add_parser("submit", help="submit a job instance")
    s.add_argument("job")
    s.add_argument("--params", default="{}", help="job parameters as JSON (default {})")
    s.add_argument("--version", type=int, default=None, help="job version (default: the latest)")
    s.add_argument("--idempotency-key", default=None)
    s.add_argument("--wait", action="store_true", help="wait until the instance finishes; exit 1 unless COMPLETED")
    s.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")
    st = sub.add_parser("status", help="show an instance")
    st.add_argument("instance_id", type=int)
    c = sub.add_parser("cancel", help="cancel an instance")
    c.add_argument("instance_id", type=int)
    sub.add_parser("jobs", help="list the job definitions this daemon would load")
    d = sub.add_parser("demo", help="run the built-in demo job end to end")
    d.add_argument("--chunks", type=int, default=20_000)
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        cfg = config_mod.load()
    except ConfigError as e:
        _fail(str(e), 2)
    configure(cfg.log_level, cfg.log_format)
    try:
        registry = load_registry(cfg)
    except JobDefinitionError as e:
        _fail(f"invalid CHUNKD_JOBS: {e}", 2)
    handler = _COMMANDS[args.command]
    try:
        try:
            code = anyio.run(handler, cfg, registry, args)
        except BaseExceptionGroup as eg:
            raise _first_leaf(eg) from None
    except SupervisorGaveUp as e:
        _fail(str(e), 1)
    except (SubmitError, UnknownJobError) as e:
        _fail(f"error: {e}", 2)
    except CliError as e:
        _fail(str(e), e.code)
    except HttpBindError as e:
        _fail(str(e), 2)
    except EmbeddedPostgresError as e:
        _fail(str(e), 1)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        _fail(f"cannot use the database: {type(e).__name__}: {e}", 1)
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code)


def _first_leaf(eg: BaseExceptionGroup) -> BaseException:
    """Task groups wrap errors; the user wants the one that happened."""
    exc: BaseException = eg
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def _with_store(cfg: Config, fn: Callable[..., Awaitable[int]]) -> int:
    from daemon.node import open_store
    dsn = resolve_dsn(cfg)
    store = await open_store(cfg, dsn)
    try:
        return await fn(store, dsn)
    finally:
        await store.close()


async def cmd_run(cfg: Config, registry: Registry, args: argparse.Namespace) -> int:
    from daemon.node import Node
    await Node(cfg, registry, resolve_dsn(cfg)).run()
    return 0


async def cmd_migrate(cfg: Config, registry: Registry, args: argparse.Namespace) -> int:
    async def go(store: Any, dsn: str) -> int:
        print(json.dumps({"migrated": True}))
        return 0
    return await _with_store(cfg, go)


async def cmd_submit(cfg: Config, registry: Registry, args: argparse.Namespace) -> int:
    from channels.postgres import PostgresChannel
    from .submit import submit, validate
    validate(registry, args.job, args.params, args.version)  # before touching the database

    async def go(store: Any, dsn: str) -> int:
        channel = PostgresChannel(dsn, cfg.partitions)
        try:
            res = await submit(store, channel, registry, args.job, args.params, version=args.version,
                               idempotency_key=args.idempotency_key)
        finally:
            await channel.close()
        print(json.dumps({"instance_id": res.instance_id, "created": res.created,
                          "job": res.job, "version": res.version}), flush=True)
        if not args.wait:
            return 0
        row = await wait_for(store, res.instance_id, timeout=args.timeout, bar=sys.stderr.isatty())
        print(json.dumps(instance_summary(row)), flush=True)
        return 0 if row["status"] == "COMPLETED" else 1
    return await _with_store(cfg, go)


async def cmd_status(cfg: Config, registry: Registry, args: argparse.Namespace) -> int:
    async def go(store: Any, dsn: str) -> int:
        row = await store.get_instance(args.instance_id)
        if row is None:
            raise CliError(f"no instance {args.instance_id}", 1)
        out = instance_summary(row)
        out["chunks"] = [{"step": s, "state": C(st).name, "count": n}
                         for s, st, n in await store.chunk_counts(args.instance_id)]
        out["warnings"] = await store.warnings(args.instance_id)
        print(json.dumps(out, indent=2))
        return 0
    return await _with_store(cfg, go)


async def cmd_cancel(cfg: Config, registry: Registry, args: argparse.Namespace) -> int:
    async def go(store: Any, dsn: str) -> int:
        ok = await store.cancel_instance(args.instance_id)
        row = await store.get_instance(args.instance_id)
        if row is None:
            raise CliError(f"no instance {args.instance_id}", 1)
        print(json.dumps({"instance_id": args.instance_id, "cancelled": ok, "status": row["status"]}))
        return 0 if ok else 1
    return await _with_store(cfg, go)


async def cmd_jobs(cfg: Config, registry: Registry, args: argparse.Namespace) -> int:
    for job in registry.jobs():
        print(json.dumps({"name": job.name, "version": job.version, "gated": job.gated,
                          "steps": [{"name": s.name, "kind": s.kind.value,
                                     "consumes": s.consumes.__name__ if s.consumes else None,
                                     "emits": s.emits.__name__ if s.emits else None} for s in job.steps]}))
    return 0


async def cmd_demo(cfg: Config, registry: Registry, args: argparse.Namespace) -> int:
    from .demo import run_demo
    return await run_demo(cfg, registry, resolve_dsn(cfg), args.chunks)


def instance_summary(row: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "job_name", "job_version", "status", "progress", "chunks_per_second", "eta_seconds",
            "error_message", "error_count", "created_at", "started_at", "finished_at")
    out = {k: (row[k].isoformat() if hasattr(row[k], "isoformat") else row[k]) for k in keep}
    out["params"] = json.loads(row["params"])
    out["report"] = json.loads(row["report"]) if row["report"] is not None else None
    return out


def progress_bar(fraction: float, width: int = 30) -> str:
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "." * (width - filled) + f"] {fraction * 100:5.1f}%"


async def wait_for(store: Any, instance_id: int, *, timeout: float | None, bar: bool) -> dict[str, Any]:
    deadline = None if timeout is None else time.monotonic() + timeout
    terminal = {s.value for s in INSTANCE_TERMINAL}
    while True:
        row = await store.get_instance(instance_id)
        if row is None:
            raise CliError(f"no instance {instance_id}", 1)
        if bar:
            print(f"\r{progress_bar(row['progress'])} {row['status']:<11}", end="", file=sys.stderr, flush=True)
        if row["status"] in terminal:
            if bar:
                print(file=sys.stderr)
            return row
        if deadline is not None and time.monotonic() > deadline:
            raise CliError(f"instance {instance_id} still {row['status']} after {timeout}s", 1)
        await anyio.sleep(0.25)


_COMMANDS: dict[str, Callable[[Config, Registry, argparse.Namespace], Awaitable[int]]] = {
    "run": cmd_run, "migrate": cmd_migrate, "submit": cmd_submit, "status": cmd_status,
    "cancel": cmd_cancel, "jobs": cmd_jobs, "demo": cmd_demo,
}
