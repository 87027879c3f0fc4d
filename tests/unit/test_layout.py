"""The layout tells the truth: imports run one way, `daemon → actors → (storage,
channels, metrics)`, and no two packages (or rooms of daemon/) import each other.

Units are the top-level packages, with daemon/ split into its rooms. A unit may import only
units listed after it in LAYERS; units in the same tuple are peers that must not import
each other. Type-only imports (under TYPE_CHECKING) count too: they are arrows all the same.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Top to bottom. The CLI is the only unit above benchmarks/ (the harness is a library the
# CLI drives); wiring starts the actors and serves HTTP; the HTTP room and built-in jobs are
# served/loaded by wiring; chunkd is the public face of the job model that lives in actors/.
LAYERS: list[tuple[str, ...]] = [
    ("daemon.cli",),
    ("benchmarks",),
    ("daemon.wiring",),
    ("daemon.http",),
    ("daemon.jobs",),
    ("daemon",),          # daemon/__init__.py and the deprecated daemon.sdk alias
    ("chunkd",),
    ("actors",),
    ("storage", "channels"),
    ("metrics",),
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}
PACKAGES = ("daemon", "benchmarks", "chunkd", "actors", "storage", "channels", "metrics")


def unit_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    if parts[0] == "daemon" and len(parts) > 1 and f"daemon.{parts[1]}" in RANK:
        return f"daemon.{parts[1]}"
    return parts[0]


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path = ROOT) -> set[str]:
    """Every module this file imports, relative imports made absolute."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def arrows(root: Path = ROOT) -> list[tuple[str, str, str]]:
    """(importing file, its unit, imported unit) for every import between two units."""
    out = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            me = unit_of(module_name(path, root))
            for other in {unit_of(target) for target in imports_of(path, root)}:
                if me and other and other != me:
                    out.append((str(path.relative_to(root)), me, other))
    return out


def violations(found: list[tuple[str, str, str]]) -> list[str]:
    bad = []
    for path, me, other in found:
        if RANK[other] <= RANK[me]:
            kind = "peer" if RANK[other] == RANK[me] else "upward"
            bad.append(f"{path}: {me} imports {other} ({kind} arrow)")
    return sorted(set(bad))


def test_every_arrow_points_down() -> None:
    assert violations(arrows()) == []


def test_every_unit_has_a_layer() -> None:
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            assert unit_of(module_name(path)) in RANK, path


@pytest.mark.parametrize("line,expect", [
    ("from daemon.wiring.config import Config", "storage/store.py: storage imports daemon.wiring (upward arrow)"),
    ("from channels.base import Channel", "storage/store.py: storage imports channels (peer arrow)"),
    ("from daemon.cli.commands import main", "storage/store.py: storage imports daemon.cli (upward arrow)"),
])
def test_an_upward_import_is_caught(tmp_path: Path, line: str, expect: str) -> None:
    """The check fails when an arrow runs up: a copy of the tree with one bad import added."""
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            dest = tmp_path / path.relative_to(ROOT)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(path.read_text())
    store = tmp_path / "storage" / "store.py"
    store.write_text(store.read_text() + f"\n{line}\n")
    assert violations(arrows(ROOT)) == []  # clean before
    assert expect in violations(arrows(tmp_path))
