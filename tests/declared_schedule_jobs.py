"""A job module that declares a clustered schedule (tests/integration/test_declared_schedules.py)."""
from chunkd import Schedule

daily_export = Schedule(name="nu.daily-export", job="chunkd.synthetic", params={"chunks": 1, "fanout": 0}, every=1)
