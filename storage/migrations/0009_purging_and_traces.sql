-- Retention marks an instance before it deletes anything of it, in a short transaction on
-- the instance row: a restart (which updates the same row, and refuses a purging instance)
-- is then ordered against the purge, so an instance is never half-deleted while running.
ALTER TABLE chunkd_instance ADD COLUMN purging boolean NOT NULL DEFAULT false;
-- The traceback of a chunk's last error (bounded in size by the executor), beside error_message.
ALTER TABLE chunkd_chunk ADD COLUMN error_trace text;
