"""The README's example job must be a valid, registrable job definition."""
import re
import sys
import types
from pathlib import Path

from actors.registry import Registry
from chunkd import Job

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_example_job_registers() -> None:
    block = re.search(r"```python\n(# acme/jobs.py.*?)```", README, flags=re.S)
    assert block is not None
    module = types.ModuleType("acme_jobs_readme")
    sys.modules[module.__name__] = module
    try:
        exec(compile(block.group(1), "README.md", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    jobs = [v for v in vars(module).values() if isinstance(v, Job)]
    assert [j.name for j in jobs] == ["acme.export"]
    Registry().register(jobs[0])
    assert [s.name for s in jobs[0].steps] == ["plan", "write", "manifest"]
