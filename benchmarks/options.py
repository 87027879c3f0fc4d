"""What one `chunkd bench` run is asked to do (parsed by benchmarks/cli.py)."""
from __future__ import annotations

import msgspec

BENCH_DB = "chunkd_bench"
SOAK_DB = "chunkd_bench_soak"


class Options(msgspec.Struct, kw_only=True):
    workload: str = "drain"
    chunks: int = 100_000
    daemons: int = 1
    # None: the product's default (or the environment's CHUNKD_* value), as `chunkd run` would use
    partitions: int | None = None
    concurrency: int | None = None
    batch: int | None = None
    completer_batch: int | None = None
    work_ms: float = 0.0
    timeout: float = 600.0
    plot: str | None = None
    as_json: bool = False
    compare: bool = False
    peer_jobs: dict[str, int] = {}
    database: str | None = None
    jobs: int = 1000
    chunks_per_job: int = 10
    clients: int = 16
    rate: float | None = None
    bulk: int = 0  # jobs workload: items per bulk submit request (0: single submits)
    minutes: float = 7.0
    sample_every: float = 30.0
    progress: bool = False


# The daemon's variable each tuning option sets when given.
TUNING = {"partitions": "CHUNKD_PARTITIONS", "concurrency": "CHUNKD_PARTITION_CONCURRENCY",
          "batch": "CHUNKD_CLAIM_BATCH", "completer_batch": "CHUNKD_COMPLETER_BATCH"}


def tuning_env(opts: Options) -> dict[str, str]:
    """The CHUNKD_* variables the options set (only those given: the rest stay the product's)."""
    return {var: str(getattr(opts, field)) for field, var in TUNING.items() if getattr(opts, field) is not None}
