"""What each actor is told: one narrow, immutable settings struct per actor (River's
producerConfig / JobRescuerConfig are the model). The shell builds them from its
configuration (daemon/wiring/config.py: Config.actor_settings); nothing here reads the
environment, so actors run the same in tests, benchmarks and the daemon."""
from __future__ import annotations

import msgspec


class ClaimSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The consumers: one per partition, claiming READY chunks."""
    partitions: int
    partition_concurrency: int   # steps running at once per partition (the backpressure bound)
    claim_batch: int             # adaptive: the most one claim takes (actors/adaptive.py)
    lease_seconds: float
    poll_interval: float         # claim again at least this often without a notification
    adaptive: bool = False       # CHUNKD_CLAIM_BATCH unset: claims sized by actors.adaptive.next_claim


class StepSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The executors: how steps run."""
    job_concurrency: dict[str, int] = {}   # per-job cap on steps at once on this daemon
    max_chunk_bytes: int = 64 << 20        # an emitted chunk over this fails its step
    max_chunks_per_run: int = 1_000_000    # one run emitting more fails its step (memory bound)
    max_emit_bytes_per_run: int = 256 << 20


class CompleterSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The completer: how results are batched into one transaction."""
    batch: int
    flush_ms: float


class MaintenanceSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The maintenance leader: gates, rescue, reductions, republishing."""
    partitions: int
    interval: float
    republish_after: float
    max_report_bytes: int
    scheduling: bool              # does the leader also keep schedule rows in sync
    # A node row whose heartbeat is this old belongs to a dead daemon (SIGKILLed, its host
    # gone): long past every lease it could hold, so the leader deletes it.
    forget_nodes_after: float = 300.0
    # Where autovacuum is off for chunkd's tables, the leader vacuums them (actors.duties.Vacuumer).
    vacuum: bool = True


class SchedulerSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The scheduler: clustered schedules (the job modules' declared ones, chunkd's own
    included) and this daemon's local tasks."""
    node_name: str
    partitions: int
    enabled: bool
    concurrency: int
    # A daemon whose heartbeat is older than this no longer counts as declaring its job
    # modules' schedules (those nobody declares are orphaned and do not fire).
    alive_within: float = 30.0


class ActorSettings(msgspec.Struct, frozen=True, kw_only=True):
    claim: ClaimSettings
    steps: StepSettings
    completer: CompleterSettings
    maintenance: MaintenanceSettings
    scheduler: SchedulerSettings
