"""The image installs what the Dockerfile copies, and nothing else (issue 24 row 1).

No container engine is needed: the test reads the Dockerfile, stages exactly the paths its
COPY lines copy (to where they copy them, below a temporary root), runs its `pip` RUN lines
in that staged WORKDIR with a fresh virtual environment's pip, and then runs
`chunkd --version`, a job module's `from chunkd import Job` and the image's HEALTHCHECK
script from that environment, outside the source tree. A package that pyproject.toml lists
but the Dockerfile does not copy (the image once lacked `chunkd/`) fails the install here.

pip uses its cache and the machine's index configuration, so after the first run the
install is local; the RUN lines' `--no-cache-dir` is dropped for that reason only."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
# RUN commands the staging cannot and need not replay (they make the image's user).
SYSTEM_COMMANDS = ("groupadd", "useradd")


@dataclass(frozen=True)
class Step:
    instruction: str  # COPY, RUN, WORKDIR
    args: str
    workdir: str      # the WORKDIR in force


def instructions(text: str) -> list[Step]:
    """The Dockerfile's instructions, line continuations joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    steps, workdir = [], "/"
    for line in joined.splitlines():
        if not line.strip():
            continue
        instruction, _, args = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction == "WORKDIR":
            workdir = os.path.join(workdir, args.strip())
        steps.append(Step(instruction, args.strip(), workdir))
    return steps


def stage(root: Path, steps: list[Step]) -> None:
    """Copy each COPY source from the build context to its destination below `root`."""
    for step in (s for s in steps if s.instruction == "COPY"):
        words = shlex.split(step.args)
        assert not any(w.startswith("--") for w in words), f"COPY option not modelled here: {step.args}"
        *sources, dest = words
        target = Path(os.path.join(step.workdir, dest))
        for source in sources:
            src = ROOT / source
            assert src.exists(), f"the Dockerfile copies {source}, which does not exist"
            # `COPY a b ./` puts files into the directory; `COPY dir ./dir` copies the contents
            into = target / src.name if (dest.endswith("/") or len(sources) > 1) and src.is_file() else target
            out = root / into.relative_to("/")
            if src.is_dir():
                shutil.copytree(src, out, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, out)


def replay_runs(root: Path, steps: list[Step], env_bin: Path) -> None:
    """Each RUN line's `pip` commands with the fresh environment's pip, in the staged WORKDIR."""
    pip_runs = 0
    for step in (s for s in steps if s.instruction == "RUN"):
        for command in re.split(r"\s*&&\s*", step.args):
            words = shlex.split(command)
            cwd = root / Path(step.workdir).relative_to("/")
            if words[0] in SYSTEM_COMMANDS:
                continue
            if words[:2] == ["rm", "-rf"]:
                for path in words[2:]:
                    shutil.rmtree(root / Path(os.path.join(step.workdir, path)).relative_to("/"), ignore_errors=True)
                continue
            assert words[0] == "pip", f"a RUN command this test does not know how to replay: {command!r}"
            args = [w for w in words[1:] if w != "--no-cache-dir"]
            res = subprocess.run([str(env_bin / "python"), "-m", "pip", "--disable-pip-version-check", "-q", *args],
                                 cwd=cwd, capture_output=True, text=True, timeout=600, env=_clean_env())
            assert res.returncode == 0, f"RUN {command} failed in the staged image:\n{res.stdout}{res.stderr}"
            pip_runs += 1
    assert pip_runs >= 2, "expected the locked dependencies and the project to be pip-installed"


