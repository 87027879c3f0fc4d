-- Fair share within a partition (issue 16). Claims take READY chunks in (rank, id) order, not
-- id order: a chunk's rank is its partition's virtual clock when it was inserted plus its
-- ordinal among its instance's chunks of that insert (times a stride, for priorities). The
-- clock is the highest rank claimed so far in the partition (CHUNK_CLAIM advances it), so a
-- small instance submitted while a big one drains lands level with the big one's next chunks,
-- not behind its whole backlog: instances in a partition are served round-robin.
ALTER TABLE chunkd_chunk ADD COLUMN rank bigint NOT NULL DEFAULT 0;

-- One row per partition (CHUNKD_PARTITIONS is at most 1024). Tiny and HOT-updated.
CREATE TABLE chunkd_partition_clock (
    partition smallint PRIMARY KEY,
    vtime     bigint NOT NULL DEFAULT 0
) WITH (fillfactor = 50);
INSERT INTO chunkd_partition_clock (partition) SELECT generate_series(0, 1023);

-- Replaces chunkd_chunk_ready (partition, id): one index for the READY state still, no OR.
CREATE INDEX chunkd_chunk_ready_rank ON chunkd_chunk (partition, rank, id) WHERE state = 2;
DROP INDEX IF EXISTS chunkd_chunk_ready;
