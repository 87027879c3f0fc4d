-- Instance priority (issue 16): -3..3, default 0. A chunk's rank offset within an insert is its
-- ordinal times the instance's stride, 64 >> (priority + 3): each level up doubles the
-- instance's share of its partitions' claims against the instances it competes with.
ALTER TABLE chunkd_instance ADD COLUMN priority smallint NOT NULL DEFAULT 0
    CHECK (priority BETWEEN -3 AND 3);
