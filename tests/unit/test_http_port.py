"""Issue 25 row 2: the HTTP room reaches the daemon only through its port
(actors/operations.py: reads, submit, stop/restart, schedules), never the engine or the pool."""
from __future__ import annotations

from pathlib import Path

import pytest

HTTP = Path(__file__).resolve().parents[2] / "daemon" / "http"


@pytest.mark.parametrize("path", sorted(HTTP.glob("*.py")), ids=lambda p: p.name)
def test_the_http_room_sees_no_engine_and_no_pool(path: Path) -> None:
    text = path.read_text()
    for reach in (".engine(", ".pool", "actors.engine", "actors.control", "store.dsn", ".reader"):
        assert reach not in text, f"{path.name} reaches {reach!r}; go through Api.ops() (actors/operations.py)"
