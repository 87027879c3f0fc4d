-- What the dashboard's cluster page shows per daemon: the partitions it consumes now
-- (Kafka moves them between daemons) and how many chunks it holds. The heartbeat
-- writes both with the beat it already makes, so this costs no extra statement.
ALTER TABLE chunkd_node ADD COLUMN partitions smallint[] NOT NULL DEFAULT '{}';
ALTER TABLE chunkd_node ADD COLUMN in_flight integer NOT NULL DEFAULT 0;
