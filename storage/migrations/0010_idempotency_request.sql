-- What an idempotency key was first used for, beyond what the instance row already holds
-- (job name, canonical parameters): the version the submitter asked for ({"version": null}
-- when it asked for the latest). A second submit with the same key compares job, version and
-- parameters against the first and is refused (409) when they differ, as payment APIs do.
-- NULL on rows written before this migration: their version is not compared.
ALTER TABLE chunkd_instance ADD COLUMN idempotency_request jsonb;
