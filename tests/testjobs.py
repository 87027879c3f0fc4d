"""Job definitions the tests load with CHUNKD_JOBS=tests.testjobs."""
from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import anyio
import msgspec

from chunkd import Context, Job, PermanentError, Sink


class CountParams(msgspec.Struct, forbid_unknown_fields=True):
    chunks: int
    work_ms: float = 0.0
    straggler_ms: float = 0.0  # extra time item 0 takes in step one


class Item(msgspec.Struct, array_like=True):
    n: int


class Squared(msgspec.Struct, array_like=True):
    n: int
    sq: int


class Sum(msgspec.Struct):
    count: int
    total: int


# ------------------------------------------------------------ gated, 3 steps + reduction
gated = Job("test.gated", params=CountParams, gated=True)


@gated.first_step(emits=Item)
async def g_plan(params: CountParams, ctx: Context, sink: Sink[Item]) -> None:
    for i in range(params.chunks):
        sink.emit(Item(i))


@gated.step(consumes=Item, emits=Squared)
async def g_square(params: CountParams, chunk: Item, ctx: Context, sink: Sink[Squared]) -> None:
    sink.emit(Squared(chunk.n, chunk.n * chunk.n))


@gated.reduce(consumes=Squared)
async def g_sum(params: CountParams, chunks: AsyncIterator[Squared], ctx: Context) -> Sum:
    return await sum_squares(chunks)


async def sum_squares(chunks: AsyncIterator[Squared]) -> Sum:
    count = total = 0
    async for c in chunks:
        count += 1
        total += c.sq
    return Sum(count, total)


# ------------------------------------------------------------ 4 steps, gated and not
def _four(name: str, gated_: bool) -> Job:
    job = Job(name, params=CountParams, gated=gated_)

    @job.first_step(emits=Item)
    def plan(params: CountParams, ctx: Context, sink: Sink[Item]) -> None:  # a plain function: runs in a thread
        for i in range(params.chunks):
            sink.emit(Item(i))

    @job.step(consumes=Item, emits=Item, transactional=True)
    async def one(params: CountParams, chunk: Item, ctx: Context, sink: Sink[Item]) -> None:
        if params.work_ms:
            await anyio.sleep(params.work_ms / 1000)
        if chunk.n == 0 and params.straggler_ms:
            await anyio.sleep(params.straggler_ms / 1000)
        ctx.tx.execute("INSERT INTO test_trace (step, n, at) VALUES (1, $1, clock_timestamp())", chunk.n)
        sink.emit(Item(chunk.n))

    @job.step(consumes=Item, transactional=True)
    async def two(params: CountParams, chunk: Item, ctx: Context) -> None:
        ctx.tx.execute("INSERT INTO test_trace (step, n, at) VALUES (2, $1, clock_timestamp())", chunk.n)

    return job


gated4 = _four("test.gated4", True)
interleaved4 = _four("test.interleaved4", False)


# ------------------------------------------------------------ transactional ledger
class LedgerParams(msgspec.Struct, forbid_unknown_fields=True):
    chunks: int
    work_ms: float = 0.0


ledger = Job("test.ledger", params=LedgerParams, gated=True)
SLOW_STEP_SECONDS = float(os.environ.get("TEST_SLOW_STEP_SECONDS", "0"))


@ledger.first_step(emits=Item)
async def l_plan(params: LedgerParams, ctx: Context, sink: Sink[Item]) -> None:
    for i in range(params.chunks):
        sink.emit(Item(i))


@ledger.step(consumes=Item, emits=Item, transactional=True, max_attempts=20, backoff_base=0.05, backoff_max=0.5)
async def l_record(params: LedgerParams, chunk: Item, ctx: Context, sink: Sink[Item]) -> None:
    if params.work_ms:
        await anyio.sleep(params.work_ms / 1000)
    if SLOW_STEP_SECONDS:  # the backpressure scenario's slow daemon
        await anyio.sleep(SLOW_STEP_SECONDS)
    ctx.tx.execute("INSERT INTO test_ledger (chunk_id, attempt, n, pid) VALUES ($1, $2, $3, $4)",
                   ctx.chunk_id, ctx.attempt, chunk.n, os.getpid())
    sink.emit(chunk)


@ledger.reduce(consumes=Item)
async def l_sum(params: LedgerParams, chunks: AsyncIterator[Item], ctx: Context) -> Sum:
    count = total = 0
    async for c in chunks:
        count += 1
        total += c.n
    return Sum(count, total)


