-- When the current attempt was claimed: claim-to-complete figures and the API's chunk view.
ALTER TABLE chunkd_chunk ADD COLUMN claimed_at timestamptz;