def _clean_env() -> dict[str, str]:
    """Nothing of the source tree or the test's own environment leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "CHUNKD_"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT)))
    return env


def test_the_dockerfile_copies_every_package_pyproject_lists() -> None:
    """The cheap half, with no install: each top-level package is copied."""
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    copied = set()
    for step in (s for s in instructions(DOCKERFILE.read_text()) if s.instruction == "COPY"):
        copied.update(Path(w).parts[0] for w in shlex.split(step.args)[:-1])
    missing = sorted({p.split(".")[0] for p in packages} - copied)
    assert not missing, f"pyproject.toml lists packages the Dockerfile does not COPY: {missing}"


def test_what_the_dockerfile_copies_installs_and_runs(tmp_path: Path) -> None:
    steps = instructions(DOCKERFILE.read_text())
    image = tmp_path / "image"
    stage(image, steps)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    env_bin = env_dir / "bin"
    replay_runs(image, steps, env_bin)

    elsewhere = tmp_path / "elsewhere"  # not the source tree, not the staged /app
    elsewhere.mkdir()
    env = _clean_env()
    version = subprocess.run([str(env_bin / "chunkd"), "--version"], cwd=elsewhere, capture_output=True,
                             text=True, timeout=60, env=env)
    assert version.returncode == 0, version.stdout + version.stderr
    assert re.fullmatch(r"chunkd \d+\.\d+\.\d+\S*\n", version.stdout), version.stdout

    # A job module as a user writes one (the README's form), imported the way CHUNKD_JOBS does.
    jobs = elsewhere / "acme_img"
    jobs.mkdir()
    (jobs / "__init__.py").write_text("")
    (jobs / "jobs.py").write_text(
        "import msgspec\nfrom chunkd import Context, Job, Sink\n\n"
        "class P(msgspec.Struct):\n    n: int = 1\n\n"
        "class N(msgspec.Struct, array_like=True):\n    i: int\n\n"
        "job = Job('acme.img', version=1, params=P)\n\n"
        "@job.first_step(emits=N)\nasync def plan(params: P, ctx: Context, sink: Sink[N]) -> None:\n"
        "    sink.emit(N(params.n))\n\n"
        "@job.step(consumes=N)\nasync def use(params: P, chunk: N, ctx: Context) -> None:\n    pass\n")
    probe = ("import importlib.resources as r, sys\n"
             "import chunkd, chunkd.testing\n"
             "from daemon.jobs import load_registry\n"
             "registry = load_registry(['acme_img.jobs'], app_dir='.')\n"
             "assert 'acme.img' in registry.names(), registry.names()\n"
             "assert any(p.name.endswith('.sql') for p in r.files('storage').joinpath('migrations').iterdir())\n"
             "assert r.files('daemon.http').joinpath('ui').is_dir()\n"
             "assert '/site-packages/' in chunkd.__file__, chunkd.__file__\n"
             "print('ok', chunkd.__file__)\n")
    res = subprocess.run([str(env_bin / "python"), "-c", probe], cwd=elsewhere, capture_output=True, text=True,
                         timeout=60, env=env)
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stdout + res.stderr
    assert str(env_dir) in res.stdout  # the staged install, not the source tree

    # The image's HEALTHCHECK script (copied to an absolute path) runs against the install.
    healthcheck = next(image / Path(shlex.split(s.args)[-1]).relative_to("/") for s in steps
                       if s.instruction == "COPY" and "healthcheck.py" in s.args)
    res = subprocess.run([str(env_bin / "python"), str(healthcheck)], cwd=elsewhere, capture_output=True, text=True,
                         timeout=60, env={**env, "CHUNKD_HTTP_ADDR": "off"})
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_replay_fails_without_a_package(tmp_path: Path) -> None:
    """The test itself is not blind: the Dockerfile of before (no `COPY chunkd`) fails the install."""
    steps = [s for s in instructions(DOCKERFILE.read_text())
             if not (s.instruction == "COPY" and shlex.split(s.args)[0] == "chunkd")]
    # only the project install matters here; the locked dependencies are left to the test above
    steps = [s for s in steps if not (s.instruction == "RUN" and "requirements.lock" in s.args)]
    image = tmp_path / "image"
    stage(image, steps)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    with pytest.raises(AssertionError, match="package directory 'chunkd' does not exist|chunkd"):
        replay_runs(image, steps, env_dir / "bin")
