"""Every SQL statement the chunkd runtime runs, in one place, grouped by topic (the headers
below): the engine's statements first, then those of schedules, retention and the catalog
checks, each named after the module that runs it. (The one exception is channels/postgres.py's
pg_notify: channels never import storage.) What is not runtime keeps its own: benchmarks/sql.py
holds the benchmarks' statements, daemon/cli/demo_data.py the demo dataset's.

Every state in a statement comes from `storage.states`: guards from the table of legal
moves, names and numbers from the enums, so no statement spells a state by hand.
"""
from __future__ import annotations

from storage.states import (
    INSTANCE_TERMINAL,
    RESTARTABLE,
    SETBACK_BY_ATTEMPTS,
    SUSPECT_AFTER,
    C,
    I,
    chunk_allowed_from,
    instance_allowed_from,
)


def _in(values: list[int] | list[str]) -> str:
    return ", ".join(repr(v) if isinstance(v, str) else str(v) for v in values)


_ACTIVE = _in(sorted(s.value for s in I if s not in INSTANCE_TERMINAL))           # not ended yet
_TERMINAL = _in(sorted(s.value for s in INSTANCE_TERMINAL))                       # ended
_ENDED_OK = _in(sorted(s.value for s in INSTANCE_TERMINAL if s is not I.FAILED))  # kept CHUNKD_RETENTION


# ---------------------------------------------------------------- migrations
MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(hashtext('chunkd.migrate'))"
MIGRATION_TABLE = """
CREATE TABLE IF NOT EXISTS chunkd_migration (
    version    int PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
MIGRATIONS_APPLIED = "SELECT version FROM chunkd_migration ORDER BY version"
MIGRATION_RECORD = "INSERT INTO chunkd_migration (version, name) VALUES ($1, $2)"
MIGRATION_TABLE_EXISTS = "SELECT to_regclass('chunkd_migration') IS NOT NULL"

PING = "SELECT 1"
DB_NOW = "SELECT statement_timestamp()"

# ---------------------------------------------------------------- nodes, leader
# $3: the schedules this daemon's job modules declare (see migration 0016, SCHEDULE_ORPHAN_SWEEP).
NODE_REGISTER = "INSERT INTO chunkd_node (name, pid, declared_schedules) VALUES ($1, $2, $3::text[]) RETURNING id"
# The heartbeat: one UPDATE extends every lease this process holds.
# Only the chunks this process still tracks: a chunk its actors lost must expire.
# SKIP LOCKED: a locked chunk is being written (completed, set back), so it is leaving
# IN_PROGRESS. Waiting for it stalled every other lease of the daemon behind one
# transaction, and deadlocked with completions that lock in another order (Postgres's log,
# heartbeat against CHUNK_SETBACK and CHUNK_COMPLETE). A write that rolls back leaves its
# chunk for the next beat, within its lease (by default three beats long).
NODE_HEARTBEAT = f"""
WITH beat AS (UPDATE chunkd_node SET heartbeat_at = now(), partitions = $4::smallint[],
                                     in_flight = cardinality($3::bigint[]) WHERE id = $1),
mine AS (SELECT id FROM chunkd_chunk
         WHERE state = {int(C.IN_PROGRESS)} AND lease_owner = $1 AND id = ANY($3::bigint[])
         FOR UPDATE SKIP LOCKED)
UPDATE chunkd_chunk k SET lease_until = now() + make_interval(secs => $2)
FROM mine WHERE k.id = mine.id"""
# Chunks this node owns but no longer tracks (a claim whose reply was lost with its
# connection, a batch lost with a crashed actor) and that the last beats did not
# extend: hand them back now instead of waiting out the lease. Fresh claims are excluded
# by their lease_until, which the claim set to now() + lease. Like an expired lease, this
# re-run counts towards max_attempts: a result that crashes our completer every time must
# end FAILED, not run forever.
NODE_RELEASE_ORPHANS = f"""
UPDATE chunkd_chunk
   SET state = CASE WHEN failures + 1 >= max_attempts THEN {int(C.FAILED)} ELSE {int(C.READY)} END,
       failures = failures + 1, lease_owner = NULL, lease_until = NULL,
       error_message = 'the daemon lost this chunk''s result (an internal error; attempt ' || attempt || ')',
       error_attempt = attempt
WHERE state = {int(C.IN_PROGRESS)} AND lease_owner = $1 AND NOT (id = ANY($2::bigint[]))
  AND lease_until < now() + make_interval(secs => $3)
RETURNING instance_id, step, state, partition"""
NODE_DELETE = "DELETE FROM chunkd_node WHERE id = $1"
# Daemons seen within $1 seconds, with the one holding the maintenance lease marked.
NODE_LIST = """
SELECT n.id, n.name, n.pid, n.started_at, n.heartbeat_at, n.partitions, n.in_flight,
       extract(epoch FROM now() - n.heartbeat_at)::float8 AS seen_seconds_ago,
       (l.node_id IS NOT NULL) AS leader
FROM chunkd_node n
LEFT JOIN chunkd_leader l ON l.role = 'maintenance' AND l.node_id = n.id AND l.lease_until > now()
WHERE n.heartbeat_at > now() - make_interval(secs => $1)
ORDER BY n.name, n.id"""
NODE_PURGE_STALE = "DELETE FROM chunkd_node WHERE heartbeat_at < now() - make_interval(secs => $1)"

# The leader's fencing token, checked inside each of its writing transactions just before
# commit: this node still holds the term it started with. A takeover increments the term,
# and FOR SHARE makes it (LEADER_ACQUIRE updates the row) wait until this transaction ends,
# so a deposed leader's work commits before the new term begins or not at all. An expired
# lease that nobody took over is still this node's term: nobody else can have acted.
LEADER_FENCE = """
SELECT 1 FROM chunkd_leader WHERE role = 'maintenance' AND node_id = $1 AND term = $2
FOR SHARE"""

LEADER_ACQUIRE = """
INSERT INTO chunkd_leader AS l (role, node_id, term, lease_until)
VALUES ('maintenance', $1, 1, now() + make_interval(secs => $2))
ON CONFLICT (role) DO UPDATE
   SET node_id = EXCLUDED.node_id,
       term = CASE WHEN l.node_id = EXCLUDED.node_id THEN l.term ELSE l.term + 1 END,
       lease_until = EXCLUDED.lease_until
 WHERE l.node_id = EXCLUDED.node_id OR l.lease_until < now()
