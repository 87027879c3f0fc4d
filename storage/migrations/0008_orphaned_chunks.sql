-- How many times a chunk's worker process died (or froze past its lease) while holding it.
-- The first death counts for every chunk the process had claimed: nobody knows which of them
-- were running. From then on the executor records the attempt it starts (started_attempt)
-- before running an orphaned chunk, so a later death counts only for chunks that were really
-- running, not for those waiting in the mailbox. A chunk orphaned twice is a suspect: it may
-- be the chunk that kills its worker. Suspects run one at a time per daemon, so a poison
-- chunk takes only itself to max_attempts, not the innocent chunks claimed beside it.
ALTER TABLE chunkd_chunk ADD COLUMN orphaned smallint NOT NULL DEFAULT 0;
ALTER TABLE chunkd_chunk ADD COLUMN started_attempt integer;
CREATE INDEX chunkd_chunk_suspect_ready ON chunkd_chunk (partition, id) WHERE state = 2 AND orphaned >= 2;
