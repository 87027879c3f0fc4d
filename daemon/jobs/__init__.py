"""Jobs that ship with chunkd."""
