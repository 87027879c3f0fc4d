-- The by-instance lookup goes back to a btree (0004 had replaced one with a BRIN to save an
-- index entry per row version). A 30-minute soak (15 submits/s of 200-chunk jobs, retention
-- at 2 minutes) showed what the BRIN costs instead: every submit answers with the instance
-- view, which counts the instance's chunks by instance_id; as the table churns, an
-- instance's row versions scatter over free space anywhere in it, the BRIN's ranges match
-- most lookups (0019's minmax_multi and a summarizer only slowed that down), and the planner
-- then prefers a parallel sequential scan of the whole table: the view read ~3,000 pages at
-- 30 s and ~9,400 at 90 s, and submit p50 climbed with it. A btree finds exactly the
-- instance's rows whatever the table's age, for the view, cancel, restart and retention.
DROP INDEX IF EXISTS chunkd_chunk_instance_brin;
CREATE INDEX chunkd_chunk_instance ON chunkd_chunk (instance_id);
