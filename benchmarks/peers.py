"""Peer queues measured on the same server, in the same run, with the same no-op work:
`python -m benchmarks.peers NAME DSN JOBS` prints one JSON object. Each runs in its own
process with its own event loop (pgqueuer: uvloop, as its docs recommend) and its own
database. Installed only for this: pip install 'chunkd[peers]'."""
from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import timedelta
from importlib.metadata import PackageNotFoundError, version
from typing import Any

ENQUEUE_BATCH = 10_000


async def pgqueuer(dsn: str, jobs: int) -> dict[str, Any]:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries, QueueManager
    from pgqueuer.types import QueueExecutionMode

    conn = await asyncpg.connect(dsn)
    driver = AsyncpgDriver(conn)
    queries = Queries(driver)
    await queries.install()
    t0 = time.perf_counter()
    for lo in range(0, jobs, ENQUEUE_BATCH):
        n = min(ENQUEUE_BATCH, jobs - lo)
        await queries.enqueue(["noop"] * n, [None] * n, [0] * n)
    enqueue_s = time.perf_counter() - t0
    qm = QueueManager(queries)

    @qm.entrypoint("noop")
    async def noop(job: Any) -> None:
        return None

    batch = 500  # its best shape measured here: one worker, batch 500
    t1 = time.perf_counter()
    await qm.run(batch_size=batch, mode=QueueExecutionMode.drain, dequeue_timeout=timedelta(seconds=1))
    drain_s = time.perf_counter() - t1
    left = await conn.fetchval("SELECT count(*) FROM pgqueuer")
    await conn.close()
    return {"jobs": jobs, "left": left, "jobs_per_second": round(jobs / drain_s, 1),
            "enqueue_per_second": round(jobs / enqueue_s, 1),
            "enqueue_plus_drain_per_second": round(jobs / (enqueue_s + drain_s), 1),
            "settings": {"batch_size": batch, "event_loop": "uvloop", "workers": 1}}


async def procrastinate(dsn: str, jobs: int) -> dict[str, Any]:
    import procrastinate as p

    app = p.App(connector=p.PsycopgConnector(conninfo=dsn))
    async with app.open_async():
        await app.schema_manager.apply_schema_async()

        @app.task(name="noop")
        async def noop() -> None:
            return None

        t0 = time.perf_counter()
        for lo in range(0, jobs, ENQUEUE_BATCH):
            await noop.batch_defer_async(*[{}] * min(ENQUEUE_BATCH, jobs - lo))
        enqueue_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        concurrency = 10
        await app.run_worker_async(concurrency=concurrency, wait=False, install_signal_handlers=False)
        drain_s = time.perf_counter() - t1
    return {"jobs": jobs, "jobs_per_second": round(jobs / drain_s, 1),
            "enqueue_per_second": round(jobs / enqueue_s, 1),
            "enqueue_plus_drain_per_second": round(jobs / (enqueue_s + drain_s), 1),
            "settings": {"concurrency": concurrency, "event_loop": "asyncio"}}


PEERS = {"pgqueuer": pgqueuer, "procrastinate": procrastinate}


def main() -> None:
    name, dsn, jobs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    try:
        ver = version(name)
    except PackageNotFoundError:
        print(json.dumps({"error": f"{name} is not installed (pip install 'chunkd[peers]')"}))
        return
    runner = PEERS[name]
    if name == "pgqueuer":
        try:
            import uvloop
            result = uvloop.run(runner(dsn, jobs))
        except ImportError:
            result = asyncio.run(runner(dsn, jobs))
            result["settings"]["event_loop"] = "asyncio (uvloop not installed)"
    else:
        result = asyncio.run(runner(dsn, jobs))
    result["version"] = ver
    print(json.dumps(result))


if __name__ == "__main__":
    main()