RETURNING term"""
# Does any daemon hold an unexpired maintenance lease? (/readyz: is anything advancing)
LEADER_HELD = "SELECT EXISTS (SELECT 1 FROM chunkd_leader WHERE role = 'maintenance' AND lease_until > now())"
LEADER_RESIGN = "DELETE FROM chunkd_leader WHERE role = 'maintenance' AND node_id = $1"

# ---------------------------------------------------------------- session limits
# The database's own limits for this role and database (a DBA's ALTER DATABASE/ROLE SET,
# postgresql.conf, the DSN's options), read once on a connection without chunkd's own.
SESSION_LIMITS = """
SELECT current_setting('statement_timeout'), current_setting('lock_timeout'),
       current_setting('idle_in_transaction_session_timeout'),
       extract(epoch FROM current_setting('idle_in_transaction_session_timeout')::interval)::float8"""
# For the rest of the current transaction (SET LOCAL): $1-$3 as SESSION_LIMITS returned them.
SESSION_LIMITS_SET = """
SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $2, true),
       set_config('idle_in_transaction_session_timeout', $3, true)"""

# ---------------------------------------------------------------- instances
# Creating instances (storage.store.insert_instances): ids first, so each inserted row is
# known by its position, keyed or not; then every row in one statement.
INSTANCE_IDS = "SELECT nextval(pg_get_serial_sequence('chunkd_instance', 'id')) FROM generate_series(1, $1)"
INSTANCE_INSERT_MANY = """
INSERT INTO chunkd_instance (id, job_name, job_version, params, gated, idempotency_key, idempotency_request, priority)
OVERRIDING SYSTEM VALUE
SELECT d.id, d.job, d.version, d.params::jsonb, d.gated, d.ikey, d.ireq::jsonb, d.priority
FROM unnest($1::bigint[], $2::text[], $3::int[], $4::text[], $5::bool[], $6::text[], $7::text[], $8::smallint[])
     AS d(id, job, version, params, gated, ikey, ireq, priority)
ORDER BY d.id
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id"""
INSTANCE_IDS_BY_KEYS = "SELECT idempotency_key, id FROM chunkd_instance WHERE idempotency_key = ANY($1::text[])"
INSTANCE_GET = "SELECT * FROM chunkd_instance WHERE id = $1"
# The API's view of one instance in one round trip: the row, its step counters, its chunks
# per step and state, and its first $2 warnings.
INSTANCE_DETAIL = """
SELECT i.*,
  (SELECT array_agg(ARRAY[c.step, c.created, c.completed, c.failed, c.cancelled, c.errors]::bigint[] ORDER BY c.step)
     FROM chunkd_step_counter c WHERE c.instance_id = i.id) AS detail_counters,
  (SELECT array_agg(ARRAY[s.step, s.state, s.n]::bigint[] ORDER BY s.step, s.state)
     FROM (SELECT step, state, count(*) AS n FROM chunkd_chunk WHERE instance_id = i.id GROUP BY step, state) s
  ) AS detail_chunk_states,
  (SELECT array_agg(w.message ORDER BY w.id)
     FROM (SELECT id, message FROM chunkd_warning WHERE instance_id = i.id ORDER BY id LIMIT $2) w) AS detail_warnings
FROM chunkd_instance i WHERE i.id = $1"""
INSTANCE_RUNTIME = "SELECT id, job_name, job_version, params::text AS params, gated, status FROM chunkd_instance WHERE id = $1"
# KEY SHARE: no conflict with maintenance's progress updates, but ordered against a
# cancel/fail, which takes INSTANCE_LOCK (FOR UPDATE) first.
INSTANCE_STATUS_FOR_SHARE = "SELECT id, status FROM chunkd_instance WHERE id = ANY($1::bigint[]) ORDER BY id FOR KEY SHARE"
INSTANCE_LOCK = "SELECT id FROM chunkd_instance WHERE id = $1 FOR UPDATE"
# Of the instances whose chunks a daemon holds, those that ended (cancelled, failed): their
# queued chunks must not start and their running steps are told (actors/stopper.py).
INSTANCES_ENDED_AMONG = f"""
SELECT id FROM chunkd_instance
WHERE id = ANY($1::bigint[]) AND status IN ({_TERMINAL})"""
# A claim's instances: $1 QUEUED -> IN_PROGRESS, and the runtimes of $2 (as INSTANCE_RUNTIME, as of before).
INSTANCES_START_AND_LOAD = f"""
WITH started AS (
    UPDATE chunkd_instance SET status = '{I.IN_PROGRESS.value}', started_at = now(), updated_at = now()
    WHERE id = ANY($1::bigint[]) AND status = '{I.QUEUED.value}'
    RETURNING id)
SELECT id, job_name, job_version, params::text AS params, gated, status FROM chunkd_instance WHERE id = ANY($2::bigint[])"""
INSTANCE_ACTIVE_LIST = f"""
SELECT id, job_name, job_version, params::text AS params, gated, status, current_step,
       extract(epoch FROM (now() - coalesce(started_at, created_at)))::float8 AS elapsed, run
FROM chunkd_instance WHERE status IN ({_ACTIVE})
ORDER BY id"""
# The same, for some instances only: those a pass looks at (actors/advancer.py).
INSTANCE_ACTIVE_AMONG = f"""
SELECT id, job_name, job_version, params::text AS params, gated, status, current_step,
       extract(epoch FROM (now() - coalesce(started_at, created_at)))::float8 AS elapsed, run
FROM chunkd_instance WHERE id = ANY($1::bigint[]) AND status IN ({_ACTIVE})
ORDER BY id"""
# The instances whose counters changed since the last take (migration 0018). SKIP LOCKED:
# a marker a writer holds (its change not committed yet) stays for the next pass, and the
# take never waits on a completion (nor it on us in a cycle).
INSTANCES_TAKE_DIRTY = """
DELETE FROM chunkd_instance_dirty
WHERE instance_id IN (SELECT instance_id FROM chunkd_instance_dirty FOR UPDATE SKIP LOCKED)
RETURNING instance_id"""
# A change no counter shows (a restart of an instance whose reduction failed): the next
# pass looks at the instance all the same.
INSTANCE_MARK_DIRTY = """
INSERT INTO chunkd_instance_dirty AS d (instance_id) VALUES ($1)
ON CONFLICT (instance_id) DO UPDATE SET instance_id = d.instance_id"""
INSTANCE_COUNTERS = """
SELECT instance_id, step, created, completed, failed, cancelled, errors
FROM chunkd_step_counter WHERE instance_id = ANY($1::bigint[]) ORDER BY instance_id, step"""
INSTANCE_HAS_ERRORED_CHUNKS = f"""
SELECT DISTINCT instance_id FROM chunkd_chunk WHERE state = {int(C.ERRORED)} AND instance_id = ANY($1::bigint[])"""
# Rule 10's invariant, checked in the statement that moves an instance on: every chunk of
# its steps below `bound` COMPLETED (FAILED too where the job tolerates failed chunks), read
# from the step counters, which change in the same transaction as every chunk state. A
# decision made on stale reads (a stop and a restart in between) cannot open a gate or finish
# an instance over chunks that did not run.
def _all_done_below(instance: str, bound: str, tolerate_failed: str) -> str:
    return f"""NOT EXISTS (
    SELECT 1 FROM chunkd_step_counter sc
    WHERE sc.instance_id = {instance} AND sc.step < {bound}
      AND sc.completed + CASE WHEN {tolerate_failed} THEN sc.failed ELSE 0 END < sc.created)"""


# Maintenance writes each kind of decision for all instances of a pass in one statement,
# each row fenced by the run it was decided for ($4).
INSTANCES_SET_STATUS = """
UPDATE chunkd_instance i SET status = $2, updated_at = now()
FROM unnest($1::bigint[], $4::int[]) AS t(id, run)
WHERE i.id = t.id AND i.run = t.run AND i.status = ANY($3::text[])
RETURNING i.id"""
# -> FINALIZE: only when every work step's chunks are done ($2: work steps, $3: tolerated).
INSTANCES_FINALIZE = f"""
UPDATE chunkd_instance i SET status = '{I.FINALIZE.value}', updated_at = now()
FROM unnest($1::bigint[], $4::int[], $2::int[], $3::bool[]) AS t(id, run, bound, tolerate)
WHERE i.id = t.id AND i.run = t.run AND i.status IN ({_in(instance_allowed_from(I.FINALIZE))})
  AND {_all_done_below("i.id", "t.bound", "t.tolerate")}
