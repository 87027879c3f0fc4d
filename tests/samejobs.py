"""Jobs run both ways by tests/integration/test_testing_parity.py: by chunkd.testing.run_job
in memory and by a `chunkd run` daemon on Postgres, whose outcomes must agree."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import msgspec

from chunkd import Context, Job, Sink


class SameParams(msgspec.Struct, forbid_unknown_fields=True):
    n: int = 4
    fail_once_at: int = 1      # this chunk of `work` raises on its first attempt, then succeeds
    sleep_ms: int = 30         # plain-function steps block for this long (time.sleep)
    big: bool = False          # `plan` also emits one chunk over 1 MiB


class Item(msgspec.Struct, array_like=True):
    i: int
    on_loop: bool = False      # did a step that handled it run on the event loop?
    pad: bytes = b""


def _on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False  # a worker thread: where the daemon runs plain-function steps
    return True


same = Job("test.same", params=SameParams)


@same.first_step(emits=Item, backoff_base=0.05)
def plan(params: SameParams, ctx: Context, sink: Sink[Item]) -> None:
    time.sleep(params.sleep_ms / 1000)  # blocks: fine in a worker thread, not on the loop
    for i in range(params.n):
        sink.emit(Item(i, _on_loop()))
    if params.big:
        sink.emit(Item(-1, pad=b"x" * (2 << 20)))


@same.step(consumes=Item, emits=Item, max_attempts=3, backoff_base=0.05, backoff_max=0.1)
def work(params: SameParams, chunk: Item, ctx: Context, sink: Sink[Item]) -> None:
    time.sleep(params.sleep_ms / 1000)
    if chunk.i == params.fail_once_at and ctx.attempt == 1:
        raise RuntimeError(f"chunk {chunk.i} fails once")
    sink.emit(Item(chunk.i * 10, chunk.on_loop or _on_loop()))


@same.reduce(consumes=Item, backoff_base=0.05)
def total(params: SameParams, chunks: Iterator[Item], ctx: Context) -> dict[str, object]:
    items = list(chunks)
    return {"sum": sum(c.i for c in items), "chunks": len(items),
            "steps_on_loop": sum(c.on_loop for c in items), "reducer_on_loop": _on_loop()}
