"""The benchmarks' own statements (the runtime's are all in storage/sql.py): a seeded
backlog, the figures the harness and its workloads read back, and their scratch databases.
States come from `storage.states`, as in storage/sql.py, never spelled by hand."""
from __future__ import annotations

from storage.states import INSTANCE_TERMINAL, C, I

_TERMINAL = ", ".join(repr(s.value) for s in sorted(INSTANCE_TERMINAL, key=lambda s: s.value))

# ------------------------------------------------------------ scratch databases (benchmarks/databases.py)
DATABASE_EXISTS = "SELECT true FROM pg_database WHERE datname = $1"
# Identifiers cannot be parameters: the caller quotes the name (databases.quoted).
DATABASE_CREATE = "CREATE DATABASE {name}"
DATABASE_DROP = "DROP DATABASE IF EXISTS {name} WITH (FORCE)"

# ------------------------------------------------------------ a seeded backlog and the drain's figures (benchmarks/seed.py, benchmarks/figures.py)
ANALYZE_CHUNKS = "ANALYZE chunkd_chunk"
INSTANCE_IN_PROGRESS = f"""
INSERT INTO chunkd_instance (job_name, job_version, params, gated, status, started_at)
VALUES ($1, $2, $3::jsonb, false, '{I.IN_PROGRESS.value}', now()) RETURNING id"""
INSTANCE_STATUS = "SELECT status FROM chunkd_instance WHERE id = $1"
LATENCY = f"""
SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM completed_at - claimed_at)::float8)
FROM chunkd_chunk WHERE instance_id = $1 AND step = $2 AND state = {int(C.COMPLETED)}"""
COMPLETED = "SELECT completed, failed FROM chunkd_step_counter WHERE instance_id = $1 AND step = $2"
TABLE_BYTES = "SELECT pg_total_relation_size('chunkd_chunk')"
XACTS = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
WAL_POSITION = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"
SYNC = "SHOW synchronous_commit"
SERVER = "SHOW server_version"

# ------------------------------------------------------------ the jobs workload: figures for its own instances (benchmarks/figures.py)
JOBS_PROGRESS = """
SELECT coalesce(sum(completed + failed), 0)::bigint FROM chunkd_step_counter
WHERE instance_id = ANY($1::bigint[]) AND step = $2"""
JOBS_FINISHED = f"""
SELECT count(*) FILTER (WHERE status IN ({_TERMINAL})),
       count(*) FILTER (WHERE status = '{I.COMPLETED.value}')
FROM chunkd_instance WHERE id = ANY($1::bigint[])"""
# Submit -> COMPLETED from the client's own start time of each submit (the scheduled one under
# --rate), so time spent queued in the client counts; same machine, same clock.
JOBS_INSTANCE_LATENCY = f"""
SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM i.finished_at)::float8 - s.t),
       max(extract(epoch FROM i.finished_at)::float8)
FROM unnest($1::bigint[], $2::float8[]) AS s(id, t) JOIN chunkd_instance i ON i.id = s.id
WHERE i.status = '{I.COMPLETED.value}'"""
# A chunk's life: created (its parent step completed) -> completed, and claim -> complete;
# and when the 10% and 90% of them had completed (the sustained rate, warm-up and tail out).
JOBS_CHUNK_LATENCY = f"""
SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM completed_at - created_at)::float8),
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM completed_at - claimed_at)::float8),
       count(*),
       percentile_disc(ARRAY[0.1, 0.9]) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at)::float8)
FROM chunkd_chunk WHERE instance_id = ANY($1::bigint[]) AND step = $2 AND state = {int(C.COMPLETED)}"""

# ------------------------------------------------------------ the soak's samples (benchmarks/soak.py)
# Chunks of the instances submitted in the last window (found through the index on instance_id).
SOAK_CHUNK_LATENCY = f"""
SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM completed_at - created_at)::float8)
FROM chunkd_chunk WHERE instance_id = ANY($1::bigint[]) AND step = $2 AND state = {int(C.COMPLETED)}"""
SOAK_TABLES = """
SELECT s.relname AS name, s.n_live_tup AS live, s.n_dead_tup AS dead, pg_relation_size(s.relid) AS table_bytes,
       pg_indexes_size(s.relid) AS index_bytes, s.autovacuum_count AS autovacuums
FROM pg_stat_user_tables s WHERE s.relname LIKE 'chunkd\\_%' ORDER BY s.relname"""
SOAK_INDEXES = """
SELECT indexrelname AS name, pg_relation_size(indexrelid) AS bytes, idx_scan AS scans
FROM pg_stat_user_indexes WHERE relname LIKE 'chunkd\\_%' ORDER BY indexrelname"""
SOAK_CONNECTIONS = "SELECT count(*) - 1 FROM pg_stat_activity WHERE datname = current_database()"
SOAK_NOTIFY_QUEUE = "SELECT round(pg_notification_queue_usage()::numeric, 6)::float8"
SOAK_INSTANCES = "SELECT count(*) FROM chunkd_instance"
# The lookup of one instance's chunks the API's instance view makes (every submit answers with
# it): pages it reads, for an instance of the last window. Grows if the index loses precision.
SOAK_LOOKUP = """
EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
SELECT step, state, count(*) FROM chunkd_chunk WHERE instance_id = $1 GROUP BY step, state"""
