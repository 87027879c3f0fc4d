-- How many times in a row a chunk's worker process died (or froze past its lease) while
-- holding it. A chunk orphaned twice is a suspect: it may be the chunk that kills its
-- worker. Suspects run one at a time per daemon, so a poison chunk takes only itself to
-- max_attempts, not the innocent chunks claimed beside it. Once is not enough to isolate:
-- a SIGKILL orphans every chunk the daemon had claimed, and running hundreds of them one by
-- one would stall recovery.
ALTER TABLE chunkd_chunk ADD COLUMN orphaned smallint NOT NULL DEFAULT 0;
CREATE INDEX chunkd_chunk_suspect_ready ON chunkd_chunk (partition, id) WHERE state = 2 AND orphaned >= 2;
