"""Typed configuration from CHUNKD_* environment variables: the one place each is read.

Every variable is declared once in VARIABLES (name, default, meaning, parser); the
README table is checked against it by a test.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from actors.adaptive import Effective, resolve
from actors.pipeline import PipelineSettings
from actors.settings import (
    ActorSettings,
    ClaimSettings,
    CompleterSettings,
    MaintenanceSettings,
    SchedulerSettings,
    StepSettings,
)
from storage.deadlines import Deadlines


class ConfigError(ValueError):
    """One bad variable: names it, its value and what is allowed."""

    def __init__(self, name: str, value: str, allowed: str) -> None:
        super().__init__(f"invalid {name}={value!r}: {allowed}")
        self.name = name


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            v = int(raw.strip())
        except ValueError:
            raise ValueError(f"expected an integer from {lo} to {hi}") from None
        if not lo <= v <= hi:
            raise ValueError(f"expected an integer from {lo} to {hi}")
        return v
    return parse


def _int_or_auto(lo: int, hi: int) -> Callable[[str], int | None]:
    """Unset (or `auto`): None, the daemon adapts (actors/adaptive.py)."""
    parse_int = _int(lo, hi)

    def parse(raw: str) -> int | None:
        if raw.strip().lower() in ("", "auto"):
            return None
        try:
            return parse_int(raw)
        except ValueError:
            raise ValueError(f"expected an integer from {lo} to {hi}, or unset (adapted)") from None
    return parse


def _float(lo: float, hi: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            v = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected a number from {lo} to {hi}") from None
        if not lo <= v <= hi or v != v:
            raise ValueError(f"expected a number from {lo} to {hi}")
        return v
    return parse


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        v = raw.strip().lower()
        if v not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return v
    return parse


def _auto_or_off(raw: str) -> bool:
    """auto -> True, off -> False (a switch whose "on" adapts to the database)."""
    return _choice("auto", "off")(raw) == "auto"


def _text(raw: str) -> str:
    return raw.strip()


def _dsn(raw: str) -> str:
    v = raw.strip()
    if v and not v.startswith(("postgres://", "postgresql://")):
        raise ValueError("expected a postgresql:// URL (or unset for the embedded Postgres)")
    return v


def _addr(raw: str) -> tuple[str, int] | None:
    v = raw.strip()
    if v.lower() in ("", "off", "none"):
        return None
    host, sep, port = v.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected host:port (port 0 picks a free one), or off")
    return host, int(port)


def _bool(raw: str) -> bool:
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("", "0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _url(raw: str) -> str:
    v = raw.strip().rstrip("/")
    if not v.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL")
    return v


def _duration(raw: str) -> float:
    v = raw.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        seconds = float(v[:-1]) * units[v[-1]] if v and v[-1] in units else float(v)
    except ValueError:
        raise ValueError("expected a duration such as 90s, 30m, 12h, 7d (or seconds)") from None
    if not 60 <= seconds <= 3650 * 86400:
        raise ValueError("expected a duration from 1 minute to 10 years, e.g. 7d")
    return seconds


def _modules(raw: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in raw.split(",") if p.strip())
    for p in parts:
        if not all(seg.isidentifier() for seg in p.split(".")):
            raise ValueError("expected comma-separated Python module names, e.g. acme.jobs,other.jobs")
    return parts


def _bytes(lo: int, hi: int) -> Callable[[str], int]:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}

    def parse(raw: str) -> int:
        v = raw.strip().lower().removesuffix("ib").removesuffix("b")
        try:
            n = int(float(v[:-1]) * units[v[-1]]) if v and v[-1] in units else int(v)
        except ValueError:
            raise ValueError(f"expected a size such as 64MiB, 512k or bytes, from {lo} to {hi}") from None
        if not lo <= n <= hi:
            raise ValueError(f"expected a size from {lo:,} to {hi:,} bytes")
        return n
    return parse


def _names(raw: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def _relations(raw: str) -> tuple[str, ...]:
    parts = _names(raw)
    for p in parts:
        schema, dot, table = p.partition(".")
        if not dot or not schema or not table or any(c.isspace() for c in p):
            raise ValueError("expected schema.table or schema.* entries separated by commas, e.g. public.resources")
    return parts


def _job_caps(raw: str) -> dict[str, int]:
    caps: dict[str, int] = {}
    for item in (p.strip() for p in raw.split(",") if p.strip()):
        name, sep, num = item.partition("=")
        if not sep or not name.strip() or not num.strip().isdigit() or int(num) < 1:
            raise ValueError("expected job=N pairs separated by commas, N >= 1, e.g. acme.export=4,other=2")
        caps[name.strip()] = int(num)
    return caps


class Config(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str
    home: str
    channel: str
    kafka_bootstrap_servers: str
    kafka_topic: str
    kafka_group: str
    kafka_partitions: int
    kafka_security_protocol: str
    kafka_sasl_mechanism: str
    kafka_sasl_username: str
    kafka_sasl_password: str
    kafka_ssl_cafile: str
    partitions: int
    partition_concurrency: int      # in effect: the variable's, or chosen (adaptive_concurrency)
    job_concurrency: dict[str, int]
    claim_batch: int                # in effect: the variable's, or the most one adaptive claim takes
    lease_seconds: float
    heartbeat_seconds: float
    maintenance_interval: float
    republish_after: float
    poll_interval: float
    completer_flush_ms: float
    completer_batch: int
    shutdown_grace_seconds: float
    node_id: str
    jobs: tuple[str, ...]
    log_level: str
    log_format: str
    pool_size: int
    scheduling: bool
    scheduler_concurrency: int
    retention: float
    retention_failed: float
    retention_every: float
    vacuum: bool
    http_addr: tuple[str, int] | None
    api_tokens: str
    api_tokens_file: str
    api_insecure: bool
    api_max_submits: int
    api_url: str
    api_token: str
    api_allowed_hosts: tuple[str, ...]
    max_chunk_bytes: int
    max_chunks_per_run: int
    max_emit_bytes_per_run: int
    max_report_bytes: int
    export_dir: str
    export_tables: tuple[str, ...]
    adaptive_concurrency: bool = False   # CHUNKD_PARTITION_CONCURRENCY unset: actors.adaptive chose
    adaptive_claim: bool = False         # CHUNKD_CLAIM_BATCH unset: claims sized by actors.adaptive.next_claim

    def effective(self) -> Effective:
        """The claim and executor settings in effect (for /metrics and the bench's report)."""
        return Effective(partition_concurrency=self.partition_concurrency, claim_batch=self.claim_batch,
                         adaptive_concurrency=self.adaptive_concurrency, adaptive_claim=self.adaptive_claim)

    def deadlines(self) -> Deadlines:
        """Database deadlines and the stall/health bounds, from the lease (storage/deadlines.py)."""
        return Deadlines.from_lease(self.lease_seconds)

    def actor_settings(self) -> ActorSettings:
        """What each actor is told (actors/settings.py): the actors never see Config."""
        return ActorSettings(
            claim=ClaimSettings(partitions=self.partitions, partition_concurrency=self.partition_concurrency,
                                claim_batch=self.claim_batch, lease_seconds=self.lease_seconds,
                                poll_interval=self.poll_interval, adaptive=self.adaptive_claim),
            steps=StepSettings(job_concurrency=self.job_concurrency, max_chunk_bytes=self.max_chunk_bytes,
                               max_chunks_per_run=self.max_chunks_per_run,
                               max_emit_bytes_per_run=self.max_emit_bytes_per_run),
            completer=CompleterSettings(batch=self.completer_batch, flush_ms=self.completer_flush_ms),
            maintenance=MaintenanceSettings(partitions=self.partitions, interval=self.maintenance_interval,
                                            republish_after=self.republish_after,
                                            max_report_bytes=self.max_report_bytes, scheduling=self.scheduling,
                                            forget_nodes_after=10 * self.lease_seconds, vacuum=self.vacuum),
            scheduler=SchedulerSettings(node_name=self.node_id, partitions=self.partitions, enabled=self.scheduling,
                                        concurrency=self.scheduler_concurrency,
                                        alive_within=self.lease_seconds))

    def pipeline_settings(self, completer_drain_seconds: float) -> PipelineSettings:
        """The pipeline's (actors/pipeline.py): worker counts, mailbox sizes, shutdown grace."""
        return PipelineSettings(partitions=self.partitions, partition_concurrency=self.partition_concurrency,
                                claim_batch=self.claim_batch, completer_batch=self.completer_batch,
                                shutdown_grace_seconds=self.shutdown_grace_seconds,
                                completer_drain_seconds=completer_drain_seconds, adaptive=self.adaptive_claim,
                                adaptive_workers=self.adaptive_concurrency)


class Var(msgspec.Struct, frozen=True):
    name: str
    field: str
    default: str
    meaning: str
    parse: Callable[[str], Any]


VARIABLES: tuple[Var, ...] = (
    Var("CHUNKD_DATABASE_URL", "database_url", "",
        "Postgres URL. Unset: an embedded Postgres is started under CHUNKD_HOME.", _dsn),
    Var("CHUNKD_HOME", "home", "./.chunkd", "Directory for the embedded Postgres and local state.", _text),
    Var("CHUNKD_CHANNEL", "channel", "postgres",
        "Work-notification transport: postgres (LISTEN/NOTIFY) or kafka.", _choice("postgres", "kafka")),
    Var("CHUNKD_KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers", "",
        "Kafka brokers, host:port[,host:port] (required with CHUNKD_CHANNEL=kafka).", _text),
    Var("CHUNKD_KAFKA_TOPIC", "kafka_topic", "chunkd.work-notification", "The work-notification topic.", _text),
    Var("CHUNKD_KAFKA_GROUP", "kafka_group", "chunkd", "Consumer group shared by the daemons.", _text),
    Var("CHUNKD_KAFKA_PARTITIONS", "kafka_partitions", "0",
        "Partitions of the topic when chunkd creates it; 0 means CHUNKD_PARTITIONS. An existing topic's "
        "count wins and becomes the daemon's partition count.", _int(0, 1024)),
    Var("CHUNKD_KAFKA_SECURITY_PROTOCOL", "kafka_security_protocol", "PLAINTEXT",
        "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.", _choice("plaintext", "ssl", "sasl_plaintext", "sasl_ssl")),
    Var("CHUNKD_KAFKA_SASL_MECHANISM", "kafka_sasl_mechanism", "", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.", _text),
    Var("CHUNKD_KAFKA_SASL_USERNAME", "kafka_sasl_username", "", "SASL user.", _text),
    Var("CHUNKD_KAFKA_SASL_PASSWORD", "kafka_sasl_password", "", "SASL password.", _text),
    Var("CHUNKD_KAFKA_SSL_CAFILE", "kafka_ssl_cafile", "", "CA bundle for SSL/SASL_SSL.", _text),
    Var("CHUNKD_PARTITIONS", "partitions", "4", "Number of work partitions (one consumer each).", _int(1, 1024)),
    Var("CHUNKD_PARTITION_CONCURRENCY", "partition_concurrency", "",
        "Steps running at once per partition on this daemon. Unset: 1024 / CHUNKD_PARTITIONS (8 to 256) executor "
        "workers per partition; plain-function steps are further capped by the 40 threads they run in.",
        _int_or_auto(1, 10_000)),
    Var("CHUNKD_JOB_CONCURRENCY", "job_concurrency", "",
        "Per-job cap on steps running at once on this daemon, e.g. acme.export=4,other=2 "
        "(overrides the job definition's default).", _job_caps),
    Var("CHUNKD_CLAIM_BATCH", "claim_batch", "",
        "Chunks claimed per claim statement. Unset: adapted per claim, from what the idle executors can start "
        "(at least 100; short queue) up to 2000 / CHUNKD_PARTITIONS (50 to 500) while claims come back full "
        "(backlog).",
        _int_or_auto(1, 10_000)),
    Var("CHUNKD_LEASE_SECONDS", "lease_seconds", "30",
        "Lease on a claimed chunk; extended by this daemon's heartbeat, expired leases are rescued. Also sets the "
        "database deadlines: each statement max(lease, 10 s); no round trip for max(lease, 5 s) drops every "
        "connection; 3 x that fails /healthz.",
        _float(1, 86_400)),
    Var("CHUNKD_HEARTBEAT_SECONDS", "heartbeat_seconds", "0",
        "Heartbeat period; 0 means a third of the lease.", _float(0, 3600)),
    Var("CHUNKD_MAINTENANCE_INTERVAL", "maintenance_interval", "1",
        "Seconds between maintenance passes (gates, retries, rescues, progress).", _float(0.05, 3600)),
    Var("CHUNKD_REPUBLISH_AFTER", "republish_after", "5",
        "Seconds a READY chunk waits before maintenance re-publishes its partition.", _float(0.1, 86_400)),
    Var("CHUNKD_POLL_INTERVAL", "poll_interval", "2",
        "Seconds an idle partition consumer waits for a notification before polling anyway.", _float(0.01, 3600)),
    Var("CHUNKD_COMPLETER_FLUSH_MS", "completer_flush_ms", "5",
        "Longest a finished chunk waits in the completer before its batch is written.", _float(0, 10_000)),
    # 1000, not 500: with adapted claims (of up to 500) the no-op drain ran 26.0k vs 19.2k and
    # 21.8k vs 19.3k chunks/s (medians of 3, interleaved, two rounds, 2026-12-07).
    Var("CHUNKD_COMPLETER_BATCH", "completer_batch", "1000",
        "Finished chunks that trigger a completer flush at once.", _int(1, 100_000)),
    Var("CHUNKD_SHUTDOWN_GRACE_SECONDS", "shutdown_grace_seconds", "25",
        "On SIGTERM, how long in-flight chunks may finish before they are released; the daemon exits within this + 15 s.", _float(0, 3600)),
    Var("CHUNKD_NODE_ID", "node_id", "", "This daemon's name in logs and the node table (default host-pid).", _text),
    Var("CHUNKD_JOBS", "jobs", "", "Comma-separated Python modules that define jobs.", _modules),
    Var("CHUNKD_LOG_LEVEL", "log_level", "info", "debug, info, warning or error.",
        _choice("debug", "info", "warning", "error")),
    Var("CHUNKD_LOG_FORMAT", "log_format", "json", "json (one object per line) or console.",
        _choice("json", "console")),
    Var("CHUNKD_HTTP_ADDR", "http_addr", "127.0.0.1:8080",
        "Where the HTTP server (/metrics, /healthz, /readyz) listens; off disables it.", _addr),
    Var("CHUNKD_API_TOKENS", "api_tokens", "",
        "API bearer tokens as scope:token pairs, comma-separated (scopes: view, manage). "
        "Prefer CHUNKD_API_TOKENS_FILE for secrets.", _text),
    Var("CHUNKD_API_TOKENS_FILE", "api_tokens_file", "",
        "File with one scope:token per line (a line starting with # is a comment). Without any token the API serves only loopback.", _text),
    Var("CHUNKD_API_INSECURE", "api_insecure", "false",
        "true: allow serving the API on a non-loopback address without tokens.", _bool),
    Var("CHUNKD_API_MAX_SUBMITS", "api_max_submits", "256",
        "Submissions the API handles at once; more get 429 with Retry-After (load shedding, not queueing).",
        _int(1, 100_000)),
    Var("CHUNKD_API_URL", "api_url", "http://127.0.0.1:8080", "Where the CLI reaches the daemon's API.", _url),
    Var("CHUNKD_API_TOKEN", "api_token", "", "The bearer token the CLI sends.", _text),
    Var("CHUNKD_SCHEDULING", "scheduling", "true",
        "false: this daemon neither fires schedules nor takes the maintenance lead (it still runs chunks).",
        _bool),
    Var("CHUNKD_SCHEDULER_CONCURRENCY", "scheduler_concurrency", "4", "Schedule firings in flight at once.",
        _int(1, 1000)),
    Var("CHUNKD_RETENTION", "retention", "7d",
        "Finished (COMPLETED, CANCELLED) instances and their chunks older than this are purged.", _duration),
    Var("CHUNKD_RETENTION_FAILED", "retention_failed", "30d", "FAILED instances are kept this long.", _duration),
    Var("CHUNKD_RETENTION_EVERY", "retention_every", "300",
        "Seconds between runs of the built-in retention schedule; 0 removes that schedule.", _float(0, 86_400)),
    Var("CHUNKD_VACUUM", "vacuum", "auto",
        "auto: where the server's autovacuum is off for chunkd's tables, the maintenance leader vacuums them "
        "itself (their dead rows otherwise grow without bound); off: leave it to the DBA.",
        _auto_or_off),
    Var("CHUNKD_POOL_SIZE", "pool_size", "0",
        "Postgres connections in this daemon's pool (at least 2); 0 means partitions + 4.", _int(0, 1000)),
    Var("CHUNKD_API_ALLOWED_HOSTS", "api_allowed_hosts", "",
        "Host names the API answers to besides loopback, IP literals and CHUNKD_HTTP_ADDR's host "
        "(e.g. a Kubernetes Service name), comma-separated; other Host headers get 421 (DNS rebinding).",
        _names),
    Var("CHUNKD_MAX_CHUNK_BYTES", "max_chunk_bytes", "64MiB",
        "Largest encoded chunk a step may emit; a larger one fails its step at once, naming this limit.",
        _bytes(1024, 512 << 20)),
    Var("CHUNKD_MAX_CHUNKS_PER_RUN", "max_chunks_per_run", "1000000",
        "Most chunks one step run may emit (its children are held in memory until it ends); one more fails "
        "the step at once, naming this limit.", _int(1, 100_000_000)),
    Var("CHUNKD_MAX_EMIT_BYTES_PER_RUN", "max_emit_bytes_per_run", "256MiB",
        "Most bytes of encoded chunks one step run may emit, at least CHUNKD_MAX_CHUNK_BYTES; more fails the "
        "step at once, naming this limit.", _bytes(1024, 16 << 30)),
    Var("CHUNKD_MAX_REPORT_BYTES", "max_report_bytes", "16MiB",
        "Largest reduction report (JSON); a larger one fails the instance, naming this limit.",
        _bytes(1024, 256 << 20)),
    Var("CHUNKD_EXPORT_DIR", "export_dir", "",
        "The only directory chunkd.bulk-export writes under (its `output` is a name relative to it); "
        "default CHUNKD_HOME/exports.", _text),
    Var("CHUNKD_EXPORT_TABLES", "export_tables", "",
        "Relations the built-in jobs (bulk-export, reindex) may read or write: schema.table or schema.* "
        "entries, comma-separated. Empty: none. pg_catalog, information_schema and chunkd's own tables "
        "never.", _relations),
)

# Bounds on combinations (each variable alone has its own range): what one daemon may
# hold in memory is about partitions x (partition concurrency + claim batch) chunks, and
# one worker task per partition x concurrency slot.
MAX_WORKERS = 10_000
MAX_HELD_CHUNKS = 200_000


def load(env: Mapping[str, str] | None = None) -> Config:
    """Parse the environment; raises ConfigError on the first bad value."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for var in VARIABLES:
        raw = env.get(var.name, var.default)
        try:
            values[var.field] = var.parse(raw)
        except ValueError as e:
            raise ConfigError(var.name, raw, str(e)) from None
    if not values["node_id"]:
        values["node_id"] = f"{socket.gethostname()}-{os.getpid()}"
    if not values["heartbeat_seconds"]:
        values["heartbeat_seconds"] = values["lease_seconds"] / 3
    elif values["heartbeat_seconds"] >= values["lease_seconds"]:
        raise ConfigError("CHUNKD_HEARTBEAT_SECONDS", env.get("CHUNKD_HEARTBEAT_SECONDS", ""),
                          "must be shorter than CHUNKD_LEASE_SECONDS")
    if values["channel"] == "kafka" and not values["kafka_bootstrap_servers"]:
        raise ConfigError("CHUNKD_KAFKA_BOOTSTRAP_SERVERS", "", "required with CHUNKD_CHANNEL=kafka")
    if not values["pool_size"]:
        values["pool_size"] = values["partitions"] + 4
    elif values["pool_size"] < 2:
        raise ConfigError("CHUNKD_POOL_SIZE", env.get("CHUNKD_POOL_SIZE", ""),
                          "at least 2 connections (or 0 for partitions + 4)")
    eff = resolve(values["partitions"], values["partition_concurrency"], values["claim_batch"])
    values["partition_concurrency"], values["claim_batch"] = eff.partition_concurrency, eff.claim_batch
    values["adaptive_concurrency"], values["adaptive_claim"] = eff.adaptive_concurrency, eff.adaptive_claim
    workers = values["partitions"] * values["partition_concurrency"]
    if workers > MAX_WORKERS:
        raise ConfigError("CHUNKD_PARTITION_CONCURRENCY", env.get("CHUNKD_PARTITION_CONCURRENCY", ""),
                          f"CHUNKD_PARTITIONS x CHUNKD_PARTITION_CONCURRENCY = {workers:,} step workers; "
                          f"at most {MAX_WORKERS:,} per daemon")
    held = values["partitions"] * (values["partition_concurrency"] + values["claim_batch"])
    if held > MAX_HELD_CHUNKS:
        name = "CHUNKD_PARTITION_CONCURRENCY" if eff.adaptive_claim else "CHUNKD_CLAIM_BATCH"
        raise ConfigError(name, env.get(name, ""),
                          f"CHUNKD_PARTITIONS x (CHUNKD_PARTITION_CONCURRENCY + CHUNKD_CLAIM_BATCH) = {held:,} "
                          f"chunks held in memory; at most {MAX_HELD_CHUNKS:,} per daemon")
    if values["max_emit_bytes_per_run"] < values["max_chunk_bytes"]:
        raise ConfigError("CHUNKD_MAX_EMIT_BYTES_PER_RUN", env.get("CHUNKD_MAX_EMIT_BYTES_PER_RUN", ""),
                          "must be at least CHUNKD_MAX_CHUNK_BYTES (one chunk of the largest size must fit)")
    if not values["export_dir"]:
        values["export_dir"] = os.path.join(values["home"], "exports")
    return Config(**values)
