"""`chunkd` command line. `run`, `migrate` and `demo` act locally; the rest talk to a
running daemon through its HTTP API (CHUNKD_API_URL, CHUNKD_API_TOKEN)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

import anyio
import asyncpg

from actors.job import JobDefinitionError
from actors.registry import Registry
from actors.scheduling import check_declared
from actors.supervisor import SupervisorGaveUp
from daemon.cli.client import ApiCallError, ApiClient, ApiUnreachable
from daemon.cli.render import TERMINAL, progress_bar, show_instance, table
from daemon.http.server import HttpBindError
from daemon.jobs import load_registry
from daemon.wiring import config as config_mod
from daemon.wiring.config import Config, ConfigError
from daemon.wiring.embedded import EmbeddedPostgresError, resolve_dsn
from daemon.wiring.logs import configure
from daemon.wiring.loop import event_loop_factory
from daemon.wiring.startup import DatabaseRefused


class CliError(Exception):
    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _fail(message: str, code: int) -> NoReturn:
    print(f"chunkd: {message}", file=sys.stderr)
    raise SystemExit(code)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("chunkd")
    except PackageNotFoundError:
        return "unknown (not installed)"



# Long but flat on purpose: every command and flag of the CLI, declared in one place.
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chunkd", description="Batch jobs in chained steps, work chunks in Postgres.")
    p.add_argument("--version", action="version", version=f"chunkd {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    app_dir_help = ("folder to import CHUNKD_JOBS modules from (default: the working directory, as uvicorn "
                    "and celery do)")
    sub.add_parser("run", help="run the daemon").add_argument("--app-dir", default=None, help=app_dir_help)
    sub.add_parser("migrate", help="apply database migrations and exit").add_argument("--app-dir", default=None,
                                                                                      help=app_dir_help)
    sub.add_parser("bench", help="the throughput harness (chunkd bench --help)", add_help=False)
    d = sub.add_parser("demo", help="export 100,000 FHIR-like resources with chunkd.bulk-export "
                                     "(local, embedded Postgres by default)")
    d.add_argument("--rows", type=int, default=100_000)
    d.add_argument("--app-dir", default=None, help=app_dir_help)

    def remote(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help + " (via the API)")
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        return sp
    jb = remote("jobs", "list job definitions, or show one job's contract (parameters, steps)")
    jb.add_argument("job", nargs="?", help="a job name: its parameters and steps")
    jb.add_argument("--version", type=int, default=None, help="with JOB: this version (default: the latest)")
    ls = remote("instances", "list instances, newest first")
    ls.add_argument("--job")
    ls.add_argument("--status", action="append", default=[])
    ls.add_argument("--start", type=int, default=0)
    ls.add_argument("--count", type=int, default=50)
    sh = remote("show", "show one instance")
    sh.add_argument("instance_id", type=int)
    sh.add_argument("--watch", action="store_true", help="redraw every second until the instance finishes")
    sh.add_argument("--interval", type=float, default=1.0, help="with --watch: seconds between redraws")
    s = remote("submit", "submit a job instance")
    s.add_argument("job")
    s.add_argument("--params", default="{}", help="parameters as JSON, or @file")
    s.add_argument("--version", type=int, default=None)
    s.add_argument("--idempotency-key", default=None)
    s.add_argument("--wait", action="store_true", help="wait for the end; exit 1 unless COMPLETED")
    s.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")
    sb = remote("submit-batch", "submit many instances in one request per 1,000 (POST /api/v1/instances:batch)")
    sb.add_argument("file", help="JSON Lines (one submit body per line) or a JSON array; - for stdin")
    for name, what in (("cancel", "cancel an instance"), ("restart", "restart a FAILED or CANCELLED instance")):
        remote(name, what).add_argument("instance_id", type=int)
    st = remote("stop", "stop an instance: without --force like cancel (running chunks finish); with --force "
                        "running chunks are cancelled too (for one stuck after a crash)")
    st.add_argument("instance_id", type=int)
    st.add_argument("--force", action="store_true")
    sc = remote("schedules", "list or manage clustered schedules")
    scs = sc.add_subparsers(dest="action", required=False)
    add = scs.add_parser("add", help="create a schedule")
    add.add_argument("id")
    add.add_argument("job")
    add.add_argument("--params", default="{}", help="parameters as JSON, or @file")
    group = add.add_mutually_exclusive_group(required=True)
    group.add_argument("--cron", help="Unix cron (5 fields, minute first), Quartz (6-7 fields, seconds first: "
                                      "'0 0 1 * * ?') or Spring (6 fields)")
    group.add_argument("--every", type=float, help="seconds")
    add.add_argument("--dialect", choices=("quartz", "spring", "unix"), default=None,
                     help="the cron's dialect; needed where Quartz (1=SUN) and Spring (1=MON) disagree")
    add.add_argument("--timezone", default="UTC")
    add.add_argument("--missed", choices=("skip", "run_once"), default="skip")
    add.add_argument("--version", type=int)
    add.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    for action in ("delete", "pause", "resume", "show"):
        ap = scs.add_parser(action)
        ap.add_argument("id")
        ap.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    remote("cluster", "the daemons seen in the last minute and which one is the maintenance leader")
    ch = remote("chunks", "list an instance's chunks")
    ch.add_argument("instance_id", type=int)
    ch.add_argument("--step", type=int)
    ch.add_argument("--status", action="append", default=[])
    ch.add_argument("--data", action="store_true")
    ch.add_argument("--errors", action="store_true", help="only chunks with an error, each with its traceback")
    ch.add_argument("--start", type=int, default=0)
    ch.add_argument("--count", type=int, default=100)
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        # The harness is a program on top of the daemon (it starts nodes, submits over HTTP),
        # not a part of it: hand over the process rather than import it, so no arrow runs
        # from daemon/ up to benchmarks/ (tests/unit/test_layout.py).
        os.execv(sys.executable, [sys.executable, "-m", "benchmarks", *argv[1:]])
    args = _parser().parse_args(argv)
    try:
        cfg = config_mod.load()
    except ConfigError as e:
        _fail(str(e), 2)
    configure(cfg.log_level, cfg.log_format)
    if args.command in _LOCAL:
        raise SystemExit(_run_local(cfg, args))
    client = ApiClient(cfg.api_url, cfg.api_token)
    try:
        code = _REMOTE[args.command](client, args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at exit
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except ApiCallError as e:
        # input problems (bad parameters, unknown job or instance) exit 2; refusals 1
        _fail(f"{e.message} (HTTP {e.status} {e.code})" + _detail(e.details) + _auth_hint(e.status, cfg),
              2 if e.status in (400, 404, 413, 422) else 1)
    except BrokenPipeError:
        _quiet_broken_pipe()
    except ApiUnreachable as e:
        _fail(str(e), 1)
    except CliError as e:
        _fail(str(e), e.code)
    raise SystemExit(code)


def _auth_hint(status: int, cfg: Config) -> str:
    """Which variable holds the token, and what to put there."""
    if status == 401 and not cfg.api_token:
        return ("; set CHUNKD_API_TOKEN to one of the daemon's tokens (its CHUNKD_API_TOKENS_FILE or "
                "CHUNKD_API_TOKENS)")
    if status == 401:
        return "; the token in CHUNKD_API_TOKEN is not one of the daemon's (CHUNKD_API_TOKENS_FILE/CHUNKD_API_TOKENS)"
    if status == 403:
        return "; CHUNKD_API_TOKEN holds a view token: use a manage token for this"
    return ""


def _quiet_broken_pipe() -> NoReturn:
    """`chunkd show 3 | head -2`: the reader left; no traceback, no message."""
    import os
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
    raise SystemExit(0)


def _detail(details: Any) -> str:
    return f" at {details['path']}" if isinstance(details, dict) and details.get("path") else ""


# ---------------------------------------------------------------- local commands
def _run_local(cfg: Config, args: argparse.Namespace) -> int:
    try:
        registry = load_registry(cfg.jobs, app_dir=getattr(args, "app_dir", None))
        if args.command == "run":
            check_declared(registry)
    except JobDefinitionError as e:
        _fail(f"invalid CHUNKD_JOBS: {e}", 2)
    try:
        try:
            code = anyio.run(_LOCAL[args.command], cfg, registry, args,
                             backend_options={"loop_factory": event_loop_factory()})
            if args.command == "run":
                from daemon.wiring.node import leave_lingering_step_threads
                leave_lingering_step_threads()
            return code
        except BaseExceptionGroup as eg:
            raise _first_leaf(eg) from None
    except SupervisorGaveUp as e:
        _fail(str(e), 1)
    except (ConfigError, HttpBindError, DatabaseRefused) as e:
        _fail(str(e), 2)
    except CliError as e:
        _fail(str(e), e.code)
    except EmbeddedPostgresError as e:
        _fail(str(e), 1)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        _fail(f"cannot use the database: {type(e).__name__}: {e}", 1)
    except KeyboardInterrupt:
        return 130


def _first_leaf(eg: BaseExceptionGroup) -> BaseException:
    """Task groups wrap errors; the user wants the one that happened."""
    exc: BaseException = eg
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def cmd_run(cfg: Config, registry: Registry, args: argparse.Namespace) -> int:
    from daemon.wiring.node import Node
    await Node(cfg, registry, resolve_dsn(cfg)).run()
    return 0


async def cmd_migrate(cfg: Config, registry: Registry, args: argparse.Namespace) -> int:
    from daemon.wiring.node import open_store
    store = await open_store(cfg, resolve_dsn(cfg))
    await store.close()
    print(json.dumps({"migrated": True}))
    return 0


async def cmd_demo(cfg: Config, registry: Registry, args: argparse.Namespace) -> int:
    from daemon.cli.demo import quiet_logs_on_tty, run_demo
    if not 1 <= args.rows <= 10_000_000:
        raise CliError("--rows must be between 1 and 10000000")
    quiet_logs_on_tty()  # before the embedded Postgres starts and logs
    return await run_demo(cfg, registry, resolve_dsn(cfg), args.rows)


_LOCAL: dict[str, Callable[[Config, Registry, argparse.Namespace], Awaitable[int]]] = {
    "run": cmd_run, "migrate": cmd_migrate, "demo": cmd_demo,
}



def cmd_jobs(client: ApiClient, args: argparse.Namespace) -> int:
    jobs = client.call("GET", "/api/v1/jobs")["jobs"]
    if args.job is not None:
        return _show_job(jobs, args.job, args.version, args.json)
    if args.json:
        print(json.dumps(jobs, indent=2))
    else:
        print(table([{**j, "steps": " -> ".join(s["name"] for s in j["steps"])} for j in jobs],
                    ["name", "version", "gated", "steps"]))
    return 0


def _show_job(jobs: list[dict[str, Any]], name: str, version: int | None, as_json: bool) -> int:
    """One job's contract: what to submit (parameters) and what runs (steps)."""
    from daemon.http.contract import describe_type
    mine = [j for j in jobs if j["name"] == name and (version is None or j["version"] == version)]
    if not mine:
        known = ", ".join(sorted({j["name"] for j in jobs}))
        raise CliError(f"unknown job {name!r}" + (f" version {version}" if version else "") + f"; known jobs: {known}")
    job = max(mine, key=lambda j: j["version"])
    if as_json:
        print(json.dumps(job, indent=2))
        return 0
    schema = job.get("parameters_schema") or {}
    required = set(schema.get("required", []))
    print(f"{job['name']} version {job['version']}" + (" (latest)" if job["latest"] else ""))
    if job["description"]:
        print(job["description"])
    print(f"gated: {'yes' if job['gated'] else 'no'}; concurrency: {job['concurrency'] or 'unlimited'}")
    print(f"\nparameters ({job.get('parameters_type') or 'object'}"
          + ("; unknown fields refused" if schema.get("additionalProperties") is False else "") + "):")
    props = schema.get("properties", {})
    rows = [{"name": k, "type": describe_type(v), "default": "(required)" if k in required else json.dumps(v.get("default")),
             } for k, v in props.items()]
    print(table(rows, ["name", "type", "default"]) if rows else "  (none)")
    print("\nsteps:")
    print(table([{**st, "consumes": st["consumes"] or "-", "emits": st["emits"] or "-",
                  "transactional": "yes" if st["transactional"] else "no"} for st in job["steps"]],
                ["index", "name", "kind", "consumes", "emits", "max_attempts", "transactional", "weight"]))
    return 0


