-- The BRIN on instance_id (0004) lost its precision with age. A plain minmax range keeps one
-- [min, max] that only ever widens: retention deletes old chunks and their free space takes
-- new ones (and a claim's or completion's new row version lands wherever there is room), so
-- a range that once held instance 100 and now holds instance 9,000 matches every id between.
-- A lookup of one instance's chunks (the API's instance view, which every submit answers
-- with; cancel, restart, the retention purge) came to read most of the table: in a soak at
-- 15 submits/s of 200 chunks, ~3,000 pages for an instance whose rows sat on 13, and the
-- submit's p50 climbed with the table's age while its live rows stayed flat (issue 26).
-- minmax_multi keeps up to 32 values per range, merging the closest: the stale ids of purged
-- instances merge among themselves and a live instance's ids stay a narrow interval, so a
-- lookup reads the ranges that hold its rows. Same cost per write (a summary check).
DROP INDEX IF EXISTS chunkd_chunk_instance_brin;
CREATE INDEX chunkd_chunk_instance_brin ON chunkd_chunk
    USING brin (instance_id int8_minmax_multi_ops) WITH (pages_per_range = 16);
