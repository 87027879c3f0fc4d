"""The container and deployment examples stay consistent with the code and with each other."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from daemon.wiring.config import VARIABLES

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
CUSTOM = (ROOT / "deploy/examples/Dockerfile.custom-jobs").read_text()
NATIVE = ROOT / "deploy/kubernetes/native-sidecar.yaml"
PLAIN = ROOT / "deploy/kubernetes/two-containers.yaml"
MANIFESTS = (NATIVE, PLAIN)


def deployment(path: Path) -> dict[str, Any]:
    return next(d for d in yaml.safe_load_all(path.read_text()) if d["kind"] == "Deployment")


def pod_containers(path: Path) -> dict[str, dict[str, Any]]:
    spec = deployment(path)["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def image_uid() -> int:
    user = re.findall(r"^USER (\S+)", DOCKERFILE, flags=re.M)[-1]
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER {user} must be numeric for runAsNonRoot"
    return int(user.split(":")[0])


def test_deploy_files_use_only_declared_variables() -> None:
    declared = {v.name for v in VARIABLES}
    for text in (DOCKERFILE, CUSTOM, *(p.read_text() for p in MANIFESTS)):
        for name in re.findall(r"\bCHUNKD_[A-Z_]+\b", text):
            assert name in declared, name


def test_grace_period_covers_the_app_and_chunkd_in_the_order_they_stop() -> None:
    """A native sidecar is stopped after the app, within the pod's one budget: the budget
    must hold the app's shutdown plus chunkd's whole one (issue 22 row 6: the grace, then
    SHUTDOWN_BOUND for the completer's drain and handing back held chunks, and the watchdog's
    margin). Two plain containers stop at once: the longer of the two."""
    from daemon.wiring.node import _WATCHDOG_MARGIN, SHUTDOWN_BOUND
    for path in MANIFESTS:
        spec = deployment(path)["spec"]["template"]["spec"]
        containers = pod_containers(path)
        grace = float(env_of(containers["chunkd"])["CHUNKD_SHUTDOWN_GRACE_SECONDS"])
        chunkd = grace + SHUTDOWN_BOUND + _WATCHDOG_MARGIN
        app = float(env_of(containers["app"])["APP_SHUTDOWN_SECONDS"])
        need = app + chunkd if path == NATIVE else max(app, chunkd)
        assert spec["terminationGracePeriodSeconds"] >= need, (path.name, need)


def test_dockerfile_essentials() -> None:
    assert "STOPSIGNAL SIGTERM" in DOCKERFILE
    assert image_uid() >= 10000  # numeric and not root
    assert "HEALTHCHECK" in DOCKERFILE and "healthcheck.py" in DOCKERFILE
    assert "requirements.lock" in DOCKERFILE
    assert re.search(r'ENTRYPOINT \["chunkd"\]', DOCKERFILE)


def test_custom_image_example_adds_a_package_sets_jobs_and_drops_root() -> None:
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", CUSTOM, flags=re.M)
    assert re.search(r"^RUN pip install .*==", CUSTOM, flags=re.M)  # a pinned third-party package
    jobs = re.search(r"^ENV CHUNKD_JOBS=(\S+)", CUSTOM, flags=re.M).group(1)
    module = ROOT / "deploy/examples/acme-jobs" / (jobs.replace(".", "/") + ".py")
    assert module.exists(), module
    assert re.findall(r"^USER (\S+)", CUSTOM, flags=re.M)[-1].split(":")[0] == str(image_uid())


def test_manifests_run_as_the_images_numeric_user() -> None:
    for path in MANIFESTS:
        pod = deployment(path)["spec"]["template"]["spec"]["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == image_uid(), path.name
        for name, c in pod_containers(path).items():
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == image_uid(), (path.name, name)


def test_native_sidecar_is_an_init_container_that_keeps_running() -> None:
    spec = deployment(NATIVE)["spec"]["template"]["spec"]
    [chunkd] = [c for c in spec["initContainers"] if c["name"] == "chunkd"]
    assert chunkd["restartPolicy"] == "Always"
    assert "chunkd" not in {c["name"] for c in spec["containers"]}
    assert "initContainers" not in deployment(PLAIN)["spec"]["template"]["spec"]


def test_probes_liveness_and_readiness_never_gate_on_the_database() -> None:
    for path in MANIFESTS:
        chunkd = pod_containers(path)["chunkd"]
        assert chunkd["livenessProbe"]["httpGet"]["path"] == "/healthz"
        # /readyz fails while Postgres is away; as the readiness probe it would take the
        # whole pod, app included, out of its Service.
        assert chunkd["readinessProbe"]["httpGet"]["path"] != "/readyz", path.name
        startup = chunkd["startupProbe"]
        assert startup["httpGet"]["path"] == "/healthz"
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # room for migrations


def test_app_reaches_the_sidecar_with_a_read_only_token_file() -> None:
    for path in MANIFESTS:
        containers = pod_containers(path)
        app, chunkd = containers["app"], containers["chunkd"]
        port = chunkd["env"][[e["name"] for e in chunkd["env"]].index("CHUNKD_HTTP_ADDR")]["value"].rsplit(":", 1)[1]
        assert env_of(app)["CHUNKD_API_URL"] == f"http://127.0.0.1:{port}"
        token_file = env_of(app)["APP_CHUNKD_TOKEN_FILE"]
        mounts = [m for m in app["volumeMounts"] if token_file.startswith(m["mountPath"] + "/")]
        assert len(mounts) == 1 and mounts[0]["readOnly"] is True
        volumes = {v["name"]: v for v in deployment(path)["spec"]["template"]["spec"]["volumes"]}
        secret = volumes[mounts[0]["name"]]["secret"]
        assert [i["path"] for i in secret["items"]] == [token_file.rsplit("/", 1)[1]]
        # the daemon's tokens file comes from the same Secret, also read-only
        tokens_dir = env_of(chunkd)["CHUNKD_API_TOKENS_FILE"].rsplit("/", 1)[0]
        [m] = [m for m in chunkd["volumeMounts"] if m["mountPath"] == tokens_dir]
        assert m["readOnly"] is True and volumes[m["name"]]["secret"]["secretName"] == secret["secretName"]

