"""A job module declaring an invalid schedule: `chunkd run` must refuse to start."""
from chunkd import Schedule

nightly = Schedule(name="nightly-bad", job="chunkd.synthetic", params={"chunks": 1}, cron="0 0 25 * * ?")