def cmd_instances(client: ApiClient, args: argparse.Namespace) -> int:
    page = client.call("GET", "/api/v1/instances", query={"job": args.job, "status": args.status,
                                                          "start": args.start, "count": args.count})
    if args.json:
        print(json.dumps(page, indent=2))
    else:
        print(table([{**i, "progress": f"{i['progress'] * 100:.1f}%"} for i in page["instances"]],
                    ["id", "job", "version", "status", "progress", "created_at", "error_message"]))
        print(f"{page['count']} of {page['total']}")
    return 0


def cmd_show(client: ApiClient, args: argparse.Namespace) -> int:
    inst = client.call("GET", f"/api/v1/instances/{args.instance_id}")
    if not args.watch:
        show_instance(inst, args.json)
        return 0
    if not 0.1 <= args.interval <= 3600:
        raise CliError("--interval must be between 0.1 and 3600 seconds")
    tty = sys.stdout.isatty()
    while True:
        if tty:
            print("\x1b[H\x1b[2J", end="")  # redraw in place
        show_instance(inst, args.json)
        sys.stdout.flush()
        if inst["status"] in TERMINAL:
            return 0 if inst["status"] == "COMPLETED" else 1
        time.sleep(args.interval)
        inst = client.call("GET", f"/api/v1/instances/{args.instance_id}")
        if not tty:
            print()


