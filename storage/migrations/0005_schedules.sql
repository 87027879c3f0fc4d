-- Clustered schedules. An occurrence is claimed by inserting its (schedule, fire_at) row in
-- the same transaction that submits the instance: two daemons racing, a crash mid-fire or
-- a skewed clock can neither fire it twice nor lose it.
CREATE TABLE chunkd_schedule (
    id                text PRIMARY KEY,
    job_name          text        NOT NULL,
    job_version       int,
    params            jsonb       NOT NULL,
    cron              text,
    interval_seconds  double precision,
    timezone          text        NOT NULL DEFAULT 'UTC',
    missed            text        NOT NULL DEFAULT 'skip' CHECK (missed IN ('skip', 'run_once')),
    paused            boolean     NOT NULL DEFAULT false,
    source            text        NOT NULL DEFAULT 'api' CHECK (source IN ('api', 'code', 'builtin')),
    created_at        timestamptz NOT NULL DEFAULT now(),
    next_fire_at      timestamptz NOT NULL,
    last_fire_at      timestamptz,
    last_instance_id  bigint,
    CHECK ((cron IS NULL) <> (interval_seconds IS NULL))
);
CREATE INDEX chunkd_schedule_due ON chunkd_schedule (next_fire_at) WHERE NOT paused;

CREATE TABLE chunkd_schedule_fire (
    schedule_id  text        NOT NULL REFERENCES chunkd_schedule (id) ON DELETE CASCADE,
    fire_at      timestamptz NOT NULL,
    instance_id  bigint,
    fired_by     text        NOT NULL,
    fired_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule_id, fire_at)
);