# ------------------------------------------------------------ failures
class FlakyParams(msgspec.Struct, forbid_unknown_fields=True):
    chunks: int = 3
    bad: int = 1               # the index that fails
    permanent: bool = False
    max_fail_attempts: int = 0  # >0: succeed from this attempt on


flaky = Job("test.flaky", params=FlakyParams)


@flaky.first_step(emits=Item)
async def f_plan(params: FlakyParams, ctx: Context, sink: Sink[Item]) -> None:
    for i in range(params.chunks):
        sink.emit(Item(i))


@flaky.step(consumes=Item, max_attempts=3, backoff_base=0.3, backoff_max=5)
async def f_work(params: FlakyParams, chunk: Item, ctx: Context) -> None:
    if chunk.n == params.bad and not (params.max_fail_attempts and ctx.attempt >= params.max_fail_attempts):
        if params.permanent:
            raise PermanentError(f"item {chunk.n} can never work")
        raise RuntimeError(f"boom on item {chunk.n}")


# ------------------------------------------------------------ poll-waiting
class PollParams(msgspec.Struct):
    wait: float = 0.3


poller = Job("test.poller", params=PollParams)


@poller.first_step(emits=Item)
async def p_plan(params: PollParams, ctx: Context, sink: Sink[Item]) -> None:
    sink.emit(Item(0))


@poller.step(consumes=Item, max_attempts=1)
async def p_wait(params: PollParams, chunk: Item, ctx: Context) -> None:
    if ctx.attempt < 3:
        ctx.retry_later(params.wait)
    ctx.warn(f"ran on attempt {ctx.attempt}")


# ------------------------------------------------------------ concurrency cap, handlers, blocking
class SlowParams(msgspec.Struct):
    chunks: int = 20
    work_ms: float = 20
    block_s: float = 0.0


RUNNING = {"now": 0, "max": 0}
HANDLED: list[tuple[int, object]] = []

capped = Job("test.capped", params=SlowParams, concurrency=2)


@capped.first_step(emits=Item)
async def c_plan(params: SlowParams, ctx: Context, sink: Sink[Item]) -> None:
    for i in range(params.chunks):
        sink.emit(Item(i))


@capped.step(consumes=Item)
async def c_work(params: SlowParams, chunk: Item, ctx: Context) -> None:
    RUNNING["now"] += 1
    RUNNING["max"] = max(RUNNING["max"], RUNNING["now"])
    try:
        await anyio.sleep(params.work_ms / 1000)
    finally:
        RUNNING["now"] -= 1


@capped.completion_handler
def c_done(instance_id: int, report: object) -> None:
    HANDLED.append((instance_id, "completed"))


blocker = Job("test.blocker", params=SlowParams)


@blocker.first_step(emits=Item)
async def b_plan(params: SlowParams, ctx: Context, sink: Sink[Item]) -> None:
    sink.emit(Item(0))


@blocker.step(consumes=Item)
async def b_block(params: SlowParams, chunk: Item, ctx: Context) -> None:
    import time
    time.sleep(params.block_s)  # deliberately blocks the event loop


@flaky.error_handler
async def f_failed(instance_id: int, message: object) -> None:
    HANDLED.append((instance_id, message))


# version 2 of the synthetic-like job, to check that instances stay pinned to their version
class V(msgspec.Struct):
    tag: str = ""


class Out(msgspec.Struct):
    version: int


def _versioned(version: int) -> Job:
    job = Job("test.versioned", version=version, params=V)

    @job.first_step(emits=Item)
    async def plan(params: V, ctx: Context, sink: Sink[Item]) -> None:
        sink.emit(Item(version))

    @job.reduce(consumes=Item)
    async def report(params: V, chunks: AsyncIterator[Item], ctx: Context) -> Out:
        return Out([c.n async for c in chunks][0])
    return job


versioned1 = _versioned(1)
versioned2 = _versioned(2)


# ------------------------------------------------------------ fixable: fails until a table says it is fixed
class FixParams(msgspec.Struct):
    chunks: int = 50
    bad_every: int = 7


fixable = Job("test.fixable", params=FixParams)


@fixable.first_step(emits=Item)
async def x_plan(params: FixParams, ctx: Context, sink: Sink[Item]) -> None:
    for i in range(params.chunks):
        sink.emit(Item(i))