RETURNING i.id"""
INSTANCES_PROGRESS = f"""
UPDATE chunkd_instance i
   SET progress = t.progress, chunks_per_second = t.rate, eta_seconds = t.eta, error_count = t.errors,
       updated_at = now()
FROM unnest($1::bigint[], $2::float8[], $3::float8[], $4::float8[], $5::int[]) AS t(id, progress, rate, eta, errors)
WHERE i.id = t.id AND i.status IN ({_ACTIVE})"""
INSTANCES_ADVANCE_GATE = f"""
UPDATE chunkd_instance i SET current_step = t.to_step, updated_at = now()
FROM unnest($1::bigint[], $2::int[], $3::int[], $4::bool[]) AS t(id, to_step, run, tolerate)
WHERE i.id = t.id AND i.current_step = t.to_step - 1 AND i.run = t.run
  AND i.status IN ('{I.QUEUED.value}', '{I.IN_PROGRESS.value}', '{I.ERRORED.value}')
  AND {_all_done_below("i.id", "t.to_step", "t.tolerate")}
RETURNING i.id, i.current_step"""
# Maintenance's COMPLETED for many instances (those without a reduction) in one statement,
# as INSTANCE_FINISH's to COMPLETED: each fenced by its run and by rule 10's check; the
# rows are locked first (INSTANCES_LOCK), as INSTANCE_LOCK does for one.
INSTANCES_LOCK = "SELECT id FROM chunkd_instance WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE"
INSTANCES_COMPLETE = f"""
UPDATE chunkd_instance i
   SET status = '{I.COMPLETED.value}', finished_at = now(), updated_at = now(), progress = 1.0, eta_seconds = 0
  FROM unnest($1::bigint[], $2::int[], $3::int[], $4::bool[]) AS t(id, run, bound, tolerate)
 WHERE i.id = t.id AND i.run = t.run AND i.status IN ({_in(instance_allowed_from(I.COMPLETED))})
   AND {_all_done_below("i.id", "t.bound", "t.tolerate")}
RETURNING i.id"""
# Many reductions' reports at once: INSTANCE_FINISH's move FINALIZE -> COMPLETED for each
# row, fenced by its run and rule 10's check (the rows locked first, INSTANCES_LOCK).
INSTANCES_FINISH_REDUCED = f"""
UPDATE chunkd_instance i
   SET status = '{I.COMPLETED.value}', finished_at = now(), updated_at = now(), progress = 1.0, eta_seconds = 0,
       report = t.report::jsonb
  FROM unnest($1::bigint[], $2::int[], $3::int[], $4::bool[], $5::text[]) AS t(id, run, bound, tolerate, report)
 WHERE i.id = t.id AND i.run = t.run AND i.status = '{I.FINALIZE.value}'
   AND {_all_done_below("i.id", "t.bound", "t.tolerate")}
RETURNING i.id"""
# $6: the run the decision was made for (NULL: an operator's stop, whatever the run).
# $7, $8: to COMPLETED, only when every chunk of the steps below $7 is done (rule 10).
INSTANCE_FINISH = f"""
UPDATE chunkd_instance i
   SET status = $2, finished_at = now(), updated_at = now(),
       progress = CASE WHEN $2 = '{I.COMPLETED.value}' THEN 1.0 ELSE progress END,
       eta_seconds = CASE WHEN $2 = '{I.COMPLETED.value}' THEN 0 ELSE NULL END,
       report = coalesce($4::jsonb, report),
       error_message = coalesce($5, error_message)
 WHERE id = $1 AND status = ANY($3::text[]) AND ($6::int IS NULL OR run = $6)
   AND ($2 <> '{I.COMPLETED.value}' OR {_all_done_below("i.id", "$7::int", "$8::bool")})
RETURNING id"""
# A failed reduction attempt (migration 0017): counted and shown on the instance while it
# retries; only while the instance is still in FINALIZE. $3: count it (a failure of the
# work), or only show it (the database went away).
INSTANCE_REDUCTION_FAILED = f"""
UPDATE chunkd_instance
   SET reduction_attempts = reduction_attempts + CASE WHEN $3 THEN 1 ELSE 0 END, last_error = $2,
       updated_at = now()
 WHERE id = $1 AND status = '{I.FINALIZE.value}' AND run = $4
