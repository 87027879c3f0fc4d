"""The README's "Where things are" table names functions that exist."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def places() -> list[str]:
    section = README.split("### Where things are", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"`([\w/]+\.py:[\w.]+)`", section)


def test_the_table_is_there() -> None:
    assert len(places()) >= 15


def test_every_named_function_exists() -> None:
    for place in places():
        path, qualname = place.split(":")
        module = importlib.import_module(path[:-3].replace("/", "."))
        obj = module
        for part in qualname.split("."):
            assert hasattr(obj, part), f"README names {place}, which does not exist"
            obj = getattr(obj, part)
        assert callable(obj), place


def test_every_cited_rule_is_in_the_readme() -> None:
    """Comments cite the correctness rules as "rule N": each N is in README's numbered list."""
    section = README.split("## Correctness rules", 1)[1].split("\n## ", 1)[0]
    listed = {int(n) for n in re.findall(r"^(\d+)\. ", section, flags=re.M)}
    assert listed == set(range(1, len(listed) + 1)) and len(listed) >= 14
    root = Path(__file__).resolve().parents[2]
    cited: dict[int, str] = {}
    for folder in ("chunkd", "daemon", "actors", "storage", "channels", "metrics", "benchmarks", "tests"):
        for path in (root / folder).rglob("*.py"):
            for n in re.findall(r"\b[Rr]ules? (\d+)\b", path.read_text()):
                cited.setdefault(int(n), str(path.relative_to(root)))
    assert cited, "no citation found: the pattern is wrong"
    missing = {n: where for n, where in cited.items() if n not in listed}
    assert not missing, f"cited but not in README's correctness rules: {missing}"
