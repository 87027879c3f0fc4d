"""The job-definition SDK: what a user writes.

    job = Job("acme.export", version=1, params=ExportParams, gated=True)

    @job.first_step(emits=IdRange)
    async def plan(params, ctx, sink): ...

    @job.step(consumes=IdRange, emits=FileRef)
    async def write(params, chunk, ctx, sink): ...

    @job.reduce(consumes=FileRef)
    async def manifest(params, chunks, ctx): ...

A chain whose types do not line up raises JobDefinitionError when the module is imported.
"""
from __future__ import annotations

import enum
import inspect
from collections.abc import Callable
from typing import Any, Generic, NoReturn, TypeVar

import msgspec

from storage.codec import encode
from storage.types import TxOp

T = TypeVar("T")


class JobDefinitionError(ValueError):
    """A job definition that cannot run (bad chain, bad types, duplicate name)."""


class PermanentError(Exception):
    """Raise from a step to fail the chunk at once, without retries."""


class ParameterError(ValueError):
    """Raise from a job's params_check: the submit is refused (HTTP 422) and nothing is written."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class RetryLater(Exception):
    """Raised by ctx.retry_later(): run this chunk again later; not an error."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"retry in {seconds}s")
        self.seconds = seconds


class StepKind(str, enum.Enum):
    FIRST = "first"
    MIDDLE = "middle"
    LAST = "last"
    REDUCE = "reduce"


class ChunkTooLarge(PermanentError):
    """An emitted chunk's encoded data is over CHUNKD_MAX_CHUNK_BYTES: the step fails at once."""


class EmitLimitExceeded(PermanentError):
    """One step run emitted more chunks than CHUNKD_MAX_CHUNKS_PER_RUN, or more bytes than
    CHUNKD_MAX_EMIT_BYTES_PER_RUN: the step fails at once (its children are held in memory
    until the run ends, so an unbounded emitter would take the daemon down)."""


DEFAULT_MAX_CHUNK_BYTES = 64 << 20
DEFAULT_MAX_CHUNKS_PER_RUN = 1_000_000
DEFAULT_MAX_EMIT_BYTES_PER_RUN = 256 << 20


class Sink(Generic[T]):
    """Where a step emits its output chunks; each is encoded once, here, and checked
    against the size limits before it can reach the database. A run's children stay in
    memory until it ends (they commit with its completion, exactly once), so one run may
    emit at most `max_chunks` chunks and `max_total` bytes: past either, emit raises
    EmitLimitExceeded, and keeps raising, however often the step catches it. The checks are
    integer compares: emit is on the hot path of every step that fans out."""

    __slots__ = ("_type", "encoded", "max_bytes", "max_chunks", "max_total", "total", "too_large")

    def __init__(self, tp: type, max_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
                 max_chunks: int = DEFAULT_MAX_CHUNKS_PER_RUN, max_total: int = DEFAULT_MAX_EMIT_BYTES_PER_RUN) -> None:
        self._type = tp
        self.encoded: list[bytes] = []
        self.max_bytes = max_bytes
        self.max_chunks = max_chunks
        self.max_total = max_total
        self.total = 0  # encoded bytes emitted so far by this run
        self.too_large: str | None = None  # set even if the step swallows the exception

    def emit(self, item: T) -> None:
        if not isinstance(item, self._type):
            raise TypeError(f"this step emits {self._type.__name__}, got {type(item).__name__}")
        if len(self.encoded) >= self.max_chunks:
            self._over("this step run emitted more than {:,} chunks, the limit of one run (CHUNKD_MAX_CHUNKS_PER_RUN); "
                       "emit fewer, larger chunks or split the work over more runs", self.max_chunks)
        data = encode(item)
        n = len(data)
        if n > self.max_bytes:
            self.too_large = (f"an emitted {self._type.__name__} chunk is {n:,} bytes, over the limit of "
                              f"{self.max_bytes:,} bytes (CHUNKD_MAX_CHUNK_BYTES); emit smaller chunks")
            raise ChunkTooLarge(self.too_large)
        self.total += n
        if self.total > self.max_total:
            self._over("this step run emitted more than {:,} bytes of chunks, the limit of one run "
                       "(CHUNKD_MAX_EMIT_BYTES_PER_RUN); split the work over more runs", self.max_total)
        self.encoded.append(data)

    def _over(self, message: str, limit: int) -> NoReturn:
        if self.too_large is None:
            self.too_large = message.format(limit)
            self.encoded.clear()  # the run fails: give its memory back at once
            self.max_chunks = 0   # every later emit raises at the first compare, cheaply
        raise EmitLimitExceeded(self.too_large)

    def __len__(self) -> int:
        return len(self.encoded)


