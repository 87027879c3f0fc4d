-- Issue 22 row 5: a reduction that fails (a DBA's statement or idle-in-transaction timeout
-- killing its transaction, the reducer raising) counts its attempts and says why while it
-- retries, instead of retrying for ever in silence. The instance FAILS at the reduction
-- step's max_attempts; a restart sets both back.
ALTER TABLE chunkd_instance ADD COLUMN reduction_attempts int NOT NULL DEFAULT 0,
                            ADD COLUMN last_error text;