@fixable.step(consumes=Item, emits=Item, max_attempts=1, transactional=True)
async def x_work(params: FixParams, chunk: Item, ctx: Context, sink: Sink[Item]) -> None:
    import asyncpg
    conn = await asyncpg.connect(os.environ["CHUNKD_DATABASE_URL"])
    try:
        fixed = await conn.fetchval("SELECT fixed FROM test_fix")
        ok = fixed or chunk.n % params.bad_every != 3
        await conn.execute("INSERT INTO test_runs (n, ok) VALUES ($1, $2)", chunk.n, ok)
    finally:
        await conn.close()
    if not ok:
        raise RuntimeError(f"item {chunk.n} is broken until test_fix.fixed")
    ctx.tx.execute("INSERT INTO test_ledger (chunk_id, attempt, n, pid) VALUES ($1, $2, $3, $4)",
                   ctx.chunk_id, ctx.attempt, chunk.n, os.getpid())
    sink.emit(chunk)


@fixable.reduce(consumes=Item)
async def x_sum(params: FixParams, chunks: AsyncIterator[Item], ctx: Context) -> Sum:
    count = total = 0
    async for c in chunks:
        count += 1
        total += c.n
    return Sum(count, total)


# ------------------------------------------------------------ a transactional write that violates a constraint
badwrite = Job("test.badwrite", params=CountParams)


@badwrite.first_step(emits=Item)
async def w_plan(params: CountParams, ctx: Context, sink: Sink[Item]) -> None:
    for i in range(params.chunks):
        sink.emit(Item(i))


@badwrite.step(consumes=Item, transactional=True, max_attempts=2, backoff_base=0.05)
async def w_write(params: CountParams, chunk: Item, ctx: Context) -> None:
    ctx.tx.execute("INSERT INTO test_unique (k) VALUES ($1)", chunk.n)


# ------------------------------------------------------------ a local task (runs on every daemon)
from chunkd import LocalTask  # noqa: E402

LOCAL_RUNS: list[float] = []


def _tick() -> None:
    import time
    LOCAL_RUNS.append(time.monotonic())


local_tick = LocalTask(name="test.local-tick", every=0.2, fn=_tick)


# ------------------------------------------------------------ the dashboard's test job: slow, a few retries
class DashParams(msgspec.Struct, forbid_unknown_fields=True):
    chunks: int = 400
    work_ms: float = 50.0
    flaky_every: int = 50   # items n % flaky_every == 7 fail on their first attempt


dash = Job("test.dash", params=DashParams, gated=True, description="Slow items with a few retries, then a sum")


@dash.first_step(emits=Item)
async def d_plan(params: DashParams, ctx: Context, sink: Sink[Item]) -> None:
    for i in range(params.chunks):
        sink.emit(Item(i))


@dash.step(consumes=Item, emits=Squared, backoff_base=0.2, backoff_max=1)
async def d_square(params: DashParams, chunk: Item, ctx: Context, sink: Sink[Squared]) -> None:
    await anyio.sleep(params.work_ms / 1000)
    if chunk.n % params.flaky_every == 7 and ctx.attempt == 1:
        raise RuntimeError(f"item {chunk.n} failed on its first attempt")
    sink.emit(Squared(chunk.n, chunk.n * chunk.n))


@dash.reduce(consumes=Squared)
async def d_sum(params: DashParams, chunks: AsyncIterator[Squared], ctx: Context) -> Sum:
    return await sum_squares(chunks)


# ------------------------------------------------------------ a poison chunk: kills its own process
class PoisonParams(msgspec.Struct, forbid_unknown_fields=True):
    chunks: int = 300
    poison: int = 17
    work_ms: float = 5.0


poison = Job("test.poison", params=PoisonParams, gated=True)


@poison.first_step(emits=Item)
async def pz_plan(params: PoisonParams, ctx: Context, sink: Sink[Item]) -> None:
    for i in range(params.chunks):
        sink.emit(Item(i))


@poison.step(consumes=Item, transactional=True, max_attempts=3, backoff_base=0.05, backoff_max=0.2)
async def pz_record(params: PoisonParams, chunk: Item, ctx: Context) -> None:
    if chunk.n == params.poison:
        os._exit(70)  # as a segfaulting native library would: no exception, no cleanup
    await anyio.sleep(params.work_ms / 1000)
    ctx.tx.execute("INSERT INTO test_ledger (chunk_id, attempt, n, pid) VALUES ($1, $2, $3, $4)",
                   ctx.chunk_id, ctx.attempt, chunk.n, os.getpid())


