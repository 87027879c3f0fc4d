-- Cron dialect per schedule (issue 23): quartz (1 = SUN), spring (1 = MON, 0/7 = SUN, no year)
-- or unix (5 fields). Rows from before were read by field count (5 unix, else quartz); they
-- keep that meaning, now said.
ALTER TABLE chunkd_schedule ADD COLUMN dialect text CHECK (dialect IN ('quartz', 'spring', 'unix'));
UPDATE chunkd_schedule
SET dialect = CASE WHEN array_length(regexp_split_to_array(btrim(cron), '\s+'), 1) = 5 THEN 'unix' ELSE 'quartz' END
WHERE cron IS NOT NULL;
ALTER TABLE chunkd_schedule ADD CONSTRAINT chunkd_schedule_dialect_with_cron CHECK ((cron IS NULL) = (dialect IS NULL));