RETURNING reduction_attempts"""
INSTANCE_LAST_ERROR = f"""
SELECT step, error_message, id, coalesce(error_attempt, attempt) FROM chunkd_chunk
WHERE instance_id = $1 AND state IN ({int(C.FAILED)}, {int(C.ERRORED)}) AND error_message IS NOT NULL
ORDER BY (state = {int(C.FAILED)}) DESC, id LIMIT 1"""
WARNING_INSERT = """
INSERT INTO chunkd_warning (instance_id, chunk_id, message)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[])"""
WARNING_LIST = "SELECT message FROM chunkd_warning WHERE instance_id = $1 ORDER BY id LIMIT $2"

# ---------------------------------------------------------------- chunks
# $7: each chunk's ordinal among its instance's chunks of this insert. Its rank is its
# partition's virtual clock plus rank_offset(ordinal, the instance's priority stride)
# (migrations 0012, 0013). One lookup per distinct instance, not per chunk.
# Instances take turns by QUANTUM chunks, not one by one: the chunks of one quantum share a
# rank (ties go by id, i.e. insertion order), so a job of up to QUANTUM chunks is served FIFO
# among its peers, a claim batch touches a few instances rather than hundreds (per-instance
# costs: counters, instance locks, progress), and a big job yields to a newcomer after at
# most one quantum (QUANTUM / partitions chunks per partition).
PRIORITY_STRIDE_SQL = "(64 >> (priority + 3))"
DEFAULT_STRIDE = 8  # priority 0
QUANTUM = 256


def rank_offset(ordinal: int, stride: int = DEFAULT_STRIDE) -> int:
    return ordinal // QUANTUM * QUANTUM * stride


CHUNK_INSERT = f"""
WITH d AS (
    SELECT * FROM unnest($1::bigint[], $2::smallint[], $3::smallint[], $4::smallint[], $5::smallint[], $6::bytea[],
                         $7::bigint[]) AS d(i, s, st, p, m, data, o)
), stride AS (
    SELECT id, {PRIORITY_STRIDE_SQL} AS n FROM chunkd_instance WHERE id IN (SELECT DISTINCT i FROM d)
)
INSERT INTO chunkd_chunk (instance_id, step, state, partition, max_attempts, data, rank)
SELECT d.i, d.s, d.st, d.p, d.m, d.data,
       coalesce(c.vtime, 0) + d.o / {QUANTUM} * {QUANTUM} * coalesce(stride.n, {DEFAULT_STRIDE})
FROM d LEFT JOIN stride ON stride.id = d.i LEFT JOIN chunkd_partition_clock c ON c.partition = d.p"""
INSTANCE_STRIDES = f"SELECT id, {PRIORITY_STRIDE_SQL} FROM chunkd_instance WHERE id = ANY($1::bigint[])"
# COPY (large inserts) cannot join: the caller reads the clocks first and adds them itself.
CHUNK_COPY_COLUMNS = ("instance_id", "step", "state", "partition", "max_attempts", "data", "rank")
PARTITION_CLOCKS = "SELECT partition, vtime FROM chunkd_partition_clock WHERE partition = ANY($1::smallint[])"

# With $6 (this daemon runs no suspect now) the batch may include one suspect: a chunk
# orphaned SUSPECT_AFTER times in a row (see migration 0008); the batch never exceeds $2.
# With $6 false the suspect branch is a one-time filter that costs nothing on the hot path.
#
# Fair share: READY chunks are taken in (rank, id) order from the cursor ($5, $7) (see
# migration 0012 and actors/consumer.ClaimCursor), and the claim advances the partition's
# virtual clock to the highest rank it took, so chunks inserted later rank level with what
# is claimed next. The clock row is ticked only if no other claim holds it (SKIP LOCKED):
# claims never wait for each other, and a missed tick only makes a newcomer rank earlier.
# Every LIMIT is the plain parameter $2, which the planner of a connection's first five
# (custom) executions sees: with `$2 - (SELECT count(*) FROM suspect)` it could not, and those
# plans hashed a sequential scan of the whole table into the join (~60 ms per claim at a 100k
# backlog, ~10x at 1M). A suspect may make `normal` lock one row more than the batch takes;
# that lock ends with the statement. (Finding the rows by id = ANY(ARRAY(...)) instead of the
# join avoided the scan too, but made claims 3x slower under a steady stream of new jobs: its
# plans walked the READY index for the ids.) `k.state + 0`: the update's state check proves
# nothing about the READY index's predicate (state = 2), or a plan made on a nearly empty table
# (each connection caches a generic one after five runs) may fetch the picked rows through a
# bitmap scan of every READY chunk once per picked row: 0.1-1.2 s per claim in the 200-chunk
# benchmark's slow runs. So the rows are found by primary key whatever the statistics.
CHUNK_CLAIM = f"""
WITH suspect AS (
    SELECT id FROM chunkd_chunk
    WHERE $6::bool AND state = {int(C.READY)} AND orphaned >= {SUSPECT_AFTER} AND partition = $1
    ORDER BY id LIMIT 1
    FOR UPDATE SKIP LOCKED
), normal AS (
    SELECT id FROM chunkd_chunk
    WHERE state = {int(C.READY)} AND orphaned < {SUSPECT_AFTER} AND partition = $1 AND (rank, id) >= ($5, $7)
    ORDER BY rank, id LIMIT $2
    FOR UPDATE SKIP LOCKED
), picked AS (SELECT id FROM (SELECT id FROM suspect UNION ALL SELECT id FROM normal) u LIMIT $2),
claimed AS (
    UPDATE chunkd_chunk k
       SET state = {int(C.IN_PROGRESS)}, attempt = k.attempt + 1, claimed_at = now(),
           lease_owner = $3, lease_until = now() + make_interval(secs => $4)
      FROM picked
     WHERE k.id = picked.id AND k.state + 0 IN ({_in(chunk_allowed_from(C.IN_PROGRESS))})
    RETURNING k.id, k.instance_id, k.step, k.attempt, k.failures, k.data, k.orphaned, k.rank
), clock AS (
    SELECT partition FROM chunkd_partition_clock WHERE partition = $1 FOR UPDATE SKIP LOCKED
), tick AS (
    UPDATE chunkd_partition_clock c SET vtime = m.top
      FROM (SELECT max(rank) AS top FROM claimed) m, clock
     WHERE c.partition = clock.partition AND m.top > c.vtime
)
SELECT id, instance_id, step, attempt, failures, data, orphaned, rank FROM claimed"""
# Before an orphaned chunk runs: which attempt really started (see migration 0008).
CHUNK_MARK_STARTED = "UPDATE chunkd_chunk SET started_attempt = $2 WHERE id = $1 AND attempt = $2"

# No join with unnest(): with the in-progress rows' statistics always stale, the planner
# picked a nested loop comparing every pair (O(batch^2) tuples, ~200 ms per 1,000). An index
# lookup per id, and the fencing token found by width_bucket: a binary search, so $1 must be
# sorted ascending without duplicates (Store.record_outcomes sends it so). array_position's
# linear walk made this O(batch^2) comparisons again, ~10% of the backend's CPU in a drain.
_COMPLETE = f"""
UPDATE chunkd_chunk k
   SET state = {int(C.COMPLETED)}, data = NULL, lease_owner = NULL, lease_until = NULL,
       completed_at = now()  -- error_message, error_attempt: the last error, kept visible (0016)
 WHERE k.id = ANY($1::bigint[]) AND k.attempt = ($2::int[])[width_bucket(k.id, $1::bigint[])]
   AND k.state IN ({_in(chunk_allowed_from(C.COMPLETED, frozenset({C.IN_PROGRESS})))})"""
CHUNK_COMPLETE = f"{_COMPLETE}\nRETURNING k.id"
# A step counter row whose every chunk has ended (the row as the statement left it).
_STEP_CLOSED = "c.created = c.completed + c.failed + c.cancelled"
# The common batch (results with nothing but their success: no children, writes, warnings,
# setbacks) in one statement, so one round trip and no BEGIN/COMMIT: the instances held FOR
# KEY SHARE first (the one-time filter runs before the update, as INSTANCE_STATUS_FOR_SHARE
# did), then the fenced completions, and the COMPLETED counters from exactly the rows that
# changed, in the same transaction (rule 10), in (instance, step) order like COUNTERS_ADD.
CHUNK_COMPLETE_COUNTED = f"""
WITH held AS (
    SELECT id FROM chunkd_instance WHERE id = ANY($3::bigint[]) ORDER BY id FOR KEY SHARE
), done AS ({_COMPLETE}
   AND (SELECT count(*) FROM held) >= 0
RETURNING k.id, k.instance_id, k.step
), counted AS (
    INSERT INTO chunkd_step_counter AS c (instance_id, step, completed)
    SELECT instance_id, step, count(*) FROM done GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (instance_id, step) DO UPDATE SET completed = c.completed + EXCLUDED.completed
    RETURNING c.instance_id, c.step, {_STEP_CLOSED} AS closed
)
SELECT d.id, coalesce(k.closed, false) AS closed FROM done d LEFT JOIN counted k USING (instance_id, step)"""

# Of results refused by the fencing token (a rare path), those whose own attempt was cancelled
# (a force-stop cancelled the chunk while its step ran) rather than taken over by another.
CHUNKS_REFUSED_CANCELLED = f"""
SELECT count(*) FROM chunkd_chunk k JOIN unnest($1::bigint[], $2::int[]) AS r(id, attempt)
  ON k.id = r.id AND k.attempt = r.attempt
