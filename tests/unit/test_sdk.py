from collections.abc import AsyncIterator

import msgspec
import pytest

from actors.job import Job, JobDefinitionError, Sink, StepKind
from actors.registry import Registry, UnknownJobError
from daemon.jobs import load_registry


class P(msgspec.Struct):
    x: int = 0


class A(msgspec.Struct):
    a: int


class B(msgspec.Struct):
    b: int


def test_mismatched_chain_fails_at_definition() -> None:
    job = Job("t.bad", params=P)

    @job.first_step(emits=A)
    async def first(params, ctx, sink): ...

    with pytest.raises(JobDefinitionError, match="consumes B but the previous step 'first' emits A"):
        @job.step(consumes=B)
        async def second(params, chunk, ctx): ...


def test_nothing_after_a_last_step() -> None:
    job = Job("t.last", params=P)
    job.first_step(emits=A)(lambda p, c, s: None)
    job.step(consumes=A, name="end")(lambda p, ch, c: None)
    with pytest.raises(JobDefinitionError, match="emits nothing"):
        job.step(consumes=A, name="more")(lambda p, ch, c: None)


def test_dangling_output_rejected_at_registration() -> None:
    job = Job("t.dangling", params=P)
    job.first_step(emits=A)(lambda p, c, s: None)
    job.step(consumes=A, emits=B, name="mid")(lambda p, ch, c, s: None)
    with pytest.raises(JobDefinitionError, match="nothing consumes it"):
        Registry().register(job)


def test_params_must_be_a_struct() -> None:
    with pytest.raises(JobDefinitionError, match="msgspec.Struct"):
        Job("t.p", params=dict)


def test_reduction_shape_and_gating() -> None:
    job = Job("t.red", params=P, gated=False)
    job.first_step(emits=A)(lambda p, c, s: None)

    @job.reduce(consumes=A)
    async def red(params: P, chunks: AsyncIterator[A], ctx: object) -> dict: ...

    Registry().register(job)
    assert job.has_reduction and job.work_steps == 1
    assert job.steps[-1].kind is StepKind.REDUCE
    assert job.child_gated(0)  # reduction input always waits
    assert not job.steps[0].is_async and job.steps[1].is_async


def test_sink_checks_type() -> None:
    sink: Sink[A] = Sink(A)
    sink.emit(A(1))
    with pytest.raises(TypeError, match="emits A"):
        sink.emit(B(1))  # type: ignore[arg-type]
    assert len(sink) == 1


def test_sink_caps_one_run_and_keeps_refusing() -> None:
    """Issue 22 row 7: a run's children are held until it ends, so one run may emit at most
    max_chunks chunks and max_total bytes; past either, emit raises and keeps raising (a step
    that swallows it still fails: too_large), and what was held is given back."""
    from chunkd import EmitLimitExceeded, PermanentError
    sink: Sink[A] = Sink(A, max_chunks=3)
    for i in range(3):
        sink.emit(A(i))
    with pytest.raises(EmitLimitExceeded, match=r"more than 3 chunks.*CHUNKD_MAX_CHUNKS_PER_RUN"):
        sink.emit(A(3))
    assert len(sink) == 0 and sink.too_large and "CHUNKD_MAX_CHUNKS_PER_RUN" in sink.too_large
    with pytest.raises(EmitLimitExceeded):
        sink.emit(A(4))
    assert issubclass(EmitLimitExceeded, PermanentError)
    by_bytes: Sink[A] = Sink(A, max_chunks=10**6, max_total=20)
    with pytest.raises(EmitLimitExceeded, match=r"more than 20 bytes.*CHUNKD_MAX_EMIT_BYTES_PER_RUN"):
        for i in range(100):
            by_bytes.emit(A(i))
    with pytest.raises(EmitLimitExceeded, match="CHUNKD_MAX_EMIT_BYTES_PER_RUN"):
        by_bytes.emit(A(0))


def test_registry_versions_and_unknown() -> None:
    reg = load_registry([])
    assert reg.get("chunkd.synthetic").version == 1
    with pytest.raises(UnknownJobError, match="unknown job 'nope'"):
        reg.get("nope")
    with pytest.raises(UnknownJobError, match="known versions"):
        reg.get("chunkd.synthetic", 9)


def test_loading_a_missing_module_is_a_clear_error() -> None:
    with pytest.raises(JobDefinitionError, match="cannot import job module 'no.such.module'"):
        load_registry(["no.such.module"])


def test_daemon_sdk_is_a_deprecated_alias_of_chunkd() -> None:
    import importlib
    import sys

    import pytest

    import chunkd
    sys.modules.pop("daemon.sdk", None)
    with pytest.warns(DeprecationWarning, match=r"removed in chunkd 0\.2\.0: import from chunkd"):
        sdk = importlib.import_module("daemon.sdk")
    assert sdk.Job is chunkd.Job and sdk.__all__ == chunkd.__all__
    assert not hasattr(sdk, "StepDef")  # nothing internal through the alias


def test_daemon_sdk_is_gone_by_the_release_it_names() -> None:
    """The alias names the release that removes it; reaching that version with the alias still
    here fails (then remove daemon/sdk.py and these two tests)."""
    import re
    import tomllib
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    found = re.search(r'^REMOVED_IN = "(\d+)\.(\d+)\.(\d+)"$', (root / "daemon" / "sdk.py").read_text(), re.M)
    assert found, "daemon/sdk.py names no release that removes it"
    removed_in = tuple(int(n) for n in found.groups())
    assert tuple(int(n) for n in version.split(".")[:3]) < removed_in, \
        f"chunkd {version} still ships daemon.sdk, which promised to be gone in {'.'.join(map(str, removed_in))}"