# ------------------------------------------------------------ trust (issue 14)
class TrustParams(msgspec.Struct, forbid_unknown_fields=True):
    chunks: int = 1
    work_ms: float = 0.0
    nul: str = ""               # "error", "warn" or "report": where a NUL goes
    emit_bytes: int = 0         # one child chunk of this many bytes
    reduce_ms: float = 0.0      # the reduction awaits this long, in small steps
    block_reduce_s: float = 0.0  # the reduction blocks its event loop this long (time.sleep)
    block_env: str = ""         # ...only on the daemon whose environment has this variable


class Blob(msgspec.Struct, array_like=True):
    n: int
    data: bytes = b""


trust = Job("test.trust", params=TrustParams, gated=True)


@trust.first_step(emits=Blob)
async def t_plan(params: TrustParams, ctx: Context, sink: Sink[Blob]) -> None:
    for i in range(params.chunks):
        sink.emit(Blob(i))


@trust.step(consumes=Blob, emits=Blob, max_attempts=3, backoff_base=0.05, backoff_max=0.2)
async def t_work(params: TrustParams, chunk: Blob, ctx: Context, sink: Sink[Blob]) -> None:
    # the start of every run, written at once (not with the chunk): what ran, and when
    await ctx.db.fetchval("INSERT INTO test_started (instance_id, n, at) VALUES ($1, $2, clock_timestamp()) "
                          "RETURNING 1", ctx.instance_id, chunk.n)
    if params.work_ms:
        await anyio.sleep(params.work_ms / 1000)
    if params.nul == "error" and chunk.n == 0:
        raise RuntimeError("binary input \x00 here")
    if params.nul == "warn" and chunk.n == 0:
        ctx.warn("odd byte \x00 in row")
    if params.emit_bytes and chunk.n == 0:
        sink.emit(Blob(chunk.n, b"x" * params.emit_bytes))
        return
    sink.emit(Blob(chunk.n))


@trust.reduce(consumes=Blob, transactional=True)
async def t_reduce(params: TrustParams, chunks: AsyncIterator[Blob], ctx: Context) -> dict[str, object]:
    count = 0
    async for _ in chunks:
        count += 1
    waited = 0.0
    while waited * 1000 < params.reduce_ms:
        await anyio.sleep(0.05)
        waited += 0.05
    if params.block_reduce_s and (not params.block_env or os.environ.get(params.block_env)):
        import time
        time.sleep(params.block_reduce_s)  # blocks this daemon's event loop, no signal at all
    ctx.tx.execute("INSERT INTO test_reduced (instance_id, node) VALUES ($1, $2)", ctx.instance_id, os.getpid())
    if params.nul == "report":
        return {"count": count, "note": "nul \x00 here"}
    if params.nul == "reduce-error":
        raise RuntimeError("reduction saw \x00")
    return {"count": count}


# Session state left by user SQL (ctx.tx) must not outlive its transaction on chunkd's pool:
# the pool skips asyncpg's reset on release, so the store resets such connections itself.
SESSION_LOCK_KEY = 4242
sessionleak = Job("test.sessionleak", params=CountParams, gated=True)


@sessionleak.first_step(emits=Item)
async def s_plan(params: CountParams, ctx: Context, sink: Sink[Item]) -> None:
    for i in range(params.chunks):
        sink.emit(Item(i))


@sessionleak.step(consumes=Item, emits=Item, transactional=True)
async def s_leave_state(params: CountParams, chunk: Item, ctx: Context, sink: Sink[Item]) -> None:
    ctx.tx.execute("SELECT pg_advisory_lock($1)", SESSION_LOCK_KEY)
    ctx.tx.execute("SET application_name = 'chunkd-leaked'")
    sink.emit(chunk)


@sessionleak.reduce(consumes=Item, transactional=True)
async def s_reduce(params: CountParams, chunks: AsyncIterator[Item], ctx: Context) -> Sum:
    count = 0
    async for _ in chunks:
        count += 1
    ctx.tx.execute("SELECT pg_advisory_lock($1)", SESSION_LOCK_KEY + 1)
    ctx.tx.execute("SET application_name = 'chunkd-leaked'")
    return Sum(count, 0)


# ------------------------------------------------------------ runs and cancels (issue 22 rows 1-3)
# A transactional step that records its effect once per input (test_effect) and reacts to
# ctx.cancelled as told: "return" early, "raise", or "ignore" it and finish its work.
class ReactParams(msgspec.Struct, forbid_unknown_fields=True):
    chunks: int
    work_ms: float = 100.0
    react: str = "ignore"