class Tx:
    """Transactional handle: writes queued here commit in the same transaction that
    marks the chunk COMPLETED, and only if this attempt still holds the chunk.
    They are not visible to reads inside the step."""

    __slots__ = ("ops", "enabled")

    def __init__(self, enabled: bool) -> None:
        self.ops: list[TxOp] = []
        self.enabled = enabled

    def execute(self, query: str, *args: Any) -> None:
        if not self.enabled:
            raise RuntimeError("ctx.tx is only available in steps declared with transactional=True")
        self.ops.append(TxOp(query, args))


class Context:
    """What a step run knows about itself."""

    __slots__ = ("job", "instance_id", "chunk_id", "step", "attempt", "_log", "_base_log", "tx", "warnings", "db",
                 "cancelled")

    def __init__(self, job: str, instance_id: int, chunk_id: int | None, step: str, attempt: int,
                 log: Any, transactional: bool, db: Any = None) -> None:
        self.job = job
        self.instance_id = instance_id
        self.chunk_id = chunk_id
        self.step = step
        self.attempt = attempt
        self._base_log = log
        self._log: Any = None
        self.tx = Tx(transactional)
        self.warnings: list[str] = []
        self.db = db  # reads: await ctx.db.fetch(sql, *args) / fetchrow / fetchval
        # True once the instance was cancelled (or failed) while this step runs. An async
        # step is also cancelled at its next await; a plain-function step (a worker
        # thread cannot be interrupted) should check this flag in long loops and return.
        self.cancelled = False

    @property
    def log(self) -> Any:
        """A structlog logger bound to job, instance, step and chunk (bound on first use:
        most steps never log, and binding per chunk is measurable)."""
        if self._log is None:
            self._log = self._base_log.bind(job=self.job, instance_id=self.instance_id, step=self.step,
                                            chunk_id=self.chunk_id)
        return self._log

    def retry_later(self, seconds: float) -> NoReturn:
        """Run this chunk again after `seconds`, without counting an error (batch2's POLL_WAITING)."""
        raise RetryLater(float(seconds))

    def warn(self, message: str) -> None:
        """A warning rolled up to the instance."""
        self.warnings.append(str(message))


class StepDef(msgspec.Struct, frozen=True):
    name: str
    index: int
    kind: StepKind
    fn: Callable[..., Any]
    consumes: type | None
    emits: type | None
    max_attempts: int
    transactional: bool
    weight: float
    is_async: bool
    backoff_base: float
    backoff_max: float


def _check_struct_type(tp: Any, what: str, job: str) -> None:
    if tp is None:
        return
    if not (isinstance(tp, type) and issubclass(tp, msgspec.Struct)):
        raise JobDefinitionError(f"job {job!r}: {what} must be a msgspec.Struct subclass, got {tp!r}")


