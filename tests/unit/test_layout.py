"""The layout tells the truth: imports run one way, `benchmarks → daemon → actors → (storage,
channels, metrics)`, no two packages (or rooms of daemon/) import each other, and no import
cycle exists anywhere: not between files, not between packages.

Units are the top-level packages, with daemon/ split into its rooms. A unit may import only
units listed after it in LAYERS; units in the same tuple are peers that must not import
each other. Every import is an arrow: at module top, inside a function (a lazy import is a
dependency all the same), under TYPE_CHECKING, and `importlib.import_module("x.y")` /
`__import__("x.y")` with a literal name. (Job modules named by configuration, CHUNKD_JOBS and
daemon/jobs' BUILTIN_MODULES, are plugins loaded by name, not arrows.)
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Top to bottom. benchmarks/ is a program on top of the daemon: it starts nodes (wiring),
# submits through actors, renders with the CLI's tables; `chunkd bench` hands the process over
# to `python -m benchmarks` instead of importing it. Wiring starts the actors and serves HTTP;
# the HTTP room and built-in jobs are served/loaded by wiring; chunkd is the public face of
# the job model that lives in actors/.
LAYERS: list[tuple[str, ...]] = [
    ("benchmarks",),
    ("daemon.cli",),
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


def files(root: Path = ROOT) -> list[Path]:
    return [path for package in PACKAGES for path in sorted((root / package).rglob("*.py"))]


def _dynamic_import(node: ast.Call) -> str | None:
    """The literal name of `importlib.import_module("x")`, `import_module("x")`, `__import__("x")`."""
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
    if name not in ("import_module", "__import__") or not node.args:
        return None
    arg = node.args[0]
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None


def _absolute(package: str, level: int, module: str | None) -> str:
    base = package.split(".")
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imports_of(path: Path, root: Path = ROOT, modules: frozenset[str] = frozenset()) -> set[str]:
    """Every module this file imports, relative imports made absolute. `from pkg import name`
    is an arrow to pkg.name when that is one of `modules`, else to pkg (whose attribute it reads)."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(package, node.level, node.module) if node.level else node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
        elif isinstance(node, ast.Call) and (name := _dynamic_import(node)):
            if name.startswith("."):
                level = len(name) - len(name.lstrip("."))
                name = _absolute(package, level, name.lstrip(".") or None)
            found.add(name)
    return found


def module_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (a name inside a module resolves to the module)."""
    paths = files(root)
    modules = frozenset(module_name(p, root) for p in paths)
    graph: dict[str, set[str]] = {}
    for path in paths:
        me = module_name(path, root)
        out = graph.setdefault(me, set())
        for target in imports_of(path, root, modules):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != me:
                out.add(target)
    return graph


def arrows(root: Path = ROOT) -> list[tuple[str, str, str]]:
    """(importing file, its unit, imported unit) for every import between two units."""
    modules = frozenset(module_name(p, root) for p in files(root))
    out = []
    for path in files(root):
        me = unit_of(module_name(path, root))
        for other in {unit_of(target) for target in imports_of(path, root, modules)}:
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


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Arrows between siblings: a.x.m -> a.y.n is an arrow a.x -> a.y (a package, or a
    module, under the same parent), at every level down to the top (daemon -> benchmarks)."""
    out: dict[str, set[str]] = defaultdict(set)
    for a, targets in graph.items():
        for b in targets:
            pa, pb = a.split("."), b.split(".")
            common = 0
            while common < min(len(pa), len(pb)) and pa[common] == pb[common]:
                common += 1
            if common < len(pa) and common < len(pb):  # neither is the other's package
                out[".".join(pa[: common + 1])].add(".".join(pb[: common + 1]))
    return dict(out)


def cycle_messages(root: Path = ROOT) -> list[str]:
    graph = module_graph(root)
    msgs = [f"import cycle between modules: {' <-> '.join(c)}" for c in cycles(graph)]
    msgs += [f"import cycle between packages: {' <-> '.join(c)}" for c in cycles(package_graph(graph))
             if any(other.startswith(m + ".") for m in c for other in graph)]  # modules only: reported above
    return msgs


def test_every_arrow_points_down() -> None:
    assert violations(arrows()) == []


def test_no_import_cycle_between_modules_or_packages() -> None:
    assert cycle_messages() == []


def test_every_unit_has_a_layer() -> None:
    for path in files():
        assert unit_of(module_name(path)) in RANK, path


def _copy_tree(tmp_path: Path) -> None:
    for path in files():
        dest = tmp_path / path.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(path.read_text())


@pytest.mark.parametrize("line,expect", [
    ("from daemon.wiring.config import Config", "storage/store.py: storage imports daemon.wiring (upward arrow)"),
    ("from channels.base import Channel", "storage/store.py: storage imports channels (peer arrow)"),
    ("from daemon.cli.commands import main", "storage/store.py: storage imports daemon.cli (upward arrow)"),
    ("def f():\n    import benchmarks.harness", "storage/store.py: storage imports benchmarks (upward arrow)"),
    ("import importlib\nM = importlib.import_module('daemon.wiring.node')",
     "storage/store.py: storage imports daemon.wiring (upward arrow)"),
    ("__import__('actors.executor')", "storage/store.py: storage imports actors (upward arrow)"),
])
def test_an_upward_import_is_caught(tmp_path: Path, line: str, expect: str) -> None:
    """The check fails when an arrow runs up: a copy of the tree with one bad import added."""
    _copy_tree(tmp_path)
    store = tmp_path / "storage" / "store.py"
    store.write_text(store.read_text() + f"\n{line}\n")
    assert violations(arrows(ROOT)) == []  # clean before
    assert expect in violations(arrows(tmp_path))


@pytest.mark.parametrize("edits,expect", [
    # two files of one package, the second import inside a function
    ({"storage/codec.py": "from storage import text", "storage/text.py": "def f():\n    from storage.codec import encode"},
     "import cycle between modules: storage.codec <-> storage.text"),
    # one side through import_module (storage.sql imports storage.states)
    ({"storage/states.py": "import importlib\nimportlib.import_module('storage.sql')"},
     "import cycle between modules: storage.sql <-> storage.states"),
    # no two modules import each other, but their packages do (daemon.cli imports daemon.jobs
    # and daemon.wiring, which imports daemon.jobs)
    ({"daemon/jobs/synthetic.py": "from daemon.cli.render import table"},
     "import cycle between packages: daemon.cli <-> daemon.jobs <-> daemon.wiring"),
])
def test_an_import_cycle_is_caught(tmp_path: Path, edits: dict[str, str], expect: str) -> None:
    _copy_tree(tmp_path)
    for rel, line in edits.items():
        f = tmp_path / rel
        f.write_text(f.read_text() + f"\n{line}\n")
    assert cycle_messages(ROOT) == []  # clean before
    assert expect in cycle_messages(tmp_path)
