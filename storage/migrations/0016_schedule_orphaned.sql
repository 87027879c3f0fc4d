-- Schedules declared in job modules (source 'code') are owned by the code that declares them.
-- Each daemon records which schedules its job modules declare; a declared schedule that no
-- live daemon declares any more (its module was removed, or the declaration was) is marked
-- orphaned: it is shown as such and never fires until a daemon declares it again.
ALTER TABLE chunkd_schedule ADD COLUMN orphaned_at timestamptz;
ALTER TABLE chunkd_node ADD COLUMN declared_schedules text[] NOT NULL DEFAULT '{}';
-- The attempt whose error a chunk's error_message holds: kept when a later attempt succeeds,
-- so a chunk that completed after retries still shows what went wrong and when.
ALTER TABLE chunkd_chunk ADD COLUMN error_attempt int;
