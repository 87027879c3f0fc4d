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
