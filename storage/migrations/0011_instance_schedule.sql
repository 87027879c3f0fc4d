-- Which clustered schedule fired an instance, and for which occurrence: kept on the instance
-- itself (the schedule's fire records go when the schedule is deleted or purged).
ALTER TABLE chunkd_instance ADD COLUMN schedule_id text, ADD COLUMN scheduled_for timestamptz;