WHERE k.state = {int(C.CANCELLED)}"""

# Errors, failures and poll-waits in one fenced statement; the target state per row
# is computed in Python (storage.retry) and checked here against the table, or, with
# SETBACK_BY_ATTEMPTS, decided here from the row's own failures and max_attempts.
#
# Rule 11: the instance decides too. Of an ended instance (cancelled, failed), any setback is
# recorded CANCELLED and never retried, whatever the step did after the cancel (returned,
# raised). A release as CANCELLED that finds the instance running again (a restart came
# after the stop this daemon heard of) hands the chunk back READY instead: it belongs to the
# new run. The caller holds the instances FOR KEY SHARE, so a stop or restart is ordered
# before or after this statement, never across it.
CHUNK_SETBACK = f"""
UPDATE chunkd_chunk k
   SET state = CASE WHEN i.status IN ({_TERMINAL}) THEN {int(C.CANCELLED)}
                    WHEN d.state = {int(C.CANCELLED)} THEN {int(C.READY)}
                    WHEN d.state <> {SETBACK_BY_ATTEMPTS} THEN d.state
                    WHEN k.failures + 1 >= k.max_attempts THEN {int(C.FAILED)} ELSE {int(C.ERRORED)} END,
       failures = k.failures + CASE WHEN i.status IN ({_TERMINAL})
                                         OR d.state = {int(C.CANCELLED)} THEN 0 ELSE d.failure END,
       error_message = coalesce(d.message, k.error_message),
       error_trace = CASE WHEN d.message IS NULL THEN k.error_trace ELSE d.trace END,
       error_attempt = CASE WHEN d.message IS NULL THEN k.error_attempt ELSE k.attempt END,  -- 0016
       orphaned = CASE WHEN d.failure > 0 THEN 0 ELSE k.orphaned END,  -- it ran and raised: not a killer
       next_run_at = now() + make_interval(secs => d.delay), lease_owner = NULL, lease_until = NULL
  FROM unnest($1::bigint[], $2::int[], $3::smallint[], $4::smallint[], $5::float8[], $6::text[], $7::text[])
       AS d(id, attempt, state, failure, delay, message, trace), chunkd_instance i
 WHERE k.id = d.id AND k.attempt = d.attempt AND k.state = {int(C.IN_PROGRESS)} AND i.id = k.instance_id
   AND d.state IN ({int(C.ERRORED)}, {int(C.FAILED)}, {int(C.POLL_WAITING)}, {int(C.CANCELLED)}, {SETBACK_BY_ATTEMPTS})
RETURNING k.id, k.instance_id, k.step, k.state, k.partition"""

# Lease expired: the worker died or froze. Counts as a failure (poison chunks end FAILED) and
# towards the chunk becoming a suspect, for the chunks that may have been running: all of
# them the first time, then those whose start was recorded (see migration 0008).
# Of an ended instance (a plain cancel leaves running chunks running), the chunk ends
# CANCELLED instead (rule 11); the instances are held FOR KEY SHARE so that a restart
# (INSTANCE_LOCK) is ordered before or after this statement, and their status read is current.
CHUNK_RESCUE_EXPIRED = f"""
WITH expired AS (
    SELECT id, instance_id, (orphaned = 0 OR started_attempt IS NOT DISTINCT FROM attempt) AS blamed
    FROM chunkd_chunk
    WHERE state = {int(C.IN_PROGRESS)} AND lease_until < now()
    ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
), ended AS (
    SELECT id FROM chunkd_instance
    WHERE id IN (SELECT instance_id FROM expired) AND status IN ({_TERMINAL})
    FOR KEY SHARE
)
UPDATE chunkd_chunk k
   SET state = CASE WHEN k.instance_id IN (SELECT id FROM ended) THEN {int(C.CANCELLED)}
                    WHEN e.blamed AND k.failures + 1 >= k.max_attempts THEN {int(C.FAILED)} ELSE {int(C.READY)} END,
       failures = k.failures + e.blamed::int, orphaned = k.orphaned + e.blamed::int,
       lease_owner = NULL, lease_until = NULL,
       error_message = CASE WHEN e.blamed
                            THEN 'the worker died or stalled while running this chunk (lease expired, attempt '
                                 || k.attempt || ')'
                            ELSE k.error_message END,
       error_attempt = CASE WHEN e.blamed THEN k.attempt ELSE k.error_attempt END
  FROM expired e
 WHERE k.id = e.id AND k.state = {int(C.IN_PROGRESS)}
RETURNING k.instance_id, k.step, k.state, k.partition, k.id, k.attempt,
          (SELECT i.job_name FROM chunkd_instance i WHERE i.id = k.instance_id)"""

# Graceful shutdown: hand back what this node still holds; the attempt is not a failure.
CHUNK_RELEASE_OWNED = f"""
UPDATE chunkd_chunk SET state = {int(C.READY)}, lease_owner = NULL, lease_until = NULL
WHERE state = {int(C.IN_PROGRESS)} AND lease_until IS NOT NULL AND lease_owner = $1
RETURNING partition"""

def _release_due(waiting: C) -> str:
    """ERRORED or POLL_WAITING chunks whose time has come, back to READY.
    One statement per state, each on its own partial index (no OR across states)."""
    return f"""