EFFECT_TABLES = """
CREATE TABLE IF NOT EXISTS test_started (instance_id bigint, n int, at timestamptz);
CREATE TABLE IF NOT EXISTS test_effect (instance_id bigint, n int, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS test_reduced (instance_id bigint, node int);
"""


def _react_plan(params: ReactParams, ctx: Context, sink: Sink[Item]) -> None:
    for i in range(params.chunks):
        sink.emit(Item(i))


def _react_effect(params: ReactParams, chunk: Item, ctx: Context, sink: Sink[Item]) -> None:
    ctx.tx.execute("INSERT INTO test_effect (instance_id, n) VALUES ($1, $2)", ctx.instance_id, chunk.n)
    sink.emit(chunk)


def _react_cancelled(params: ReactParams) -> bool:
    """True: the step stops here (returns); raises for "raise"; False: carry on."""
    if params.react == "raise":
        raise RuntimeError("cancelled, so this step gives up")
    return params.react == "return"


async def _react_reduce(params: ReactParams, chunks: AsyncIterator[Item], ctx: Context) -> Sum:
    count = total = 0
    async for c in chunks:
        count += 1
        total += c.n
    ctx.tx.execute("INSERT INTO test_reduced (instance_id, node) VALUES ($1, $2)", ctx.instance_id, os.getpid())
    return Sum(count, total)


react_sync = Job("test.react_sync", params=ReactParams, gated=True)
react_async = Job("test.react_async", params=ReactParams, gated=True)


@react_sync.first_step(emits=Item)
def rs_plan(params: ReactParams, ctx: Context, sink: Sink[Item]) -> None:
    _react_plan(params, ctx, sink)


@react_sync.step(consumes=Item, emits=Item, transactional=True, max_attempts=3, backoff_base=0.05, backoff_max=0.2)
def rs_work(params: ReactParams, chunk: Item, ctx: Context, sink: Sink[Item]) -> None:
    import time
    deadline = time.monotonic() + params.work_ms / 1000
    while time.monotonic() < deadline:
        if ctx.cancelled and _react_cancelled(params):
            return
        time.sleep(0.01)
    _react_effect(params, chunk, ctx, sink)


@react_sync.reduce(consumes=Item, transactional=True)
async def rs_reduce(params: ReactParams, chunks: AsyncIterator[Item], ctx: Context) -> Sum:
    return await _react_reduce(params, chunks, ctx)


@react_async.first_step(emits=Item)
async def ra_plan(params: ReactParams, ctx: Context, sink: Sink[Item]) -> None:
    _react_plan(params, ctx, sink)


@react_async.step(consumes=Item, emits=Item, transactional=True, max_attempts=3, backoff_base=0.05, backoff_max=0.2)
async def ra_work(params: ReactParams, chunk: Item, ctx: Context, sink: Sink[Item]) -> None:
    await ctx.db.fetchval("INSERT INTO test_started (instance_id, n, at) VALUES ($1, $2, clock_timestamp()) "
                          "RETURNING 1", ctx.instance_id, chunk.n)
    deadline = anyio.current_time() + params.work_ms / 1000
    while anyio.current_time() < deadline:
        if ctx.cancelled and _react_cancelled(params):
            return
        try:
            await anyio.sleep(0.01)
        except BaseException:
            if params.react == "ignore":
                continue  # swallows the interruption and finishes its work anyway
            raise
    _react_effect(params, chunk, ctx, sink)


@react_async.reduce(consumes=Item, transactional=True)
async def ra_reduce(params: ReactParams, chunks: AsyncIterator[Item], ctx: Context) -> Sum:
    return await _react_reduce(params, chunks, ctx)


# ------------------------------------------------------------ issue 22 row 6: steps a thread runs
class SyncSleepParams(msgspec.Struct, forbid_unknown_fields=True):
    chunks: int
    sleep_s: float = 0.0  # the first attempt of each chunk sleeps this long in its thread


syncsleep = Job("test.syncsleep", params=SyncSleepParams, gated=True)


@syncsleep.first_step(emits=Item)
async def ss_plan(params: SyncSleepParams, ctx: Context, sink: Sink[Item]) -> None:
    for i in range(params.chunks):
        sink.emit(Item(i))


