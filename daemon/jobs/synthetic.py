"""Built-in jobs. `chunkd.synthetic` is used by the tests, the demo and the benchmarks:
keep its name and its `chunks` parameter stable."""
from __future__ import annotations

import random
from collections.abc import AsyncIterator

import anyio
import msgspec

from chunkd import Context, Job, Sink


class SyntheticParams(msgspec.Struct, forbid_unknown_fields=True):
    chunks: int = 1000
    fanout: int = 1          # outputs per work chunk, summed by the reduction
    work_ms: float = 0.0     # simulated work per chunk (async sleep)
    fail_rate: float = 0.0   # chance a work chunk's attempt raises (deterministic per chunk+attempt)

    def __post_init__(self) -> None:
        if not 0 <= self.chunks <= 10_000_000:
            raise ValueError("chunks must be between 0 and 10000000")
        if not 0 <= self.fanout <= 1000:
            raise ValueError("fanout must be between 0 and 1000")
        if self.work_ms < 0:
            raise ValueError("work_ms must be >= 0")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError("fail_rate must be between 0 and 1")


class Work(msgspec.Struct, array_like=True):
    index: int


class Tally(msgspec.Struct, array_like=True):
    index: int
    value: int


class SyntheticReport(msgspec.Struct):
    chunks: int
    outputs: int
    total: int


synthetic = Job("chunkd.synthetic", version=1, params=SyntheticParams,
                description="Emits `chunks` work chunks, each does `work_ms` of work and emits `fanout` tallies; "
                            "a reduction sums them.")


@synthetic.first_step(emits=Work)
def plan(params: SyntheticParams, ctx: Context, sink: Sink[Work]) -> None:
    for i in range(params.chunks):
        sink.emit(Work(i))


class SyntheticFailure(RuntimeError):
    pass


@synthetic.step(consumes=Work, emits=Tally, max_attempts=5, backoff_base=0.05, backoff_max=1.0)
async def work(params: SyntheticParams, chunk: Work, ctx: Context, sink: Sink[Tally]) -> None:
    if params.work_ms:
        await anyio.sleep(params.work_ms / 1000)
    if params.fail_rate and random.Random(f"{chunk.index}:{ctx.attempt}").random() < params.fail_rate:
        raise SyntheticFailure(f"synthetic failure of chunk {chunk.index} (attempt {ctx.attempt})")
    for k in range(params.fanout):
        sink.emit(Tally(chunk.index, k + 1))


@synthetic.reduce(consumes=Tally)
async def summarize(params: SyntheticParams, chunks: AsyncIterator[Tally], ctx: Context) -> SyntheticReport:
    outputs = total = 0
    seen: set[int] = set()
    async for t in chunks:
        outputs += 1
        total += t.value
        seen.add(t.index)
    return SyntheticReport(chunks=len(seen), outputs=outputs, total=total)