WITH due AS (
    SELECT id FROM chunkd_chunk WHERE state = {int(waiting)} AND next_run_at <= now()
    ORDER BY next_run_at LIMIT $1 FOR UPDATE SKIP LOCKED
)
UPDATE chunkd_chunk k SET state = {int(C.READY)}, next_run_at = NULL
  FROM due, chunkd_instance i
 WHERE k.id = due.id AND i.id = k.instance_id
   AND i.status NOT IN ({_TERMINAL})  -- nothing of an ended instance is retried
   AND k.state IN ({_in(chunk_allowed_from(C.READY, frozenset({waiting})))})
RETURNING k.partition, i.job_name, i.job_version, k.step"""


CHUNK_RELEASE_DUE_ERRORED = _release_due(C.ERRORED)
CHUNK_RELEASE_DUE_POLL = _release_due(C.POLL_WAITING)

# The head (oldest id) of each partition's READY queue; if it has waited too long its
# notification was probably lost, so maintenance publishes the partition again.
CHUNK_PARTITION_HEAD_AGE = f"""
SELECT extract(epoch FROM now() - created_at)::float8 FROM chunkd_chunk
WHERE state = {int(C.READY)} AND partition = $1 ORDER BY rank, id LIMIT 1"""
CHUNK_ANY_READY = f"SELECT EXISTS (SELECT 1 FROM chunkd_chunk WHERE state = {int(C.READY)})"
# Chunks written by a daemon configured with more partitions than this one consumes.
CHUNK_REHOME = f"""
UPDATE chunkd_chunk SET partition = id % $1
WHERE state = {int(C.READY)} AND partition >= $1
RETURNING partition"""

CHUNKS_OPEN_GATE = f"""
UPDATE chunkd_chunk c SET state = {int(C.READY)}
FROM unnest($1::bigint[], $2::smallint[]) AS t(instance_id, step)
WHERE c.instance_id = t.instance_id AND c.step = t.step
  AND c.state IN ({_in(chunk_allowed_from(C.READY, frozenset({C.GATE_WAITING})))})
RETURNING c.instance_id, c.partition"""

CHUNK_CANCEL_PENDING = f"""
UPDATE chunkd_chunk SET state = {int(C.CANCELLED)}, lease_owner = NULL, lease_until = NULL
WHERE instance_id = $1 AND state IN ({_in(chunk_allowed_from(C.CANCELLED, frozenset({C.GATE_WAITING, C.READY, C.POLL_WAITING, C.ERRORED})))})
RETURNING step"""

CHUNK_REDUCTION_INPUT = f"""
SELECT id, data FROM chunkd_chunk
WHERE instance_id = $1 AND step = $2 AND state = {int(C.GATE_WAITING)} ORDER BY id"""
CHUNK_REDUCTION_CONSUMED = f"""
WITH done AS (
    UPDATE chunkd_chunk SET state = {int(C.COMPLETED)}, data = NULL, completed_at = now()
    WHERE instance_id = $1 AND step = $2 AND state IN ({_in(chunk_allowed_from(C.COMPLETED, frozenset({C.GATE_WAITING})))})
    RETURNING 1
) SELECT count(*) FROM done"""
# The input of many small reductions in one read ($1, $2: instance and its reduce step): an
# instance's data only while its input's bytes are at most $3 (else NULL rows: too large, it
# is streamed alone; octet_length reads a TOASTed value's size, not the value).
CHUNK_REDUCTION_INPUTS = f"""
SELECT instance_id, CASE WHEN bytes <= $3 THEN data END, bytes <= $3 FROM (
    SELECT c.instance_id, c.id, c.data, sum(octet_length(c.data)) OVER (PARTITION BY c.instance_id) AS bytes
    FROM chunkd_chunk c
    JOIN unnest($1::bigint[], $2::int[]) AS t(instance_id, step) ON c.instance_id = t.instance_id AND c.step = t.step
    WHERE c.state = {int(C.GATE_WAITING)}) i
ORDER BY instance_id, id"""
# CHUNK_REDUCTION_CONSUMED for many instances: (instance, step, chunks consumed) each.
CHUNK_REDUCTIONS_CONSUMED = f"""
WITH done AS (
    UPDATE chunkd_chunk c SET state = {int(C.COMPLETED)}, data = NULL, completed_at = now()
    FROM unnest($1::bigint[], $2::int[]) AS t(instance_id, step)
    WHERE c.instance_id = t.instance_id AND c.step = t.step
      AND c.state IN ({_in(chunk_allowed_from(C.COMPLETED, frozenset({C.GATE_WAITING})))})
    RETURNING c.instance_id, c.step
) SELECT instance_id, step, count(*) FROM done GROUP BY 1, 2"""

INSTANCE_COUNT_BY_STATUS = "SELECT status, count(*) FROM chunkd_instance GROUP BY status"


# ---------------------------------------------------------------- control plane
INSTANCE_LIST_WHERE = """
WHERE ($1::text IS NULL OR job_name = $1)
  AND (cardinality($2::text[]) = 0 OR status = ANY($2::text[]))
  AND ($3::timestamptz IS NULL OR created_at >= $3)
  AND ($4::timestamptz IS NULL OR created_at < $4)"""
INSTANCE_LIST = f"""
SELECT * FROM chunkd_instance {INSTANCE_LIST_WHERE}
ORDER BY created_at DESC, id DESC OFFSET $5 LIMIT $6"""
INSTANCE_LIST_COUNT = f"SELECT count(*) FROM chunkd_instance {INSTANCE_LIST_WHERE}"

CHUNK_LIST_WHERE = """
WHERE instance_id = $1 AND ($2::smallint IS NULL OR step = $2)
  AND (cardinality($3::smallint[]) = 0 OR state = ANY($3::smallint[]))
  AND (NOT $4::bool OR error_message IS NOT NULL)"""
CHUNK_LIST = f"""
SELECT id, step, state, attempt, failures, max_attempts, lease_until, next_run_at, created_at, claimed_at, completed_at,
       error_message, error_attempt, error_trace, CASE WHEN $5 THEN data END AS data
FROM chunkd_chunk {CHUNK_LIST_WHERE}
ORDER BY id OFFSET $6 LIMIT $7"""
# Completed chunks of an instance per time bucket of $2 seconds (the dashboard's chart).
CHUNK_THROUGHPUT = f"""
SELECT date_bin(make_interval(secs => $2), completed_at, TIMESTAMPTZ '2000-01-01') AS at, count(*)::int AS n
FROM chunkd_chunk
WHERE instance_id = $1 AND state = {int(C.COMPLETED)} AND completed_at IS NOT NULL
GROUP BY 1 ORDER BY 1"""
CHUNK_LIST_COUNT = f"SELECT count(*) FROM chunkd_chunk {CHUNK_LIST_WHERE}"

INSTANCE_RESTART = f"""
UPDATE chunkd_instance
   SET status = '{I.IN_PROGRESS.value}', finished_at = NULL, error_message = NULL, eta_seconds = NULL,
       updated_at = now(), run = run + 1,
       reduction_attempts = 0, last_error = NULL  -- 0017: a restart retries afresh
 WHERE id = $1 AND status IN ({_in(sorted(s.value for s in RESTARTABLE if s.value in instance_allowed_from(I.IN_PROGRESS)))})
   AND NOT purging  -- retention has begun deleting it (storage/retention.py)
