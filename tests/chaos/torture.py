"""A seeded randomized torture test (issue 22, row 8): operator actions and faults in any
order against 2-3 real daemons on a real Postgres, then invariants.

One *run* = one seed. `random.Random(seed)` draws the cluster (daemons, partitions,
concurrency, claim batch) and a schedule of events spaced 0.2-3 s apart:

- operator actions, over the API or the CLI: submit (one of the 8 `tests.torture_jobs`
  jobs: async or plain-function steps, transactional or not, gated or not, reacting to
  `ctx.cancelled` by returning, raising or ignoring it), resubmit with the same
  idempotency key, cancel, force-stop, restart, stop-then-restart as soon as the instance
  reads CANCELLED, create/delete a schedule;
- faults: SIGKILL a daemon (respawned), SIGSTOP past the lease then SIGCONT, SIGTERM
  (respawned once it exits), pg_terminate_backend on every backend of the test database.

Actions aim at instances that are running (jobs of 500-3000 chunks, 5-60 ms steps, over a
few concurrent steps per daemon), so they land while work is in flight. Then *quiesce*:
every daemon resumed or respawned, schedules deleted, every CANCELLED/FAILED instance
restarted until all are COMPLETED (a generous deadline). Then the invariants:

1. a transactional chunk effect (`torture_effect`) at most once per (instance, input);
2. exactly once for every input of a COMPLETED transactional instance, and its
   transactional reduction (`torture_reduced`) exactly once (at most once for others);
3. a COMPLETED instance's report is what its parameters say (count, sum);
4. COMPLETED => every chunk of the instance COMPLETED;
5. no instance non-terminal without progress for more than `--stuck-seconds`; every
   instance COMPLETED once quiesced (restarts included);
6. no daemon dead: none exited on its own, all answer /healthz at the end; a SIGTERM ends
   its daemon within the grace plus a bound; the same idempotency key gives the same instance;
7. once every instance is COMPLETED, no daemon holds a chunk (`chunkd_chunks_in_flight` 0).

Run (prints each seed; on failure the findings and the command that replays the seed):

    .venv/bin/python -m tests.chaos.torture --seeds 1-50 --minutes 30

A replay draws the same cluster and the same schedule; what lands where still depends on
timing, so a seed that found a bug finds it most of the time, not always.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from storage.states import C
from tests.conftest import CHUNKD, LOCAL_DSN, ROOT, _with_db, daemon_env, free_port
from tests.integration.test_observability import get, samples
from tests.torture_jobs import JOBS, TABLES, expected_report

LEASE_SECONDS = 2.0
GRACE_SECONDS = 5.0
STOP_GRACE_SECONDS = 2.0  # "shortly after" a cancel returned, on a loaded machine
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")


@dataclass
class Settings:
    run_seconds: float = 15.0      # how long the schedule of actions and faults runs
    quiesce_seconds: float = 180.0  # then: until every instance is COMPLETED, at most this
    stuck_seconds: float = 45.0    # a non-terminal instance without progress this long is a finding
    max_instances: int = 8         # submits beyond this many live instances are skipped
    network: bool = True           # daemons reach Postgres through a Proxy: partitions and silenced connections
    silence_server_seconds: float = 10.0  # Postgres notices a silenced connection this late (0: never)


@dataclass
class Finding:
    invariant: str
    detail: str
    instance_id: int | None = None

    def __str__(self) -> str:
        where = f" instance {self.instance_id}" if self.instance_id is not None else ""
        return f"[{self.invariant}]{where}: {self.detail}"


@dataclass
class Result:
    seed: int
    seconds: float
    findings: list[Finding]
    actions: list[str]
    workdir: Path
    database: str

    @property
    def ok(self) -> bool:
        return not self.findings


# ------------------------------------------------------------------ the schedule, from the seed
ACTIONS = [  # (kind, weight)
    ("submit", 4), ("resubmit", 1), ("cancel", 2), ("force_stop", 2), ("stop_restart", 3), ("restart", 2),
    ("schedule_add", 0.5), ("schedule_delete", 0.5),
    ("sigkill", 1), ("sigstop", 1), ("sigterm", 1), ("pg_terminate", 1),
]


@dataclass
class Event:
    at: float           # seconds after the run starts
    kind: str
    pick: float         # which target: a fraction, resolved against what exists then
    via_cli: bool       # operator actions: the CLI instead of the API
    force: bool         # stop_restart: force-stop (else cancel)
    submit: dict[str, Any] = field(default_factory=dict)
    hold: float = 0.0   # sigstop, partition: how long; sigkill: the respawn delay


@dataclass
class Plan:
    daemons: int
    partitions: int
    concurrency: int
    claim_batch: int
    events: list[Event]
    adaptive: bool = False   # neither set: the daemons adapt both (actors/adaptive.py)


def draw_plan(seed: int, run_seconds: float) -> Plan:
    rng = random.Random(seed)
    kinds, weights = zip(*ACTIONS)
    plan = Plan(daemons=rng.choice((2, 2, 3)), partitions=rng.choice((2, 4)), concurrency=rng.choice((2, 4, 6)),
                claim_batch=rng.choice((10, 50, 100)), events=[])
    # Drawn from a generator of its own, so every seed's plan is otherwise what it always was.
    plan.adaptive = random.Random(f"{seed}:adaptive").random() < 0.5
    # A third of the seeds run many steps at once per daemon (so a stop catches hundreds
    # running, and a restart right after hands them back while their results are still on
    # their way): the few of the others never showed the in-flight drift invariant 7 checks.
    if random.Random(f"{seed}:wide").random() < 1 / 3:
        plan.concurrency = 64
    t = 0.3
    first = True
    while t < run_seconds:
        kind = "submit" if first else rng.choices(kinds, weights)[0]
        first = False
        job = rng.choice(sorted(JOBS))
        ev = Event(at=t, kind=kind, pick=rng.random(), via_cli=rng.random() < 0.25, force=rng.random() < 0.6,
                   submit={"job": job, "parameters": {
                       "chunks": rng.randint(500, 3000), "step_ms": rng.choice((5, 10, 20, 30, 50, 60)),
                       "on_cancel": rng.choice(("return", "raise", "ignore"))},
                       "idempotency_key": f"t{seed}-{len(plan.events)}" if rng.random() < 0.5 else None},
                   hold=rng.uniform(LEASE_SECONDS + 1, LEASE_SECONDS + 4) if kind == "sigstop" else rng.uniform(0, 2))
        plan.events.append(ev)
        t += rng.uniform(0.2, 3.0)
    # network faults from a stream of their own, so that they leave the rest of a seed's plan as it was
    net = random.Random(f"net-{seed}")
    for _ in range(net.choice((0, 1, 1, 2))):
        kind = net.choice(("partition", "silence"))
        plan.events.append(Event(at=net.uniform(1.0, max(1.5, run_seconds - 1)), kind=kind, pick=net.random(),
                                 via_cli=False, force=False, hold=net.uniform(LEASE_SECONDS + 1, 15)))
    plan.events.sort(key=lambda e: e.at)
    return plan


# ------------------------------------------------------------------ the network between a daemon and Postgres
class Proxy:
    """A TCP proxy between one daemon and Postgres that can go quiet the way networks do:
    no FIN, no RST, the bytes just stop. `partition(s)`: nothing flows on any connection,
    old or new, for s seconds, then everything flows again (TCP retransmits what waited).
    `silence()`: the connections open now never carry another byte (a NAT or firewall that
    forgot them, a failover behind a virtual IP), while new connections work. Postgres's side
    of a silenced connection is closed `server_notices` seconds later (as the server's TCP
    keepalive would, after hours by default): until then its transaction holds its locks.
    With `server_notices=0` it is never closed."""

    def __init__(self, host: str, port: int, server_notices: float) -> None:
        self.host, self.port_up, self.server_notices = host, port, server_notices
        self.port = 0
        self.server: asyncio.base_events.Server | None = None
        self.blackout_until = 0.0
        self.conns: set[_Conn] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(self.host, self.port_up)
        except OSError:
            writer.close()
            return
        conn = _Conn(writer, up_w)
        self.conns.add(conn)
        try:
            await asyncio.gather(self._pump(reader, up_w, conn), self._pump(up_r, writer, conn))
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the run is over, or one side closed
        finally:
            self.conns.discard(conn)
            conn.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, conn: "_Conn") -> None:
        while True:
            data = await src.read(65536)
            while conn.dead or time.monotonic() < self.blackout_until:
                await asyncio.sleep(0.05)  # held, never dropped: the peer sees silence
            if not data:
                conn.close()
                return
            dst.write(data)
            await dst.drain()

    def partition(self, seconds: float) -> None:
        self.blackout_until = time.monotonic() + seconds

    def heal(self) -> None:
        self.blackout_until = 0.0  # silenced connections stay silent: the daemon must drop them

    def silence(self) -> int:
        for c in self.conns:
            c.dead = True
            if self.server_notices:
                asyncio.get_running_loop().call_later(self.server_notices, c.close_server_side)
        return len(self.conns)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for c in list(self.conns):
            c.close()


class _Conn:
    def __init__(self, a: asyncio.StreamWriter, b: asyncio.StreamWriter) -> None:
        self.a, self.b, self.dead = a, b, False

    def close(self) -> None:
        for w in (self.a, self.b):
            try:
                w.close()
            except RuntimeError:  # the loop is closing
                pass

    def close_server_side(self) -> None:
        try:
            self.b.close()  # Postgres sees the connection end and rolls its transaction back
        except RuntimeError:
            pass


# ------------------------------------------------------------------ daemons
class Node:
    """One daemon slot: respawned under the same port after a kill or a SIGTERM."""

    def __init__(self, index: int, dsn: str, workdir: Path, env: dict[str, str]) -> None:
        self.index, self.dsn, self.workdir, self.extra = index, dsn, workdir, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.gen = 0
        self.proc: Any = None
        self.stopped = False      # SIGSTOPped by us
        self.expect_exit = False  # we killed or terminated it

    def start(self) -> None:
        import subprocess
        self.gen += 1
        env = daemon_env(self.dsn, CHUNKD_HTTP_ADDR=f"127.0.0.1:{self.port}", CHUNKD_NODE_ID=f"n{self.index}-{self.gen}",
                         **self.extra)
        log = open(self.workdir / f"daemon{self.index}.log", "ab")
        log.write(f"\n==== torture: start generation {self.gen} at {time.time():.3f}\n".encode())
        log.flush()
        self.proc = subprocess.Popen([CHUNKD, "run"], env=env, cwd=ROOT, stdout=log, stderr=log)
        log.close()
        self.expect_exit = False
        self.stopped = False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def usable(self) -> bool:
        return self.alive and not self.stopped and not self.expect_exit

    def signal(self, sig: int) -> None:
        if self.alive:
            self.proc.send_signal(sig)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if self.stopped:
                self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()


def metric(url: str, name: str) -> float | None:
    """An unlabelled metric's value from the daemon's /metrics; None if it cannot be read."""
    try:
        status, text = get(url + "/metrics")
    except OSError:   # not answering (being respawned, say)
        return None
    return samples(text).get((name, ())) if status == 200 else None


def http(method: str, url: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    """(status, decoded body); status 0 when the daemon could not be reached."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Accept": "application/json", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw[:200]
    except (OSError, ValueError) as e:
        return 0, repr(e)


