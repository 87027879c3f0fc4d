"""The container and deployment examples stay consistent with the code."""
import re
from pathlib import Path

from daemon.config import VARIABLES

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
POD = (ROOT / "deploy/kubernetes/sidecar-pod.yaml").read_text()


def test_deploy_files_use_only_declared_variables() -> None:
    declared = {v.name for v in VARIABLES}
    for text in (DOCKERFILE, POD):
        for name in re.findall(r"\bCHUNKD_[A-Z_]+\b", text):
            assert name in declared, name


def test_grace_period_exceeds_the_shutdown_grace() -> None:
    k8s = int(re.search(r"terminationGracePeriodSeconds: (\d+)", POD).group(1))
    grace = float(re.search(r"CHUNKD_SHUTDOWN_GRACE_SECONDS\s+value: \"(\d+)\"", POD).group(1))
    assert k8s > grace


def test_dockerfile_essentials() -> None:
    assert "STOPSIGNAL SIGTERM" in DOCKERFILE
    assert re.search(r"^USER (?!root)\w+", DOCKERFILE, flags=re.M)
    assert "HEALTHCHECK" in DOCKERFILE and "/healthz" in DOCKERFILE
    assert "requirements.lock" in DOCKERFILE
    assert re.search(r'ENTRYPOINT \["chunkd"\]', DOCKERFILE)
    assert "/healthz" in POD and "/readyz" in POD and "prometheus.io/scrape" in POD