RETURNING current_step, gated"""
# Chunks that did not complete run again; completed ones never do. Those behind a gate
# (later steps of a gated job, the reduction's input) wait again.
CHUNK_RESTART = f"""
WITH old AS (
    SELECT id, state AS was FROM chunkd_chunk
    WHERE instance_id = $1 AND state IN ({int(C.FAILED)}, {int(C.CANCELLED)}) FOR UPDATE
)
UPDATE chunkd_chunk k
   SET state = CASE WHEN k.step > $2 OR k.step = $3 THEN {int(C.GATE_WAITING)} ELSE {int(C.READY)} END,
       failures = 0, error_message = NULL, error_attempt = NULL, next_run_at = NULL, lease_owner = NULL,
       lease_until = NULL
  FROM old WHERE k.id = old.id
RETURNING k.step, old.was, k.state, k.partition"""
# Force-stop: like cancel, and the chunks still running are cancelled too, so their
# results are refused (for an instance stuck after a crash).
CHUNK_CANCEL_ALL = f"""
UPDATE chunkd_chunk SET state = {int(C.CANCELLED)}, lease_owner = NULL, lease_until = NULL
WHERE instance_id = $1 AND state IN ({_in(chunk_allowed_from(C.CANCELLED))})
RETURNING step"""

# ---------------------------------------------------------------- counters
COUNTERS_ADD = """
INSERT INTO chunkd_step_counter AS c (instance_id, step, created, completed, failed, cancelled, errors)
SELECT * FROM unnest($1::bigint[], $2::smallint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])
ORDER BY 1, 2
ON CONFLICT (instance_id, step) DO UPDATE
   SET created = c.created + EXCLUDED.created,
       completed = c.completed + EXCLUDED.completed,
       failed = c.failed + EXCLUDED.failed,
       cancelled = c.cancelled + EXCLUDED.cancelled,
       errors = c.errors + EXCLUDED.errors"""
# COUNTERS_ADD for the completer, returning the (instance, step) whose last open chunk the
# batch ended, so that the maintenance leader looks at once (actors/maintenance.py) instead
# of at its next interval.
COUNTERS_ADD_CLOSING = f"""
WITH c AS ({COUNTERS_ADD.strip()}
RETURNING c.instance_id, c.step, {_STEP_CLOSED} AS closed)
SELECT instance_id, step FROM c WHERE closed"""

# ---------------------------------------------------------------- notifications

# Idempotency (migration 0010): what the key was first used for, written in the submit's transaction.

# ---------------------------------------------------------------- operator gauges
# Queue depth per partition for the states an operator watches. One statement per state,
# each answered from that state's partial index (no OR across states, see 0001_core.sql);
# IN_PROGRESS and ERRORED are small, READY is an index-only count on (partition, rank, id).
# A claimed chunk always has a lease (claims set it, every move out clears it), so the
# IN_PROGRESS count repeats the predicate of chunkd_chunk_leased (0003) to use that index.
QUEUE_DEPTH = f"""
SELECT partition, {int(C.READY)}::smallint AS state, count(*) AS n FROM chunkd_chunk WHERE state = {int(C.READY)} GROUP BY partition
UNION ALL
SELECT partition, {int(C.IN_PROGRESS)}::smallint, count(*) FROM chunkd_chunk
WHERE state = {int(C.IN_PROGRESS)} AND lease_until IS NOT NULL GROUP BY partition
UNION ALL
SELECT partition, {int(C.ERRORED)}::smallint, count(*) FROM chunkd_chunk WHERE state = {int(C.ERRORED)} GROUP BY partition"""
# Per partition in $1, the age of the head of its READY queue (lowest (rank, id), as claims
# take them): one index probe each on chunkd_chunk_ready_rank, like CHUNK_PARTITION_HEAD_AGE.
QUEUE_OLDEST_READY = f"""
SELECT p.partition, coalesce((
    SELECT extract(epoch FROM now() - k.created_at)::float8 FROM chunkd_chunk k
    WHERE k.state = {int(C.READY)} AND k.partition = p.partition ORDER BY k.rank, k.id LIMIT 1), 0) AS age
FROM unnest($1::smallint[]) AS p(partition)"""


# ------------------------------------------------------------ Schedules: definitions, and firing an occurrence exactly once (storage/schedules.py)
SCHEDULE_UPSERT = """
INSERT INTO chunkd_schedule (id, job_name, job_version, params, cron, interval_seconds, timezone, missed, source,
                             next_fire_at, dialect)
VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (id) DO UPDATE SET job_name = EXCLUDED.job_name, job_version = EXCLUDED.job_version,
    params = EXCLUDED.params, cron = EXCLUDED.cron, interval_seconds = EXCLUDED.interval_seconds,
    timezone = EXCLUDED.timezone, missed = EXCLUDED.missed, source = EXCLUDED.source, dialect = EXCLUDED.dialect,
    next_fire_at = CASE WHEN chunkd_schedule.cron IS NOT DISTINCT FROM EXCLUDED.cron
                         AND chunkd_schedule.dialect IS NOT DISTINCT FROM EXCLUDED.dialect
                         AND chunkd_schedule.interval_seconds IS NOT DISTINCT FROM EXCLUDED.interval_seconds
                         AND chunkd_schedule.timezone = EXCLUDED.timezone
                        THEN chunkd_schedule.next_fire_at ELSE EXCLUDED.next_fire_at END
RETURNING (xmax = 0) AS inserted"""
SCHEDULE_INSERT = """
INSERT INTO chunkd_schedule (id, job_name, job_version, params, cron, interval_seconds, timezone, missed, source,
                             next_fire_at, dialect)
VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (id) DO NOTHING RETURNING id"""
SCHEDULE_LIST = "SELECT * FROM chunkd_schedule ORDER BY id"
SCHEDULE_GET = "SELECT * FROM chunkd_schedule WHERE id = $1"
SCHEDULE_DELETE = "DELETE FROM chunkd_schedule WHERE id = $1 RETURNING id"
# Over the API: a schedule declared in code (or the built-in one) is not deleted while its
# declaration lives, since the next daemon start would bring it back; an orphaned one is.
SCHEDULE_DELETE_UNDECLARED = """
DELETE FROM chunkd_schedule
WHERE id = $1 AND (source NOT IN ('code', 'builtin') OR (source = 'code' AND orphaned_at IS NOT NULL))
RETURNING id"""
# A schedule declared in code is orphaned while no live daemon (heartbeat within $1 seconds)
# declares it (migration 0016), and adopted again when one does. Only rows that change.
SCHEDULE_ORPHAN_SWEEP = """
WITH live AS (
    SELECT DISTINCT unnest(declared_schedules) AS id FROM chunkd_node
    WHERE heartbeat_at > now() - make_interval(secs => $1)
)
UPDATE chunkd_schedule s
   SET orphaned_at = CASE WHEN EXISTS (SELECT 1 FROM live WHERE live.id = s.id) THEN NULL ELSE now() END
 WHERE s.source = 'code' AND (s.orphaned_at IS NULL) <> EXISTS (SELECT 1 FROM live WHERE live.id = s.id)
RETURNING s.id, s.orphaned_at IS NOT NULL AS orphaned"""
SCHEDULE_PAUSE = "UPDATE chunkd_schedule SET paused = $2 WHERE id = $1 RETURNING id"
SCHEDULE_RESUME_NEXT = "UPDATE chunkd_schedule SET next_fire_at = $2 WHERE id = $1 AND next_fire_at < now()"
SCHEDULE_DUE = """
SELECT *, now() AS db_now FROM chunkd_schedule WHERE NOT paused AND orphaned_at IS NULL AND next_fire_at <= now()
ORDER BY next_fire_at LIMIT $1"""
SCHEDULE_NEXT_DUE_IN = """
SELECT extract(epoch FROM min(next_fire_at) - now())::float8 FROM chunkd_schedule WHERE NOT paused AND orphaned_at IS NULL"""
SCHEDULE_CLAIM_OCCURRENCE = """
INSERT INTO chunkd_schedule_fire (schedule_id, fire_at, fired_by) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING RETURNING fire_at"""
SCHEDULE_RECORD_INSTANCE = "UPDATE chunkd_schedule_fire SET instance_id = $3 WHERE schedule_id = $1 AND fire_at = $2"
SCHEDULE_MARK_INSTANCE = "UPDATE chunkd_instance SET schedule_id = $2, scheduled_for = $3 WHERE id = $1"
SCHEDULE_ADVANCE = """
UPDATE chunkd_schedule SET next_fire_at = $3, last_fire_at = coalesce($4, last_fire_at),
       last_instance_id = coalesce($5, last_instance_id)
WHERE id = $1 AND next_fire_at = $2 RETURNING id"""
SCHEDULE_NOW = "SELECT now()"


# ------------------------------------------------------------ Retention: mark, then purge in small batches (storage/retention.py)
RETENTION_EXPIRED = f"""
SELECT id FROM chunkd_instance
WHERE (status IN ({_ENDED_OK}) AND finished_at < now() - make_interval(secs => $1))
   OR (status = '{I.FAILED.value}' AND finished_at < now() - make_interval(secs => $2))
ORDER BY id LIMIT $3"""
# First, in one short transaction on the instance rows, mark what will be purged: only
# instances still finished and still past their window (a restart may have come first;
# then it is not purged). A restart refuses a marked instance (sql.INSTANCE_RESTART), so
# once marked, nothing revives it while its chunks are deleted.
RETENTION_MARK = f"""
UPDATE chunkd_instance SET purging = true
WHERE id = ANY($1::bigint[])
  AND ((status IN ({_ENDED_OK}) AND finished_at < now() - make_interval(secs => $2))
    OR (status = '{I.FAILED.value}' AND finished_at < now() - make_interval(secs => $3)))
RETURNING id"""
# Small statements, each its own transaction: the hot path never waits on a long purge.
RETENTION_CHUNK_BATCH = """
DELETE FROM chunkd_chunk WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM chunkd_chunk WHERE instance_id = ANY($1::bigint[]) LIMIT $2))"""
RETENTION_INSTANCES = """
DELETE FROM chunkd_instance WHERE id = ANY($1::bigint[]) AND purging
RETURNING id"""
RETENTION_FIRES = "DELETE FROM chunkd_schedule_fire WHERE fired_at < now() - make_interval(secs => $1)"


# ------------------------------------------------------------ The catalog, for the built-in jobs' table checks (storage/tables.py)
CATALOG_TABLE = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass($1) AND c.relkind IN ('r', 'p', 'v', 'm')"""
CATALOG_COLUMNS = """
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped ORDER BY attnum"""
CATALOG_CURRENT_SCHEMA = "SELECT current_schema()"


# ------------------------------------------------------------ Table upkeep (actors/duties.py: Vacuumer)
# chunkd's tables with their statistics and the autovacuum rule each is under: its own
# reloptions (migration 0006 for chunkd_chunk), else the server's settings.
TABLE_HEALTH = """
SELECT s.relname, s.n_live_tup, s.n_dead_tup, s.n_mod_since_analyze,
       current_setting('autovacuum')::bool AND coalesce(o.opts->>'autovacuum_enabled', 'true')::bool,
       coalesce(o.opts->>'autovacuum_vacuum_threshold', current_setting('autovacuum_vacuum_threshold'))::float8,
       coalesce(o.opts->>'autovacuum_vacuum_scale_factor', current_setting('autovacuum_vacuum_scale_factor'))::float8,
       coalesce(o.opts->>'autovacuum_analyze_threshold', current_setting('autovacuum_analyze_threshold'))::float8,
       coalesce(o.opts->>'autovacuum_analyze_scale_factor', current_setting('autovacuum_analyze_scale_factor'))::float8,
       pg_has_role(c.relowner, 'USAGE')
         OR pg_has_role((SELECT datdba FROM pg_database WHERE datname = current_database()), 'USAGE')
         OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
       current_setting('track_counts')::bool
FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
CROSS JOIN LATERAL (SELECT coalesce(jsonb_object_agg(option_name, option_value), '{}'::jsonb) AS opts
                    FROM pg_options_to_table(c.reloptions)) o
WHERE s.schemaname = current_schema() AND s.relname LIKE 'chunkd\\_%'
ORDER BY s.relname"""
# Is anyone waiting on a lock the session $1 (chunkd's VACUUM) holds? Then it gives way, as
# autovacuum does: a DDL statement queued behind it would hold every write queued behind that.
UPKEEP_BLOCKING = "SELECT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE $1::int = ANY(pg_blocking_pids(a.pid)))"
# {table}: a name TABLE_HEALTH returned, quoted. SKIP_LOCKED: a DBA's REINDEX or ALTER holding
# the table is not waited for (the next check tries again).
TABLE_VACUUM = "VACUUM (ANALYZE, SKIP_LOCKED) {table}"
TABLE_ANALYZE = "ANALYZE (SKIP_LOCKED) {table}"
