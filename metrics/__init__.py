"""Every Prometheus metric chunkd exports, defined once. Labels are bounded:
job name, step name, actor kind, partition number, chunk state, instance status, HTTP
route template and status code — never instance, chunk or node ids (each id would be a
new time series for Prometheus to keep forever)."""
from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import Counter, Gauge, Histogram, Info

_STEP = ("job", "step")

CHUNKS_CLAIMED = Counter("chunkd_chunks_claimed", "Chunks claimed by this daemon.", ["partition"])
CHUNKS_COMPLETED = Counter("chunkd_chunks_completed", "Chunks completed (committed).", _STEP)
CHUNKS_ERRORED = Counter("chunkd_chunks_errored",
                         "Step runs on this daemon that raised (or could not start) and will be retried.", _STEP)
CHUNKS_FAILED = Counter("chunkd_chunks_failed",
                        "Chunks moved to FAILED by their step's outcome on this daemon (those failed because "
                        "their lease expired once too often are counted by chunkd_leases_rescued).", _STEP)
CHUNKS_POLL_WAITING = Counter("chunkd_chunks_poll_waiting", "Chunks that asked to run again later.", _STEP)
# Split by why, so neither reason hides the other: after a force-stop, the late results of
# steps still running are refused as expected; a lost lease is worth a look.
CHUNKS_REFUSED = Counter("chunkd_chunks_refused",
                         "Step results not recorded because the chunk was no longer this attempt's, by reason: "
                         "cancelled (a force-stop cancelled the chunk while its step ran) or lease_lost (the lease "
                         "expired, or another attempt took the chunk over).", ["reason"])
CHUNKS_RELEASED = Counter("chunkd_chunks_released", "Chunks handed back on shutdown without counting a failure.")

STEP_SECONDS = Histogram("chunkd_step_duration_seconds", "Time inside the user's step.", _STEP,
                         buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300))
CLAIM_BATCH = Histogram("chunkd_claim_batch_size", "Chunks returned per claim statement.",
                        buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 5000))
CLAIM_SIZE = Gauge("chunkd_claim_size",
                   "Chunks the partition's last claim asked for: CHUNKD_CLAIM_BATCH when set, else adapted to the "
                   "idle executors and the backlog (at most chunkd_setting{name=\"claim_batch\"}).", ["partition"])
SETTING = Gauge("chunkd_setting",
                "Claim and executor settings in effect on this daemon: partitions, partition_concurrency (executor "
                "workers per partition), claim_batch (the most one claim takes), completer_batch; adaptive_concurrency and "
                "adaptive_claim are 1 when CHUNKD_PARTITION_CONCURRENCY / CHUNKD_CLAIM_BATCH are unset and the "
                "daemon chose.", ["name"])
EXECUTOR_WORKERS = Gauge("chunkd_executor_workers",
                         "Executor workers per partition now: CHUNKD_PARTITION_CONCURRENCY when set, else grown "
                         "while every worker waits inside a step and shrunk when most are idle (at most "
                         "chunkd_setting{name=\"partition_concurrency\"}).", ["partition"])
FLUSH_SIZE = Histogram("chunkd_completer_flush_size", "Results written per completer transaction.",
                       buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 5000))
FLUSH_SECONDS = Histogram("chunkd_completer_flush_seconds", "Completer transaction latency.",
                          buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5))

CHUNKS_RETRIED = Counter("chunkd_chunks_retried", "ERRORED chunks released for another attempt.", _STEP)
CLAIM_TO_COMPLETE = Histogram("chunkd_claim_to_complete_seconds", "From claim to committed completion.", _STEP,
                              buckets=(.002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300))
MAILBOX_DEPTH = Gauge("chunkd_mailbox_depth", "Messages waiting in actor mailboxes.", ["kind"])
PARTITIONS_ASSIGNED = Gauge("chunkd_partitions_assigned", "Partitions this daemon consumes.")
POOL_SIZE = Gauge("chunkd_db_pool_size", "Connections open in the Postgres pool.")
POOL_IN_USE = Gauge("chunkd_db_pool_in_use", "Pool connections checked out.")
DB_QUIET_SECONDS = Gauge("chunkd_db_quiet_seconds",
                         "Seconds since a pool connection last finished a round trip with the database.")
DB_ABANDONED = Counter("chunkd_db_connections_abandoned",
                       "Database connections dropped because no round trip finished for the stall bound.")
INSTANCES = Gauge("chunkd_instances", "Job instances by status (exported by the maintenance leader).", ["status"])
INSTANCE_ETA = Gauge("chunkd_instance_eta_seconds",
                     "Longest ETA among running instances of a job (exported by the maintenance leader).", ["job"])
IN_FLIGHT = Gauge("chunkd_chunks_in_flight", "Chunks claimed by this daemon whose result is not committed yet.")
STEPS_RUNNING = Gauge("chunkd_steps_running",
                      "Steps running right now in this daemon, per partition: chunks whose step function is "
                      "executing (at most CHUNKD_PARTITION_CONCURRENCY each). Claimed chunks waiting in the "
                      "daemon's queue are not counted (chunkd_chunks_in_flight and chunkd_queue_chunks"
                      "{state=\"IN_PROGRESS\"} count every claimed chunk).", ["partition"])
ACTOR_RESTARTS = Counter("chunkd_actor_restarts", "Actor restarts by the supervisor.", ["kind"])

