"""chunkd.testing: the README's example job and its README test, run in memory without
Postgres; plus what run_job promises (codecs, retries, fail-fast, tx, warnings)."""
from __future__ import annotations

import re
import sys
import types
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from chunkd import Context, Job, ParameterError, PermanentError, Sink
from chunkd.testing import JobFailed, run_job

pytestmark = pytest.mark.anyio
README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _readme_block(start: str) -> str:
    block = re.search(r"```python\n(" + re.escape(start) + r".*?)```", README, flags=re.S)
    assert block is not None, start
    return block.group(1)


@pytest.fixture
def acme_jobs() -> types.ModuleType:
    """The README's example job as the module `acme.jobs` its test imports."""
    acme, jobs = types.ModuleType("acme"), types.ModuleType("acme.jobs")
    acme.jobs = jobs  # type: ignore[attr-defined]
    sys.modules.update({"acme": acme, "acme.jobs": jobs})
    try:
        exec(compile(_readme_block("# acme/jobs.py"), "README.md", "exec"), jobs.__dict__)
        yield jobs
    finally:
        del sys.modules["acme"], sys.modules["acme.jobs"]


async def test_the_readme_job_test_passes(acme_jobs: types.ModuleType) -> None:
    tests: dict[str, object] = {}
    exec(compile(_readme_block("# tests/test_acme_jobs.py"), "README.md", "exec"), tests)
    await tests["test_export_writes_every_row"]()  # type: ignore[operator]
    await tests["test_a_failing_chunk_is_retried"]()  # type: ignore[operator]
    await tests["test_bad_parameters_are_refused"]()  # type: ignore[operator]


async def test_readme_job_report_and_tx(acme_jobs: types.ModuleType) -> None:
    run = await run_job(acme_jobs.job, {"table": "t", "rows": 2001, "chunk_size": 1000})
    assert run.report == {"files": 3, "rows": 2001}
    assert [w.count for w in run.emitted["write"]] == [1000, 1000, 1]
    assert [op.args[1] for op in run.tx["write"]] == [0, 1000, 2000]


async def test_parameters_are_decoded_as_a_submit_does(acme_jobs: types.ModuleType) -> None:
    # the public error (issue 24 row 8): a job's test never needs storage.codec.DataError
    with pytest.raises(ParameterError, match="rows"):
        await run_job(acme_jobs.job, {"table": "t"})  # `rows` is required
    with pytest.raises(ParameterError, match="unknown") as refused:
        await run_job(acme_jobs.job, {"table": "t", "rows": 1, "unknown": 1})  # forbid_unknown_fields
    assert refused.value.path == "$.unknown"  # as the API: the unknown field's own path
    with pytest.raises(ParameterError) as refused:
        await run_job(acme_jobs.job, {"table": "t", "rows": "many"})
    assert refused.value.path == "$.rows" and str(refused.value).startswith("job 'acme.export': ")


# ------------------------------------------------------------------ a job that shows the edges
class P(msgspec.Struct):
    n: int = 3
    permanent_at: int = -1


class Item(msgspec.Struct):
    i: int


class Lossy(msgspec.Struct):   # declares int; a step that puts a str in gets caught by the codec
    v: int


edge = Job("test.edge", params=P, fail_instance_on_chunk_failure=False)


@edge.first_step(emits=Item)
def plan(params: P, ctx: Context, sink: Sink[Item]) -> None:  # a plain-function step
    for i in range(params.n):
        sink.emit(Item(i))


@edge.step(consumes=Item, emits=Item, max_attempts=2)
async def work(params: P, chunk: Item, ctx: Context, sink: Sink[Item]) -> None:
    if chunk.i == params.permanent_at:
        raise PermanentError("bad row")
    ctx.warn(f"saw {chunk.i}")
    sink.emit(Item(chunk.i * 10))


@edge.reduce(consumes=Item)
async def total(params: P, chunks: AsyncIterator[Item], ctx: Context) -> dict[str, int]:
    return {"sum": sum([c.i async for c in chunks])}


async def test_retries_up_to_max_attempts_then_the_chunk_fails() -> None:
    always = lambda c: RuntimeError("down") if c.step == "work" and c.index == 1 else None  # noqa: E731
    run = await run_job(edge, {"n": 3}, inject=always)
    assert run.attempts("work", 1) == 2                      # max_attempts=2
    assert run.failed_chunks == ["step 'work' chunk 1: RuntimeError: down"]
    assert run.status == "COMPLETED" and run.report == {"sum": 20}  # no fail-fast: the rest went on
    assert run.warnings == [("work", "saw 0"), ("work", "saw 2")]


async def test_permanent_error_fails_at_once_and_fail_fast_fails_the_run() -> None:
    strict = Job("test.edge-strict", params=P)
    strict.first_step(emits=Item)(plan)
    strict.step(consumes=Item, emits=Item, max_attempts=5)(work)
    strict.reduce(consumes=Item)(total)
    run = await run_job(strict, {"n": 3, "permanent_at": 0}, check=False)
    assert run.status == "FAILED" and "permanent error" in (run.error or "")
    assert run.attempts("work", 0) == 1
    with pytest.raises(JobFailed, match="bad row"):
        await run_job(strict, {"n": 3, "permanent_at": 0})


async def test_a_chunk_that_does_not_round_trip_fails_here() -> None:
    lossy = Job("test.lossy", params=P)

    @lossy.first_step(emits=Lossy)
    async def make(params: P, ctx: Context, sink: Sink[Lossy]) -> None:
        sink.emit(Lossy("not an int"))  # type: ignore[arg-type] - msgspec does not check at construction

    @lossy.step(consumes=Lossy)
    async def use(params: P, chunk: Lossy, ctx: Context) -> None:
        pass

    with pytest.raises(JobFailed, match="does not decode as Lossy"):
        await run_job(lossy, {})


async def test_plain_function_steps_and_reducers_run_off_the_loop_as_in_the_daemon() -> None:
    # issue 25 row 1: run_job drives the daemon's executor and maintenance, so a blocking
    # plain-function step runs in a worker thread here too (tests/integration/test_testing_parity.py
    # compares the whole outcome with a real daemon's)
    from tests.samejobs import same
    run = await run_job(same, {"n": 3, "fail_once_at": 2, "sleep_ms": 1})
    assert run.report == {"sum": 30, "chunks": 3, "steps_on_loop": 0, "reducer_on_loop": False}
    assert run.attempts("work", 2) == 2 and run.calls[-1].step == "total"


async def test_an_oversize_chunk_fails_with_the_executors_message() -> None:
    from tests.samejobs import same
    run = await run_job(same, {"n": 1, "big": True, "sleep_ms": 0}, max_chunk_bytes=1 << 20, check=False)
    assert run.status == "FAILED"
    assert run.error == ("step 'plan' failed: permanent error: ChunkTooLarge: an emitted Item chunk is 2,097,160 "
                         "bytes, over the limit of 1,048,576 bytes (CHUNKD_MAX_CHUNK_BYTES); emit smaller chunks")