class Job:
    """A job definition: name, version, parameter type, gating, and a chain of steps."""

    def __init__(self, name: str, *, version: int = 1, params: type, gated: bool = False,
                 concurrency: int | None = None, fail_instance_on_chunk_failure: bool = True,
                 description: str = "") -> None:
        if not name or not isinstance(name, str):
            raise JobDefinitionError("a job needs a non-empty name")
        if not isinstance(version, int) or version < 1:
            raise JobDefinitionError(f"job {name!r}: version must be an integer >= 1")
        _check_struct_type(params, "params", name)
        if concurrency is not None and concurrency < 1:
            raise JobDefinitionError(f"job {name!r}: concurrency must be >= 1")
        self.name = name
        self.version = version
        self.params = params
        self.gated = gated
        self.concurrency = concurrency
        self.fail_instance_on_chunk_failure = fail_instance_on_chunk_failure
        self.description = description
        self.steps: list[StepDef] = []
        self.on_complete: Callable[..., Any] | None = None
        self.on_error: Callable[..., Any] | None = None
        self.check: Callable[..., Any] | None = None

    def __repr__(self) -> str:
        return f"Job({self.name!r}, version={self.version})"

    # ---------------------------------------------------------------- declaring steps
    def _add(self, fn: Callable[..., Any], kind: StepKind, consumes: type | None, emits: type | None,
             name: str | None, max_attempts: int, transactional: bool, weight: float,
             backoff_base: float, backoff_max: float) -> Callable[..., Any]:
        step_name = name or fn.__name__
        where = f"job {self.name!r} step {step_name!r}"
        if self.steps and self.steps[-1].emits is None:
            raise JobDefinitionError(f"{where}: the previous step {self.steps[-1].name!r} emits nothing, "
                                     "so no step can follow it")
        if kind is StepKind.FIRST and self.steps:
            raise JobDefinitionError(f"{where}: first_step must be declared first")
        if kind is not StepKind.FIRST and not self.steps:
            raise JobDefinitionError(f"{where}: declare a first_step before other steps")
        _check_struct_type(consumes, "consumes", self.name)
        _check_struct_type(emits, "emits", self.name)
        if self.steps and consumes is not self.steps[-1].emits:
            prev = self.steps[-1]
            raise JobDefinitionError(
                f"{where} consumes {getattr(consumes, '__name__', consumes)} but the previous step "
                f"{prev.name!r} emits {getattr(prev.emits, '__name__', prev.emits)}")
        if any(s.name == step_name for s in self.steps):
            raise JobDefinitionError(f"{where}: duplicate step name")
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise JobDefinitionError(f"{where}: max_attempts must be an integer >= 1")
        if weight <= 0:
            raise JobDefinitionError(f"{where}: weight must be > 0")
        self.steps.append(StepDef(
            name=step_name, index=len(self.steps), kind=kind, fn=fn, consumes=consumes, emits=emits,
            max_attempts=max_attempts, transactional=transactional, weight=float(weight),
            is_async=inspect.iscoroutinefunction(fn), backoff_base=backoff_base, backoff_max=backoff_max))
        return fn

    def first_step(self, *, emits: type, name: str | None = None, max_attempts: int = 3,
                   transactional: bool = False, weight: float = 1.0,
                   backoff_base: float = 1.0, backoff_max: float = 300.0) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """`fn(params, ctx, sink)`: reads only the parameters and emits chunks."""
        if emits is None:
            raise JobDefinitionError(f"job {self.name!r}: the first step must emit a type")
        return lambda fn: self._add(fn, StepKind.FIRST, None, emits, name, max_attempts, transactional,
                                    weight, backoff_base, backoff_max)

    def step(self, *, consumes: type, emits: type | None = None, name: str | None = None,
             max_attempts: int = 3, transactional: bool = False, weight: float = 1.0,
             backoff_base: float = 1.0, backoff_max: float = 300.0) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """`fn(params, chunk, ctx, sink)` for a middle step, `fn(params, chunk, ctx)` when emits=None (last)."""
        kind = StepKind.MIDDLE if emits is not None else StepKind.LAST
        return lambda fn: self._add(fn, kind, consumes, emits, name, max_attempts, transactional,
                                    weight, backoff_base, backoff_max)

    def reduce(self, *, consumes: type, name: str | None = None, transactional: bool = False,
               weight: float = 1.0, max_attempts: int = 3, backoff_base: float = 1.0,
               backoff_max: float = 60.0) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """`fn(params, chunks, ctx) -> report`: sees every chunk of the previous step, streamed.
        A failed run (the reducer raised, or the database ended its transaction: a statement
        or idle-in-transaction timeout) runs again after a backoff, and the instance FAILS
        after `max_attempts` of them."""
        return lambda fn: self._add(fn, StepKind.REDUCE, consumes, None, name, max_attempts, transactional,
                                    weight, backoff_base, backoff_max)

    def params_check(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`async fn(params, db)`: checks that need the database (does the table exist?), run at
        submit; raise ParameterError to refuse the submit with a 422."""
        self.check = fn
        return fn

    def completion_handler(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn(instance_id, report)` after the instance COMPLETED (best effort, at-least-once)."""
        self.on_complete = fn
        return fn

    def error_handler(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn(instance_id, message)` after the instance FAILED (best effort, at-least-once)."""
        self.on_error = fn
        return fn

    # ---------------------------------------------------------------- queries
    def validate(self) -> None:
        if len(self.steps) < 2:
            raise JobDefinitionError(f"job {self.name!r}: needs a first step and at least one more step")
        last = self.steps[-1]
        if last.emits is not None:
            raise JobDefinitionError(
                f"job {self.name!r}: the last step {last.name!r} emits {last.emits.__name__} "
                "but nothing consumes it; add a step or drop emits")
        for s in self.steps[:-1]:
            if s.kind in (StepKind.LAST, StepKind.REDUCE):
                raise JobDefinitionError(f"job {self.name!r}: step {s.name!r} ends the chain but is not last")

    @property
    def has_reduction(self) -> bool:
        return bool(self.steps) and self.steps[-1].kind is StepKind.REDUCE

    @property
    def work_steps(self) -> int:
        """Steps that run per chunk (all but a trailing reduction)."""
        return len(self.steps) - (1 if self.has_reduction else 0)

    def step_closes_a_move(self, step_index: int, emitted: bool) -> bool:
        """Whether the end of step `step_index` may let an instance move on: its gate opens
        (a gated job), its work is done (the last work step: FINALIZE or COMPLETED), or the
        next step may be empty (this chunk emitted nothing). Otherwise the next step's chunks,
        READY already, are what moves it."""
        return self.gated or step_index >= self.work_steps - 1 or not emitted

    def child_gated(self, step_index: int) -> bool:
        """Do chunks emitted by step `step_index` wait for a gate?"""
        nxt = step_index + 1
        return self.gated or (nxt < len(self.steps) and self.steps[nxt].kind is StepKind.REDUCE)

    def decode_params(self, raw: str | bytes) -> Any:
        from storage.codec import params_from_json
        return params_from_json(raw, self.params)


class Schedule(msgspec.Struct, frozen=True, kw_only=True):
    """A clustered schedule declared in a job module: fires once per occurrence across
    all daemons. Give `cron` (Unix: 5 fields; Quartz: 6-7 fields, seconds first; Spring: 6) or
    `every` (seconds), and for a cron the `dialect` ("quartz", "spring" or "unix") where it
    matters: a 6-field expression with a numeric day-of-week, which Quartz and Spring read
    differently, is refused without one. An invalid one stops `chunkd run` at start (exit 2)."""
    name: str
    job: str
    params: dict[str, Any] = {}
    cron: str | None = None
    every: float | None = None
    timezone: str = "UTC"
    missed: str = "skip"          # or "run_once": after downtime, one run for all missed ones
    version: int | None = None
    dialect: str | None = None    # quartz, spring or unix; None: by field count where unambiguous


class LocalTask(msgspec.Struct, frozen=True, kw_only=True):
    """Runs on every daemon every `every` seconds (e.g. cache expiry): `fn()` or `async fn()`."""
    name: str
    every: float
    fn: Callable[[], Any]
