-- The hot table churns: every chunk is updated twice and its old versions leave dead entries
-- in the READY index. Vacuum it early and often (and keep its statistics fresh).
ALTER TABLE chunkd_chunk SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0.05
);
