"""Job registry: the built-in jobs plus the modules named by CHUNKD_JOBS."""
from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable

from actors.job import Job, JobDefinitionError, LocalTask, Schedule


class UnknownJobError(LookupError):
    pass


class Registry:
    def __init__(self) -> None:
        self.app_dir = os.getcwd()
        self._jobs: dict[tuple[str, int], Job] = {}
        self.schedules: dict[str, Schedule] = {}
        self.builtin_schedules: set[str] = set()  # declared by chunkd's own job modules
        self.local_tasks: dict[str, LocalTask] = {}

    def register(self, job: Job) -> None:
        job.validate()
        key = (job.name, job.version)
        existing = self._jobs.get(key)
        if existing is not None and existing is not job:
            raise JobDefinitionError(f"job {job.name!r} version {job.version} is defined twice")
        self._jobs[key] = job

    def load_module(self, module_name: str, builtin: bool = False) -> list[Job]:
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise JobDefinitionError(f"cannot import job module {module_name!r}: {e}{self._hint(e, module_name)}") from None
        found = [v for v in vars(module).values() if isinstance(v, Job)]
        extras = [v for v in vars(module).values() if isinstance(v, (Schedule, LocalTask))]
        if not found and not extras:
            raise JobDefinitionError(f"job module {module_name!r} defines no Job, Schedule or LocalTask")
        for job in found:
            self.register(job)
        for item in extras:
            if isinstance(item, Schedule):
                self.schedules[item.name] = item
                if builtin:
                    self.builtin_schedules.add(item.name)
            else:
                self.local_tasks[item.name] = item
        return found

    def _hint(self, e: ImportError, module_name: str) -> str:
        """Where to look: the folder is wrong, or the folder is right and a submodule is missing."""
        top = module_name.split(".")[0]
        missing = e.name if isinstance(e, ModuleNotFoundError) else None
        if missing == top:
            return (f" (looked in the app dir {self.app_dir} and on PYTHONPATH: run chunkd from the folder that "
                    f"holds {top}.py or {top}/, or pass --app-dir FOLDER, or add that folder to PYTHONPATH)")
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            parent, _, leaf = missing.rpartition(".")
            found = getattr(sys.modules.get(parent), "__path__", None)
            where = f" at {list(found)[0]}" if found else ""
            return (f" (the package {parent!r} was found{where}, but it has no submodule {leaf!r}: no {leaf}.py "
                    f"or {leaf}/ in it; check the module name in CHUNKD_JOBS)")
        return ""

    def get(self, name: str, version: int | None = None) -> Job:
        if version is not None:
            job = self._jobs.get((name, version))
            if job is None:
                known = sorted(v for (n, v) in self._jobs if n == name)
                raise UnknownJobError(
                    f"unknown job {name!r} version {version}" + (f" (known versions: {known})" if known else
                                                                 f"; known jobs: {', '.join(self.names())}"))
            return job
        versions = [v for (n, v) in self._jobs if n == name]
        if not versions:
            raise UnknownJobError(f"unknown job {name!r}; known jobs: {', '.join(self.names()) or 'none'}")
        return self._jobs[(name, max(versions))]

    def names(self) -> list[str]:
        return sorted({n for (n, _) in self._jobs})

    def jobs(self) -> list[Job]:
        return [self._jobs[k] for k in sorted(self._jobs)]


def build_registry(modules: Iterable[str], app_dir: str | None = None, builtin: Iterable[str] = ()) -> Registry:
    """`app_dir` (default: the working directory) goes first on sys.path, as uvicorn's
    --app-dir and celery do, so `CHUNKD_JOBS=myjobs` finds ./myjobs.py without PYTHONPATH."""
    reg = Registry()
    modules = list(modules)
    if modules:
        reg.app_dir = os.path.abspath(app_dir or os.getcwd())
        if not os.path.isdir(reg.app_dir):
            raise JobDefinitionError(f"--app-dir {app_dir!r} is not a folder")
        if reg.app_dir not in sys.path:
            sys.path.insert(0, reg.app_dir)
    for name in builtin:
        reg.load_module(name, builtin=True)
    for name in modules:
        reg.load_module(name)
    return reg
