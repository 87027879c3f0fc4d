"""The actor runtime (bounded anyio mailboxes, supervision) and chunkd's actors."""
