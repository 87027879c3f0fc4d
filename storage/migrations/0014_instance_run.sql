-- An instance's run (issue 22): a restart starts run + 1. Maintenance's decisions (status
-- moves, gates, completion, the reduction) are fenced by the run they were made for, like a
-- chunk's result by its attempt and the leader's writes by its term: a decision made on reads
-- of an earlier run (a stop and a restart came between) is refused in SQL.
ALTER TABLE chunkd_instance ADD COLUMN run int NOT NULL DEFAULT 1;