def _params(raw: str) -> Any:
    text = raw
    if raw.startswith("@"):
        try:
            text = Path(raw[1:]).read_text()
        except OSError as e:
            raise CliError(f"cannot read parameters file {raw[1:]!r}: {e.strerror}") from None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise CliError(f"--params is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise CliError("--params must be a JSON object")
    return value


def cmd_submit(client: ApiClient, args: argparse.Namespace) -> int:
    body = {"job": args.job, "parameters": _params(args.params), "version": args.version,
            "idempotency_key": args.idempotency_key}
    status, inst = client.call_status("POST", "/api/v1/instances", body=body)
    created = status == 201  # 200: the idempotency key's existing instance, nothing new
    said = f"submitted instance {inst['id']}" if created else f"already submitted: instance {inst['id']}"
    if not args.wait:
        print(json.dumps({"instance_id": inst["id"], "created": created, "status": inst["status"], "job": inst["job"],
                          "version": inst["version"]}) if args.json else said)
        return 0
    if not created:
        print(f"chunkd: {said}", file=sys.stderr)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    bar = sys.stderr.isatty()
    while inst["status"] not in TERMINAL:
        if deadline is not None and time.monotonic() > deadline:
            raise CliError(f"instance {inst['id']} still {inst['status']} after {args.timeout}s", 1)
        if bar:
            print(f"\r{progress_bar(inst['progress'])} {inst['status']:<11}", end="", file=sys.stderr, flush=True)
        time.sleep(0.25)
        inst = client.call("GET", f"/api/v1/instances/{inst['id']}")
    if bar:
        print(f"\r{progress_bar(inst['progress'])} {inst['status']:<11}", file=sys.stderr)
    show_instance(inst, args.json)
    return 0 if inst["status"] == "COMPLETED" else 1


def _post(action: str, query: dict[str, Any] | None = None) -> Callable[[ApiClient, argparse.Namespace], int]:
    def run(client: ApiClient, args: argparse.Namespace) -> int:
        inst = client.call("POST", f"/api/v1/instances/{args.instance_id}/{action}", query=query)
        show_instance(inst, args.json)
        return 0
    return run


def _stop(client: ApiClient, args: argparse.Namespace) -> int:
    if args.force:
        return _post("stop", {"force": "true"})(client, args)
    # Smile's stop?force=false: a graceful stop is what cancel does; say so, then do it
    print("chunkd: stop without --force cancels: no new chunk starts, running chunks finish "
          "(--force cancels running chunks too)", file=sys.stderr)
    return _post("cancel")(client, args)


def cmd_chunks(client: ApiClient, args: argparse.Namespace) -> int:
    page = client.call("GET", f"/api/v1/instances/{args.instance_id}/chunks", query={
        "step": args.step, "status": args.status, "data": "true" if args.data else None,
        "errors": "true" if args.errors else None, "start": args.start, "count": args.count})
    if args.json:
        print(json.dumps(page, indent=2))
    else:
        cols = ["id", "step_name", "status", "attempt", "failures", "error_attempt", "error_message"] + (
            ["data"] if args.data else [])
        print(table(page["chunks"], cols))
        print(f"{page['count']} of {page['total']}")
        if args.errors:
            for c in page["chunks"]:
                if c.get("error_trace"):
                    print(f"\nchunk {c['id']} ({c['step_name']}, attempt {c.get('error_attempt') or c['attempt']}):\n"
                          f"{c['error_trace'].rstrip()}")
    return 0


def cmd_schedules(client: ApiClient, args: argparse.Namespace) -> int:
    from urllib.parse import quote
    action = args.action or "list"
    if action == "list":
        rows = client.call("GET", "/api/v1/schedules")["schedules"]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(table([{**r, "when": r["cron"] or f"every {r['every_seconds']:g}s", "dialect": r["dialect"] or "-",
                          "orphaned": "yes" if r.get("orphaned_at") else "",
                          # an orphaned schedule never fires: no next time to show
                          "next_fire_times": "" if r.get("orphaned_at") else ", ".join(r["next_fire_times"])}
                         for r in rows],
                        ["id", "job", "source", "when", "dialect", "timezone", "paused", "orphaned", "next_fire_times",
                         "last_fire_at", "last_instance_id"]))
        return 0
    if action == "add":
        body = {"id": args.id, "job": args.job, "parameters": _params(args.params), "cron": args.cron,
                "every_seconds": args.every, "timezone": args.timezone, "missed": args.missed,
                "version": args.version, "dialect": args.dialect}
        row = client.call("POST", "/api/v1/schedules", body=body)
    elif action == "show":
        row = client.call("GET", f"/api/v1/schedules/{quote(args.id, safe='')}")
    elif action == "delete":
        row = client.call("DELETE", f"/api/v1/schedules/{quote(args.id, safe='')}")
    else:
        row = client.call("POST", f"/api/v1/schedules/{quote(args.id, safe='')}/{action}")
    if args.json:
        print(json.dumps(row, indent=2))
    else:
        print(table([{"field": k, "value": v if isinstance(v, str) else json.dumps(v)} for k, v in row.items()],
                    ["field", "value"]))
    return 0


def cmd_cluster(client: ApiClient, args: argparse.Namespace) -> int:
    nodes = client.call("GET", "/api/v1/cluster")["nodes"]
    if args.json:
        print(json.dumps(nodes, indent=2))
        return 0
    print(table([{**n, "partitions": ",".join(map(str, n["partitions"])) or "-", "leader": "yes" if n["leader"] else "",
                  "seen": f"{n['seen_seconds_ago']:.0f}s ago"} for n in nodes],
                ["id", "name", "pid", "partitions", "in_flight", "leader", "started_at", "seen"]))
    leader = next((n for n in nodes if n["leader"]), None)
    print(f"leader: {leader['name']} (node {leader['id']})" if leader else
          "leader: none (no daemon holds the maintenance lead: gates, retries and completions wait; "
          "is CHUNKD_SCHEDULING=false on every daemon?)")
    return 0


_REMOTE: dict[str, Callable[[ApiClient, argparse.Namespace], int]] = {
    "schedules": cmd_schedules, "cluster": cmd_cluster,
    "jobs": cmd_jobs, "instances": cmd_instances, "show": cmd_show, "submit": cmd_submit,
    "cancel": _post("cancel"), "stop": lambda c, a: _stop(c, a), "restart": _post("restart"),
    "chunks": cmd_chunks,
    "submit-batch": lambda c, a: _submit_batch(c, a),
}


def _submit_batch(client: ApiClient, args: argparse.Namespace) -> int:
    from daemon.cli.bulk import cli_submit_batch
    return cli_submit_batch(client, args.file, args.json)
