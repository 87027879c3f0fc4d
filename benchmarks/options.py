"""What one `chunkd bench` run is asked to do (parsed by benchmarks/cli.py)."""
from __future__ import annotations

import msgspec

BENCH_DB = "chunkd_bench"
SOAK_DB = "chunkd_bench_soak"


class Options(msgspec.Struct, kw_only=True):
    workload: str = "drain"
    chunks: int = 100_000
    daemons: int = 1
    partitions: int = 4
    concurrency: int = 16
    batch: int = 500
    completer_batch: int = 1000
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
    minutes: float = 7.0
    sample_every: float = 30.0
    progress: bool = False
