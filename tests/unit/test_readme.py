import re
from pathlib import Path

from daemon.wiring.config import VARIABLES

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_env_table_lists_exactly_the_config_variables() -> None:
    documented = re.findall(r"^\| `(CHUNKD_[A-Z_]+)` \|", README, flags=re.M)
    assert sorted(documented) == sorted(v.name for v in VARIABLES)


def test_readme_starts_with_the_two_setup_commands() -> None:
    first_block = README.split("```sh", 1)[1].split("```", 1)[0].strip().splitlines()
    assert [line.split()[0:2] for line in first_block] == [["make", "demo"], ["make", "test"]]


def test_code_reads_no_undeclared_variable() -> None:
    root = Path(__file__).resolve().parents[2]
    declared = {v.name for v in VARIABLES}
    for folder in ("daemon", "actors", "storage", "channels", "metrics", "benchmarks"):
        for path in (root / folder).rglob("*.py"):
            for name in re.findall(r"\bCHUNKD_[A-Z_]+\b", path.read_text()):
                assert name in declared, f"{path}: {name} is not declared in daemon/wiring/config.py"


def test_readme_lists_every_metric() -> None:
    import metrics
    names = {m._name for m in vars(metrics).values() if hasattr(m, "_documentation") and hasattr(m, "_name")}
    documented = set(re.findall(r"^\| `(chunkd_[a-z_]+)` \|", README, flags=re.M))
    assert documented == names
