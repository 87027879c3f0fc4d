-- chunkd core schema. Applied once, in order, under an advisory lock (storage/migrate.py).

CREATE TABLE chunkd_instance (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_name         text        NOT NULL,
    job_version      int         NOT NULL,
    params           jsonb       NOT NULL,
    status           text        NOT NULL DEFAULT 'QUEUED'
        CHECK (status IN ('QUEUED','IN_PROGRESS','FINALIZE','COMPLETED','ERRORED','FAILED','CANCELLED')),
    gated            boolean     NOT NULL,
    current_step     int         NOT NULL DEFAULT 0,
    idempotency_key  text        UNIQUE,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    progress         double precision NOT NULL DEFAULT 0,
    chunks_per_second double precision,
    eta_seconds      double precision,
    error_message    text,
    error_count      int         NOT NULL DEFAULT 0,
    report           jsonb
);
CREATE INDEX chunkd_instance_active ON chunkd_instance (id)
    WHERE status IN ('QUEUED', 'IN_PROGRESS', 'ERRORED', 'FINALIZE');
CREATE INDEX chunkd_instance_job_created ON chunkd_instance (job_name, created_at DESC);

-- One row per (instance, step): the counters progress, gates and completion read,
-- so nothing has to count chunks by scanning them.
CREATE TABLE chunkd_step_counter (
    instance_id  bigint NOT NULL REFERENCES chunkd_instance (id) ON DELETE CASCADE,
    step         smallint NOT NULL,
    created      bigint NOT NULL DEFAULT 0,
    completed    bigint NOT NULL DEFAULT 0,
    failed       bigint NOT NULL DEFAULT 0,
    cancelled    bigint NOT NULL DEFAULT 0,
    errors       bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (instance_id, step)
) WITH (fillfactor = 50);

-- The hot table. fillfactor leaves room for HOT updates of lease/attempt.
CREATE TABLE chunkd_chunk (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id   bigint      NOT NULL,
    step          smallint    NOT NULL,
    state         smallint    NOT NULL,
    partition     smallint    NOT NULL,
    attempt       int         NOT NULL DEFAULT 0,   -- fencing token: +1 on every claim
    failures      smallint    NOT NULL DEFAULT 0,   -- errors + expired leases; compared with max_attempts
    max_attempts  smallint    NOT NULL,
    lease_owner   bigint,
    lease_until   timestamptz,
    next_run_at   timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz,
    error_message text,
    data          bytea
) WITH (fillfactor = 70);

-- One partial index per claimable state, no OR (pgqueuer #607).
CREATE INDEX chunkd_chunk_ready ON chunkd_chunk (partition, id) WHERE state = 2;
CREATE INDEX chunkd_chunk_in_progress ON chunkd_chunk (lease_until) WHERE state = 3;
CREATE INDEX chunkd_chunk_poll_waiting ON chunkd_chunk (next_run_at) WHERE state = 4;
CREATE INDEX chunkd_chunk_errored ON chunkd_chunk (next_run_at) WHERE state = 5;
CREATE INDEX chunkd_chunk_errored_instance ON chunkd_chunk (instance_id) WHERE state = 5;
CREATE INDEX chunkd_chunk_gate_waiting ON chunkd_chunk (instance_id, step, id) WHERE state = 1;
CREATE INDEX chunkd_chunk_instance_step ON chunkd_chunk (instance_id, step);

-- One row per daemon process; its heartbeat extends every lease it holds.
CREATE TABLE chunkd_node (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text        NOT NULL,
    pid           int         NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now()
);

-- The maintenance leader holds a lease here (not a session advisory lock: a
-- SIGSTOPped leader keeps its connection, and with it the lock, forever).
CREATE TABLE chunkd_leader (
    role         text PRIMARY KEY,
    node_id      bigint NOT NULL,
    term         bigint NOT NULL,
    lease_until  timestamptz NOT NULL
);

-- Warnings a step reported (ctx.warn), rolled up per instance by the API and report.
CREATE TABLE chunkd_warning (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id  bigint NOT NULL REFERENCES chunkd_instance (id) ON DELETE CASCADE,
    chunk_id     bigint,
    message      text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX chunkd_warning_instance ON chunkd_warning (instance_id, id);