MAINTENANCE_SECONDS = Histogram("chunkd_maintenance_pass_seconds", "Maintenance pass duration.",
                                buckets=(.005, .01, .025, .05, .075, .1, .15, .25, .35, .5, .75, 1, 2.5, 10))
ADVANCE_SECONDS = Histogram("chunkd_maintenance_advance_seconds",
                            "Advancing pass duration: the instance advancer alone, run between full passes when "
                            "a step closed.", buckets=(.001, .0025, .005, .01, .025, .05, .075, .1, .15, .25, .5, 1, 2.5))
LEASES_RESCUED = Counter("chunkd_leases_rescued",
                         "Expired leases rescued by maintenance (back to READY, or FAILED at max attempts).")
TABLE_DEAD_ROWS = Gauge("chunkd_table_dead_rows",
                        "Dead row versions in each of chunkd's tables, as the server's statistics count them "
                        "(exported by the maintenance leader); they grow without bound if nothing vacuums.",
                        ["table"])
TABLE_UPKEEP = Counter("chunkd_table_upkeep",
                       "VACUUMs (kind=vacuum, with ANALYZE) and ANALYZEs chunkd ran on its own tables because "
                       "autovacuum is off for them (CHUNKD_VACUUM).", ["table", "kind"])
TABLE_UPKEEP_FAILURES = Counter("chunkd_table_upkeep_failures",
                                "VACUUMs and ANALYZEs of chunkd's tables that failed (see the log).", ["table"])
RETENTION_PURGED = Counter("chunkd_retention_purged", "Rows purged by retention.", ["table"])
KAFKA_LAG = Gauge("chunkd_kafka_consumer_lag", "Kafka consumer lag per assigned partition (kafka channel only).",
                  ["partition"])
IS_LEADER = Gauge("chunkd_maintenance_leader", "1 while this daemon is the maintenance leader.")
MAY_LEAD = Gauge("chunkd_maintenance_eligible",
                 "1 when this daemon may take the maintenance lead (CHUNKD_SCHEDULING=true), else 0.")
CHANNEL_STARVED = Gauge("chunkd_channel_starved",
                        "1 while this daemon has had no Kafka partition for over 18 s while READY chunks wait "
                        "(it then claims from every partition).")

# Cluster-wide queue figures from two cheap statements on the partial indexes, run by the
# maintenance leader with its other gauges (like chunkd_instances; others clear them), so
# they are never summed over daemons and the claim/complete hot path is untouched.
QUEUE_CHUNKS = Gauge("chunkd_queue_chunks",
                     "Chunks per partition in state READY, IN_PROGRESS (claimed: leased to a daemon, waiting in "
                     "its queue or running; chunkd_steps_running counts those running) or ERRORED (waiting for a "
                     "retry); exported by the maintenance leader.", ["partition", "state"])
QUEUE_OLDEST_READY = Gauge("chunkd_queue_oldest_ready_age_seconds",
                           "Age (since creation) of the oldest READY chunk per partition; 0 when none is READY. "
                           "Exported by the maintenance leader.", ["partition"])
REDUCTIONS = Counter("chunkd_reductions", "Reduction steps finished by this daemon's maintenance, by outcome.",
                     ["job", "outcome"])
INVARIANT_REFUSALS = Counter(
    "chunkd_invariant_refusals",
    "Moves of an instance (gate, FINALIZE, COMPLETED) that maintenance decided and SQL refused because not every "
    "chunk of the earlier steps was COMPLETED (rule 10). Should stay 0: anything else is a bug worth reporting.",
    ["job"])
REDUCTION_FAILURES = Counter(
    "chunkd_reduction_failures",
    "Failed reduction attempts by job and reason (statement timeout, idle-in-transaction timeout, lock timeout, "
    "error: the reducer raised; database unavailable: not counted against max_attempts). The reduction runs "
    "again after a backoff until its step's max_attempts, then the instance FAILS.", ["job", "reason"])
REDUCTIONS_RETRYING = Gauge("chunkd_reductions_retrying",
                            "Instances whose reduction failed and waits to run again (exported by the maintenance "
                            "leader); see reduction_attempts and last_error on the instance.")
SCHEDULE_FIRE_FAILURES = Counter("chunkd_schedule_fire_failures",
                                 "Failed attempts to fire a schedule's occurrence, by schedule and reason.",
                                 ["schedule", "reason"])
GATES_ADVANCED = Counter("chunkd_gates_advanced", "Gates opened by maintenance (the next step's chunks became READY).",
                         _STEP)
LEADER_CHANGES = Counter("chunkd_maintenance_leader_changes",
                         "Times this daemon took (acquired) or lost (lost, also on shutdown) the maintenance lead.", ["change"])
HTTP_SECONDS = Histogram("chunkd_http_request_duration_seconds",
                         "HTTP request latency by route template (unmatched for unknown paths), method and status code.",
                         ["route", "method", "status"],
                         buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
READY = Gauge("chunkd_ready",
              "1 when /readyz would answer 200 (database reachable, channel connected, migrated, not "
              "stopping), 0 otherwise; evaluated at each scrape of /metrics.")


def _version() -> str:
    try:
        return version("chunkd")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


BUILD = Info("chunkd_build", "Build information.")
BUILD.info({"version": _version(), "python": platform.python_version()})