# ------------------------------------------------------------------ one run
class Run:
    def __init__(self, seed: int, settings: Settings, admin_dsn: str, workdir: Path, log: Any) -> None:
        self.seed, self.settings, self.admin_dsn, self.workdir, self.say = seed, settings, admin_dsn, workdir, log
        self.plan = draw_plan(seed, settings.run_seconds)
        self.database = f"chunkd_torture_{seed}_{uuid.uuid4().hex[:8]}"
        self.dsn = _with_db(admin_dsn, self.database)
        self.nodes: list[Node] = []
        self.proxies: list[Proxy] = []
        self.findings: list[Finding] = []
        self.actions: list[str] = []
        self.keys: dict[str, tuple[dict[str, Any], int]] = {}  # idempotency key -> (body, instance id)
        self.schedules: list[str] = []
        self.cancel_failures: set[tuple[int, int]] = set()
        self.stopped_at: dict[int, Any] = {}   # instance -> when a cancel/force-stop returned, until a restart
        self.claimed_late: set[int] = set()
        self.t0 = time.monotonic()
        self.tasks: set[asyncio.Task[None]] = set()
        self.conn: asyncpg.Connection | None = None

    def note(self, text: str) -> None:
        line = f"{time.monotonic() - self.t0:7.2f}s {text}"
        self.actions.append(line)
        self.say(line)

    def find(self, invariant: str, detail: str, iid: int | None = None) -> None:
        f = Finding(invariant, detail, iid)
        self.findings.append(f)
        self.note(f"FINDING {f}")

    # -------------------------------------------------------------- setup / teardown
    async def setup(self) -> None:
        admin = await asyncpg.connect(self.admin_dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await admin.close()
        from storage.migrate import migrate
        self.conn = await asyncpg.connect(self.dsn)
        await migrate(self.conn)
        await self.conn.execute(TABLES)
        p = self.plan
        env = {"CHUNKD_JOBS": "tests.torture_jobs", "CHUNKD_LOG_LEVEL": "info",
               "CHUNKD_LEASE_SECONDS": str(LEASE_SECONDS), "CHUNKD_HEARTBEAT_SECONDS": "0.5",
               "CHUNKD_SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS), "CHUNKD_PARTITIONS": str(p.partitions)}
        if not p.adaptive:
            env |= {"CHUNKD_PARTITION_CONCURRENCY": str(p.concurrency), "CHUNKD_CLAIM_BATCH": str(p.claim_batch)}
        self.nodes = []
        for i in range(p.daemons):
            dsn = self.dsn
            if self.settings.network:
                parts = urlsplit(self.dsn)
                proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432, self.settings.silence_server_seconds)
                await proxy.start()
                self.proxies.append(proxy)
                user = parts.netloc.rpartition("@")[0]
                netloc = f"{user}@127.0.0.1:{proxy.port}" if user else f"127.0.0.1:{proxy.port}"
                dsn = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
            self.nodes.append(Node(i, dsn, self.workdir, env))
        for n in self.nodes:
            n.start()
        for n in self.nodes:
            await self.wait_ready(n, 60)
        self.t0 = time.monotonic()
        shape = ("claims and workers adapted" if p.adaptive else
                 f"{p.concurrency} steps, claim batch {p.claim_batch}")
        self.note(f"cluster: {p.daemons} daemons, {p.partitions} partitions, {shape}; "
                  f"{len(p.events)} events over {self.settings.run_seconds:.0f}s")

    async def teardown(self, keep: bool) -> None:
        for t in list(self.tasks):
            t.cancel()
        for n in self.nodes:
            n.cleanup()
        for proxy in self.proxies:
            proxy.close()
        if self.conn is not None:
            await self.conn.close()
        if not keep:
            admin = await asyncpg.connect(self.admin_dsn)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            finally:
                await admin.close()

    async def wait_ready(self, n: Node, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not n.alive:
                return False
            status, _ = await asyncio.to_thread(http, "GET", n.url + "/readyz", None, 2)
            if status == 200:
                return True
            await asyncio.sleep(0.1)
        return False

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -------------------------------------------------------------- the schedule
    async def execute(self) -> None:
        for ev in self.plan.events:
            delay = ev.at - (time.monotonic() - self.t0)
            if delay > 0:
                await asyncio.sleep(delay)
            self.watch_daemons()
            try:
                await self.watch_cancel_failures()
                await self.claimed_after_stop()
                await getattr(self, "do_" + ev.kind)(ev)
            except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as e:
                self.note(f"{ev.kind}: could not ({e!r})")

    async def watch_cancel_failures(self) -> None:
        """A step that raises because it saw ctx.cancelled was cancelled, not broken: its chunk
        must end CANCELLED, never ERRORED (retried) or FAILED (failing the instance)."""
        assert self.conn is not None
        rows = await self.conn.fetch(f"""
            SELECT instance_id, state, count(*) AS k, max(attempt) AS attempt FROM chunkd_chunk
             WHERE state IN ({C.ERRORED:d}, {C.FAILED:d}) AND error_message LIKE '%ctx.cancelled seen%'
             GROUP BY 1, 2""")
        for r in rows:
            key = (r["instance_id"], r["state"])
            if key not in self.cancel_failures:
                self.cancel_failures.add(key)
                self.find("cancel-is-not-failure", f"{r['k']} chunks {C(r['state']).name} (up to attempt {r['attempt']}) "
                                                   "for raising on ctx.cancelled", r["instance_id"])

    def watch_daemons(self) -> None:
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is not None and not n.expect_exit:
                self.find("daemon-dead", f"daemon {n.index} (generation {n.gen}) exited on its own with code "
                                         f"{n.proc.returncode}; see {self.workdir}/daemon{n.index}.log")
                n.expect_exit = True
                n.start()

    def api_node(self, ev: Event) -> Node | None:
        usable = [n for n in self.nodes if n.usable]
        return usable[int(ev.pick * 7919) % len(usable)] if usable else None

    async def instances(self) -> list[asyncpg.Record]:
        assert self.conn is not None
        return await self.conn.fetch("SELECT id, status, params FROM chunkd_instance ORDER BY id")

    async def target(self, ev: Event, statuses: tuple[str, ...]) -> int | None:
        """An instance in one of `statuses` (the active ones, for a stop: actions must land on work in flight)."""
        rows = [r for r in await self.instances() if r["status"] in statuses]
        if not rows:
            return None
        return rows[int(ev.pick * len(rows))]["id"]

    async def call(self, ev: Event, method: str, path: str, body: Any = None, cli: list[str] | None = None) -> tuple[int, Any]:
        node = self.api_node(ev)
        if node is None:
            return 0, "no usable daemon"
        if ev.via_cli and cli is not None:
            env = daemon_env(self.dsn, CHUNKD_API_URL=node.url)
            proc = await asyncio.create_subprocess_exec(CHUNKD, *cli, env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE)
            try:
                out, err = await asyncio.wait_for(proc.communicate(), 30)
            except asyncio.TimeoutError:
                proc.kill()
                return 0, "cli timed out"
            return (200 if proc.returncode == 0 else 1000 + (proc.returncode or 0)), (out + err).decode()[-300:]
        return await asyncio.to_thread(http, method, node.url + path, body, 5.0)

    async def do_submit(self, ev: Event) -> None:
        live = [r for r in await self.instances() if r["status"] not in TERMINAL]
        if len(live) >= self.settings.max_instances:
            self.note(f"submit skipped: {len(live)} instances live")
            return
        body = {k: v for k, v in ev.submit.items() if v is not None}
        cli = ["submit", body["job"], "--params", json.dumps(body["parameters"])]
        if "idempotency_key" in body:
            cli += ["--idempotency-key", body["idempotency_key"]]
        status, out = await self.call(ev, "POST", "/api/v1/instances", body, cli)
        iid = await self.instance_by_key(body) if status in (200, 201) else None
        if iid is None and isinstance(out, dict):
            iid = out.get("id")
        if "idempotency_key" in body and iid is not None:
            self.keys[body["idempotency_key"]] = (body, iid)
        self.note(f"submit {'cli' if ev.via_cli else 'api'} {body['job']} {json.dumps(body['parameters'])} "
                  f"key={body.get('idempotency_key')} -> {status} instance {iid}")

    async def instance_by_key(self, body: dict[str, Any]) -> int | None:
        assert self.conn is not None
        if "idempotency_key" in body:
            return await self.conn.fetchval("SELECT id FROM chunkd_instance WHERE idempotency_key = $1",
                                            body["idempotency_key"])
        return await self.conn.fetchval("SELECT max(id) FROM chunkd_instance")

    async def do_resubmit(self, ev: Event) -> None:
        if not self.keys:
            return await self.do_submit(ev)
        key = sorted(self.keys)[int(ev.pick * len(self.keys))]
        body, iid = self.keys[key]
        status, out = await asyncio.to_thread(http, "POST", (self.api_node(ev) or self.nodes[0]).url + "/api/v1/instances",
                                              body, 5.0)
        got = out.get("id") if isinstance(out, dict) else None
        self.note(f"resubmit key={key} (instance {iid}) -> {status} instance {got}")
        if status in (200, 201) and got != iid:
            self.find("idempotency", f"resubmit with key {key} answered {status} with instance {got}, not {iid}", iid)

    async def do_cancel(self, ev: Event) -> None:
        iid = await self.target(ev, ("IN_PROGRESS", "ERRORED", "FINALIZE", "QUEUED"))
        if iid is None:
            return
        status, _ = await self.call(ev, "POST", f"/api/v1/instances/{iid}/cancel", None, ["cancel", str(iid)])
        await self.stopped_now(iid, status)
        self.note(f"cancel {'cli' if ev.via_cli else 'api'} instance {iid} -> {status}")

    async def do_force_stop(self, ev: Event) -> None:
        iid = await self.target(ev, ("IN_PROGRESS", "ERRORED", "FINALIZE", "QUEUED"))
        if iid is None:
            return
        status, _ = await self.call(ev, "POST", f"/api/v1/instances/{iid}/stop?force=true", None,
                                    ["stop", str(iid), "--force"])
        await self.stopped_now(iid, status)
        self.note(f"force-stop {'cli' if ev.via_cli else 'api'} instance {iid} -> {status}")

    async def stopped_now(self, iid: int, status: int) -> None:
        """Remember when a cancel or force-stop returned (the database's clock)."""
        assert self.conn is not None
        if status == 200 and iid not in self.stopped_at:
            self.stopped_at[iid] = await self.conn.fetchval("SELECT clock_timestamp()")

    async def claimed_after_stop(self) -> None:
        """Cancel means stop (rules 7 and 11, issue 22 row 3): from shortly after a cancel or
        force-stop returned, no chunk of the instance is claimed again until a restart."""
        assert self.conn is not None
        for iid, at in list(self.stopped_at.items()):
            r = await self.conn.fetchrow(
                f"SELECT count(*) AS k, max(attempt) AS attempt, extract(epoch FROM max(claimed_at) - $2) AS late, "
                f"array_agg(DISTINCT state) AS states FROM chunkd_chunk WHERE instance_id = $1 "
                f"AND claimed_at > $2 + make_interval(secs => {STOP_GRACE_SECONDS})", iid, at)
            if r["k"] and iid not in self.claimed_late:
                self.claimed_late.add(iid)
                self.find("claimed-after-stop", f"{r['k']} chunks claimed more than {STOP_GRACE_SECONDS:g}s after its "
                                                f"cancel/force-stop returned and before any restart (up to "
                                                f"{float(r['late']):.1f}s after, attempt up to {r['attempt']}, now "
                                                f"{[C(x).name for x in r['states']]})", iid)

    async def before_restart(self, iid: int) -> None:
        if iid in self.stopped_at:
            await self.claimed_after_stop()
            del self.stopped_at[iid]

    async def do_restart(self, ev: Event) -> None:
        iid = await self.target(ev, ("CANCELLED", "FAILED"))
        if iid is None:
            return
        await self.before_restart(iid)
        status, _ = await self.call(ev, "POST", f"/api/v1/instances/{iid}/restart", None, ["restart", str(iid)])
        self.note(f"restart {'cli' if ev.via_cli else 'api'} instance {iid} -> {status}")

    async def do_stop_restart(self, ev: Event) -> None:
        """Stop (force or not), then restart the moment the instance reads CANCELLED: the
        operator who changes their mind a second later."""
        assert self.conn is not None
        iid = await self.target(ev, ("IN_PROGRESS", "ERRORED", "FINALIZE"))
        if iid is None:
            return
        path = f"/api/v1/instances/{iid}/stop?force=true" if ev.force else f"/api/v1/instances/{iid}/cancel"
        status, _ = await asyncio.to_thread(http, "POST", (self.api_node(ev) or self.nodes[0]).url + path, None, 5.0)
        deadline = time.monotonic() + 5
        seen = None
        while time.monotonic() < deadline:
            seen = await self.conn.fetchval("SELECT status FROM chunkd_instance WHERE id = $1", iid)
            if seen in TERMINAL:
                break
            await asyncio.sleep(0.01)
        self.stopped_at.pop(iid, None)  # restarted at once: nothing to watch
        rs, _ = (await asyncio.to_thread(http, "POST", (self.api_node(ev) or self.nodes[0]).url +
                                         f"/api/v1/instances/{iid}/restart", None, 5.0)
                 if seen in ("CANCELLED", "FAILED") else (None, None))
        self.note(f"{'force-stop' if ev.force else 'cancel'} instance {iid} -> {status}, reads {seen}, "
                  f"restart at once -> {rs}")

    async def do_schedule_add(self, ev: Event) -> None:
        sid = f"torture-{len(self.schedules)}"
        body = {"id": sid, "job": "torture.async.tx.free", "every_seconds": 2 + 3 * ev.pick,
                "parameters": {"chunks": 200, "step_ms": 5, "on_cancel": "ignore"}}
        status, _ = await asyncio.to_thread(http, "POST", (self.api_node(ev) or self.nodes[0]).url + "/api/v1/schedules",
                                            body, 5.0)
        if status in (200, 201):
            self.schedules.append(sid)
        self.note(f"schedule add {sid} every {body['every_seconds']:.1f}s -> {status}")

    async def do_schedule_delete(self, ev: Event) -> None:
        if not self.schedules:
            return
        sid = self.schedules.pop(int(ev.pick * len(self.schedules)))
        status, _ = await asyncio.to_thread(http, "DELETE", (self.api_node(ev) or self.nodes[0]).url +
                                            f"/api/v1/schedules/{sid}", None, 5.0)
        self.note(f"schedule delete {sid} -> {status}")

    def fault_node(self, ev: Event) -> Node | None:
        # never all at once: a fault takes a daemon only while another one still works
        usable = [n for n in self.nodes if n.usable]
        return usable[int(ev.pick * len(usable))] if len(usable) >= 2 else None

    async def do_sigkill(self, ev: Event) -> None:
        n = self.fault_node(ev)
        if n is None:
            return
        n.expect_exit = True
        n.signal(signal.SIGKILL)
        n.proc.wait()
        self.note(f"SIGKILL daemon {n.index}; respawn in {ev.hold:.1f}s")
        self.spawn(self.respawn(n, ev.hold))

    async def respawn(self, n: Node, after: float) -> None:
        await asyncio.sleep(after)
        n.start()
        gen = n.gen
        # A later fault may take this generation down while it starts (SIGTERM, SIGKILL): then
        # its readiness no longer matters, and that fault's own check (and respawn) follows.
        if not await self.wait_ready(n, 60) and not (n.expect_exit or n.gen != gen):
            self.find("daemon-dead", f"daemon {n.index} respawned but not ready within 60s")

    async def do_sigstop(self, ev: Event) -> None:
        n = self.fault_node(ev)
        if n is None:
            return
        n.stopped = True
        n.signal(signal.SIGSTOP)
        self.note(f"SIGSTOP daemon {n.index} for {ev.hold:.1f}s (lease {LEASE_SECONDS:.0f}s)")
        self.spawn(self.resume(n, ev.hold))

    async def resume(self, n: Node, after: float) -> None:
        await asyncio.sleep(after)
        n.signal(signal.SIGCONT)
        n.stopped = False
        self.note(f"SIGCONT daemon {n.index}")

    async def do_sigterm(self, ev: Event) -> None:
        n = self.fault_node(ev)
        if n is None:
            return
        n.expect_exit = True
        n.signal(signal.SIGTERM)
        self.note(f"SIGTERM daemon {n.index}")
        self.spawn(self.after_term(n))

    async def after_term(self, n: Node) -> None:
        bound = GRACE_SECONDS + 15
        started = time.monotonic()
        while n.proc.poll() is None and time.monotonic() - started < bound:
            await asyncio.sleep(0.1)
        if n.proc.poll() is None:
            self.find("shutdown", f"daemon {n.index} still running {bound:.0f}s after SIGTERM (grace {GRACE_SECONDS:.0f}s)")
            n.proc.kill()
            n.proc.wait()
        elif n.proc.returncode != 0:
            self.find("shutdown", f"daemon {n.index} exited {n.proc.returncode} after SIGTERM")
        self.note(f"daemon {n.index} exited after SIGTERM in {time.monotonic() - started:.1f}s; respawn")
        await self.respawn(n, 0)

    async def do_partition(self, ev: Event) -> None:
        if not self.proxies:
            return
        i = int(ev.pick * len(self.proxies))
        self.proxies[i].partition(ev.hold)
        self.note(f"partition: daemon {i} cut off from Postgres for {ev.hold:.1f}s (no FIN, no RST)")

    async def do_silence(self, ev: Event) -> None:
        if not self.proxies:
            return
        i = int(ev.pick * len(self.proxies))
        k = self.proxies[i].silence()
        self.note(f"silence: daemon {i}'s {k} open connections to Postgres never carry a byte again")

    async def do_pg_terminate(self, ev: Event) -> None:
        assert self.conn is not None
        killed = await self.conn.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        self.note(f"pg_terminate_backend: {killed} backends")

    # -------------------------------------------------------------- quiesce and check
    async def quiesce(self) -> None:
        assert self.conn is not None
        for t in list(self.tasks):  # pending SIGCONTs and respawns: do them now
            t.cancel()
        for proxy in self.proxies:
            proxy.heal()
        for n in self.nodes:
            if n.stopped:
                n.signal(signal.SIGCONT)
                n.stopped = False
            if n.expect_exit and n.proc.poll() is None:
                # a SIGTERM still draining: give it its bound, then respawn
                try:
                    await asyncio.to_thread(n.proc.wait, GRACE_SECONDS + 15)
                except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired
                    self.find("shutdown", f"daemon {n.index} still running {GRACE_SECONDS + 15:.0f}s after SIGTERM")
                    n.proc.kill()
                    n.proc.wait()
            self.watch_daemons()
            if not n.alive:
                n.start()
        for n in self.nodes:
            if not await self.wait_ready(n, 30):
                ready, _ = await asyncio.to_thread(http, "GET", n.url + "/readyz", None, 5.0)
                health, _ = await asyncio.to_thread(http, "GET", n.url + "/healthz", None, 5.0)
                self.find("daemon-not-ready", f"daemon {n.index} not ready within 30s of the quiesce (/readyz {ready}, "
                                         f"/healthz {health}; 0 = no answer)")
        for sid in self.schedules:
            await asyncio.to_thread(http, "DELETE", self.nodes[0].url + f"/api/v1/schedules/{sid}", None, 5.0)
        # a DELETE the API did not answer (a daemon just respawned): no more firings either way
        await self.conn.execute("DELETE FROM chunkd_schedule WHERE id LIKE 'torture-%'")
        self.note("quiesce: all daemons up, schedules deleted; restarting what is CANCELLED/FAILED")
        restarts: dict[int, int] = {}  # accepted restarts per instance
        tries: dict[int, int] = {}
        progress: dict[int, tuple[Any, float]] = {}
        deadline = time.monotonic() + self.settings.quiesce_seconds
        while True:
            self.watch_daemons()
            await self.watch_cancel_failures()
            await self.claimed_after_stop()
            rows = await self.conn.fetch(f"""
                SELECT i.id, i.status, i.error_message,
                       (SELECT count(*) FROM chunkd_chunk c WHERE c.instance_id = i.id AND c.state = {C.COMPLETED:d}) AS done
                  FROM chunkd_instance i ORDER BY i.id""")
            pending = [r for r in rows if r["status"] != "COMPLETED"]
            if not pending:
                self.note(f"quiesce: all {len(rows)} instances COMPLETED")
                return
            now = time.monotonic()
            for r in pending:
                iid = r["id"]
                if r["status"] in ("CANCELLED", "FAILED"):
                    if restarts.get(iid, 0) >= 5:
                        self.find("never-completes", f"still {r['status']} after 5 restarts in the quiesce: "
                                                     f"{r['error_message']}", iid)
                        return
                    await self.before_restart(iid)
                    tries[iid] = tries.get(iid, 0) + 1
                    status, out = await asyncio.to_thread(http, "POST", self.nodes[tries[iid] % len(self.nodes)].url +
                                                          f"/api/v1/instances/{iid}/restart", None, 5.0)
                    if status == 200:  # a refused restart (still stopping, say) is tried again until the deadline
                        restarts[iid] = restarts.get(iid, 0) + 1
                    self.note(f"quiesce: restart instance {iid} ({r['status']}: {r['error_message']}) -> {status}"
                              + ("" if status == 200 else f" {out}"))
                    progress.pop(iid, None)
                    continue
                sig = (r["status"], r["done"])
                if iid not in progress or progress[iid][0] != sig:
                    progress[iid] = (sig, now)
                elif now - progress[iid][1] > self.settings.stuck_seconds:
                    self.find("stuck", f"{r['status']} with {r['done']} chunks COMPLETED and no progress for "
                                       f"{self.settings.stuck_seconds:.0f}s", iid)
                    return
            if now > deadline:
                self.find("never-completes", f"{len(pending)} instances not COMPLETED within the quiesce "
                                             f"({self.settings.quiesce_seconds:.0f}s): "
                                             f"{[(r['id'], r['status']) for r in pending]}")
                return
            await asyncio.sleep(0.5)

    async def check(self) -> None:
        assert self.conn is not None
        c = self.conn
        rows = await c.fetch("SELECT id, job_name, status, params, report FROM chunkd_instance ORDER BY id")
        for r in await c.fetch("SELECT instance_id, n, count(*) AS k FROM torture_effect GROUP BY 1, 2 "
                               "HAVING count(*) > 1 ORDER BY 1, 2 LIMIT 20"):
            self.find("effect-at-most-once", f"input {r['n']} written {r['k']} times", r["instance_id"])
        for r in await c.fetch("SELECT instance_id, count(*) AS k FROM torture_reduced GROUP BY 1 HAVING count(*) > 1"):
            self.find("reduction-at-most-once", f"transactional reduction written {r['k']} times", r["instance_id"])
        for r in rows:
            if r["status"] != "COMPLETED" or not r["job_name"].startswith("torture."):
                continue
            iid, params = r["id"], json.loads(r["params"])
            want = expected_report(params["chunks"])
            got = json.loads(r["report"]) if r["report"] is not None else None
            if got != want:
                self.find("report", f"COMPLETED with report {got}, its input says {want} ({r['job_name']} {params})", iid)
            states = dict(await c.fetch("SELECT state, count(*) FROM chunkd_chunk WHERE instance_id = $1 GROUP BY 1", iid))
            bad = {C(s).name: k for s, k in states.items() if s != C.COMPLETED}
            if bad:
                self.find("completed-chunks", f"COMPLETED with chunks {bad} (and {states.get(C.COMPLETED, 0)} COMPLETED)",
                          iid)
            # every torture job's work step (step 1) emits one Val (step 2) per run it completes:
            # a COMPLETED work chunk without its Val is a step run recorded COMPLETED that did not finish
            work, vals = await c.fetchrow(f"""SELECT count(*) FILTER (WHERE step = 1 AND state = {C.COMPLETED:d}),
                                                     count(*) FILTER (WHERE step = 2) FROM chunkd_chunk
                                               WHERE instance_id = $1""", iid)
            if work != vals:
                self.find("work-output", f"{work} work chunks COMPLETED but {vals} outputs: {work - vals} step runs "
                                         "recorded COMPLETED without finishing (they returned on ctx.cancelled?)", iid)
            if ".tx." in r["job_name"]:
                distinct = await c.fetchval("SELECT count(DISTINCT n) FROM torture_effect WHERE instance_id = $1 "
                                            "AND n >= 0 AND n < $2", iid, params["chunks"])
                if distinct != params["chunks"]:
                    self.find("effect-exactly-once", f"COMPLETED but {params['chunks'] - distinct} of "
                                                     f"{params['chunks']} inputs have no transactional effect", iid)
                reduced = await c.fetchval("SELECT count(*) FROM torture_reduced WHERE instance_id = $1", iid)
                if reduced != 1:
                    self.find("reduction-exactly-once", f"COMPLETED with its reduction written {reduced} times", iid)
        await self.nothing_held()
        for n in self.nodes:
            status, _ = await asyncio.to_thread(http, "GET", n.url + "/healthz", None, 5.0)
            if status != 200:
                self.find("daemon-dead", f"daemon {n.index} answers /healthz with {status} at the end")
            # alive is not enough: a daemon whose connections went silent may answer /healthz for ever
            age = await c.fetchval("SELECT extract(epoch FROM now() - heartbeat_at) FROM chunkd_node WHERE pid = $1 "
                                   "ORDER BY id DESC LIMIT 1", n.proc.pid)
            if age is None or age > 10 * LEASE_SECONDS:
                when = "has no heartbeat row (the cluster removed it as dead)" if age is None else \
                    f"last renewed its heartbeat {float(age):.0f}s ago"
                self.find("daemon-hung", f"daemon {n.index} (pid {n.proc.pid}, /healthz {status}) {when}")

    async def nothing_held(self) -> None:
        """Invariant 7: with every instance COMPLETED no daemon holds a chunk. A daemon whose
        count of what it holds drifted up (a claim forgotten by another attempt's result) sits
        healthy and silent once that count passes its room: it never claims again."""
        deadline = time.monotonic() + 30
        for n in self.nodes:
            while True:
                held = await asyncio.to_thread(metric, n.url, "chunkd_chunks_in_flight")
                if held == 0:
                    break
                if time.monotonic() > deadline:
                    self.find("held-after-quiesce", f"daemon {n.index} reports chunkd_chunks_in_flight {held} with "
                                                    "every instance COMPLETED")
                    break
                await asyncio.sleep(0.5)

    async def go(self) -> None:
        await self.setup()
        await self.execute()
        await self.quiesce()
        await self.check()


def replay_command(seed: int, settings: Settings) -> str:
    extra = "" if settings.network else " --no-network"
    if settings.silence_server_seconds != Settings.silence_server_seconds:
        extra += f" --silence-server-seconds {settings.silence_server_seconds:g}"
    return (f".venv/bin/python -m tests.chaos.torture --seeds {seed} --run-seconds {settings.run_seconds:g}"
            f"{extra} --keep -v")


async def run_seed(seed: int, settings: Settings, admin_dsn: str = LOCAL_DSN, keep: bool = False,
                   echo: bool = False, workroot: Path | None = None, keep_failed: bool = True) -> Result:
    """One seed. The database and logs are dropped, unless `keep`, or the seed failed and `keep_failed`."""
    workdir = Path(tempfile.mkdtemp(prefix=f"torture-{seed}-", dir=workroot))
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        if echo:
            print(f"  [{seed}] {line}", flush=True)
    run = Run(seed, settings, admin_dsn, workdir, say)
    started = time.monotonic()
    try:
        await run.go()
    finally:
        keep_it = keep or (keep_failed and bool(run.findings))
        (workdir / "actions.log").write_text("\n".join(lines) + "\n")
        await run.teardown(keep_it)
        if not (keep_it or run.findings):
            shutil.rmtree(workdir, ignore_errors=True)
    return Result(seed, time.monotonic() - started, run.findings, run.actions, workdir, run.database)


def parse_seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.chaos.torture", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="1-20", help="e.g. 1-50 or 3,7,12 (run in order, again from the first "
                                                    "while --minutes has time left)")
    ap.add_argument("--minutes", type=float, default=0, help="keep going over the seeds for this long (0: each once)")
    ap.add_argument("--run-seconds", type=float, default=Settings.run_seconds)
    ap.add_argument("--quiesce-seconds", type=float, default=Settings.quiesce_seconds)
    ap.add_argument("--stuck-seconds", type=float, default=Settings.stuck_seconds)
    ap.add_argument("--no-network", action="store_true", help="daemons connect to Postgres directly: no partitions "
                                                               "or silenced connections")
    ap.add_argument("--silence-server-seconds", type=float, default=Settings.silence_server_seconds,
                    help="when Postgres notices a silenced connection (0: never, as with default server keepalives)")
    ap.add_argument("--keep", action="store_true", help="keep the database and logs even when the seed passes")
    ap.add_argument("--verbose", "-v", action="store_true", help="print every action as it happens")
    ap.add_argument("--stop-on-failure", action="store_true")
    a = ap.parse_args(argv)
    settings = Settings(run_seconds=a.run_seconds, quiesce_seconds=a.quiesce_seconds, stuck_seconds=a.stuck_seconds,
                        network=not a.no_network, silence_server_seconds=a.silence_server_seconds)
    seeds = parse_seeds(a.seeds)
    until = time.monotonic() + a.minutes * 60
    failed: list[int] = []
    runs = 0
    began = time.monotonic()
    i = 0
    while True:
        seed = seeds[i % len(seeds)]
        print(f"seed {seed}: running", flush=True)
        try:
            res = asyncio.run(run_seed(seed, settings, keep=a.keep, echo=a.verbose))
        except KeyboardInterrupt:
            print(f"seed {seed}: interrupted; {runs} runs done; failed seeds: {sorted(set(failed)) or 'none'}")
            return 130
        runs += 1
        if res.ok:
            print(f"seed {seed}: ok in {res.seconds:.0f}s", flush=True)
        else:
            failed.append(seed)
            print(f"seed {seed}: FAILED in {res.seconds:.0f}s ({time.monotonic() - began:.0f}s into the run)", flush=True)
            for f in res.findings:
                print(f"  {f}", flush=True)
            print(f"  actions, daemon logs: {res.workdir}; database {res.database} (kept)", flush=True)
            print(f"  replay: {replay_command(seed, settings)}", flush=True)
            if a.stop_on_failure:
                break
        i += 1
        if (a.minutes and time.monotonic() >= until) or (not a.minutes and i >= len(seeds)):
            break
    print(f"{runs} runs in {time.monotonic() - began:.0f}s; failed seeds: {sorted(set(failed)) or 'none'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
