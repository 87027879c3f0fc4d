-- A state change is never a HOT update (state is in the partial indexes' predicates), so
-- every claim and completion wrote a new entry into each full index. The btree on
-- (instance_id, step) was one of two; chunks of an instance are written together, so a
-- BRIN on instance_id finds them for the by-instance queries (cancel, restart, API lists)
-- at next to no cost per update.
DROP INDEX IF EXISTS chunkd_chunk_instance_step;
CREATE INDEX chunkd_chunk_instance_brin ON chunkd_chunk USING brin (instance_id) WITH (pages_per_range = 16);
