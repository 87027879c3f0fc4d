-- Issue 26 item 2: a maintenance pass reads only the instances whose state can have changed
-- since the last one, not every open instance. Every change of an instance's step counters
-- (a completion batch, a rescue, a cancel, a restart: whoever writes them) leaves the
-- instance's id here, in the same transaction, by the statement-level trigger below (one
-- statement per batch, not one per row). Only updates: a counter row is inserted when its
-- step's chunks are created, which is either a new instance (nothing to decide until a chunk
-- ends) or the children of a chunk whose completion updates its own step's row in the same
-- statement. A restart, which may change no counter, marks its instance itself
-- (sql.INSTANCE_MARK_DIRTY). The leader takes the ids each pass
-- (sql.INSTANCES_TAKE_DIRTY) and re-reads every open instance only now and then, as a
-- safety net (actors/advancer.py).
--
-- ON CONFLICT DO UPDATE, not DO NOTHING: it locks the existing marker until the writer
-- commits, so the leader's SKIP LOCKED take leaves it for the next pass instead of taking a
-- marker whose change it cannot see yet.
CREATE TABLE chunkd_instance_dirty (
    instance_id bigint PRIMARY KEY
);

CREATE FUNCTION chunkd_mark_dirty() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO chunkd_instance_dirty AS d (instance_id)
    SELECT DISTINCT instance_id FROM changed ORDER BY 1
    ON CONFLICT (instance_id) DO UPDATE SET instance_id = d.instance_id;
    RETURN NULL;
END $$;

CREATE TRIGGER chunkd_step_counter_dirty_upd AFTER UPDATE ON chunkd_step_counter
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION chunkd_mark_dirty();