@syncsleep.step(consumes=Item, transactional=True)
def ss_sleep(params: SyncSleepParams, chunk: Item, ctx: Context) -> None:  # a plain function: a thread
    if ctx.attempt == 1:
        import time
        time.sleep(params.sleep_s)  # deaf to ctx.cancelled and to any cancellation
    ctx.tx.execute("INSERT INTO test_ledger (chunk_id, attempt, n, pid) VALUES ($1, $2, $3, $4)",
                   ctx.chunk_id, ctx.attempt, chunk.n, os.getpid())


syncreduce = Job("test.syncreduce", params=SyncSleepParams, gated=True)


@syncreduce.first_step(emits=Item)
async def sr_plan(params: SyncSleepParams, ctx: Context, sink: Sink[Item]) -> None:
    for i in range(params.chunks):
        sink.emit(Item(i))


@syncreduce.reduce(consumes=Item)
def sr_sum(params: SyncSleepParams, chunks: Iterator[Item], ctx: Context) -> Sum:  # a plain function: a thread
    import time
    time.sleep(params.sleep_s)
    total = count = 0
    for c in chunks:
        count += 1
        total += c.n
    return Sum(count, total)


# ------------------------------------------------------------ issue 22 rows 5 and 7
class FloodParams(msgspec.Struct, forbid_unknown_fields=True):
    n: int = 0  # chunks to emit; 0: for ever (an unchecked parameter, say)


# An async first step that emits without bound and never awaits: the per-run caps
# (CHUNKD_MAX_CHUNKS_PER_RUN, CHUNKD_MAX_EMIT_BYTES_PER_RUN) must stop it.
flood = Job("test.flood", params=FloodParams)


@flood.first_step(emits=Item, max_attempts=3)
async def f_plan(params: FloodParams, ctx: Context, sink: Sink[Item]) -> None:
    i = 0
    while not params.n or i < params.n:
        try:
            sink.emit(Item(i))
        except PermanentError:
            if params.n:
                raise
            # swallowed: the step carries on for a while, as a careless one would
            if i > 3_000_000:
                return
        i += 1


@flood.step(consumes=Item)
async def f_work(params: FloodParams, chunk: Item, ctx: Context) -> None:
    pass


class DbaParams(msgspec.Struct, forbid_unknown_fields=True):
    chunks: int = 1
    hold_s: float = 0.0        # the reduction holds its transaction this long (awaiting)
    sleep_tx_s: float = 0.0    # chunk 0's transactional write runs pg_sleep this long
    slow_check: bool = False   # params_check sleeps 3 s per row of test_dba_slowcheck
    lock_tx: bool = False      # chunk 0's transactional write locks test_dba_locked


# Under a DBA's statement_timeout / idle_in_transaction_session_timeout: a reduction that
# holds its transaction too long and a transactional step whose write runs too long.
dba = Job("test.dba", params=DbaParams, gated=True)


@dba.params_check
async def d_check(params: DbaParams, db: object) -> None:
    if params.slow_check:
        await db.fetchval("SELECT count(*) FROM (SELECT pg_sleep(3) FROM test_dba_slowcheck) s")  # type: ignore[attr-defined]


@dba.first_step(emits=Item)
async def d_plan(params: DbaParams, ctx: Context, sink: Sink[Item]) -> None:
    for i in range(params.chunks):
        sink.emit(Item(i))


@dba.step(consumes=Item, emits=Item, transactional=True, max_attempts=3, backoff_base=0.1, backoff_max=0.5)
async def d_work(params: DbaParams, chunk: Item, ctx: Context, sink: Sink[Item]) -> None:
    ctx.tx.execute("INSERT INTO test_dba_effect (instance_id, n) VALUES ($1, $2)", ctx.instance_id, chunk.n)
    if params.sleep_tx_s and chunk.n == 0:
        ctx.tx.execute("SELECT pg_sleep($1)", params.sleep_tx_s)
    if params.lock_tx and chunk.n == 0:
        ctx.tx.execute("LOCK TABLE test_dba_locked IN ROW EXCLUSIVE MODE")
    sink.emit(chunk)


@dba.reduce(consumes=Item, transactional=True)  # max_attempts: 3 by default
async def d_reduce(params: DbaParams, chunks: AsyncIterator[Item], ctx: Context) -> Sum:
    count = total = 0
    async for c in chunks:
        count += 1
        total += c.n
    if params.hold_s:
        await anyio.sleep(params.hold_s)  # Python work inside the reduction's transaction
    ctx.tx.execute("INSERT INTO test_dba_reduced (instance_id) VALUES ($1)", ctx.instance_id)
    return Sum(count, total)
