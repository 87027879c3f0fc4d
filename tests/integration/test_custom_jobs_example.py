"""The `FROM chunkd` example works short of Docker (there is no Docker engine here): its job
package builds and installs the way the example Dockerfile installs it, the CHUNKD_JOBS value
that Dockerfile sets loads in a real daemon, and the app's submit script starts the job
through the API with a manage token read from a file. The job fetches pages with the
third-party package the Dockerfile adds (requests) from a local HTTP server."""
from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import ROOT, free_port, wait_ready, wait_status

pytestmark = pytest.mark.anyio
EXAMPLES = ROOT / "deploy/examples"
DOCKERFILE = (EXAMPLES / "Dockerfile.custom-jobs").read_text()


@pytest.fixture
def pages(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A static HTTP server with 12 pages of different sizes; yields (base URL, total bytes)."""
    root = tmp_path / "pages"
    root.mkdir()
    total = 0
    for n in range(12):
        body = json.dumps({"page": n, "rows": list(range(n * 10))}).encode()
        (root / f"page-{n}.json").write_bytes(body)
        total += len(body)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", total
    server.shutdown()
    server.server_close()


async def test_the_example_job_package_runs_in_a_daemon(dsn: str, conn: asyncpg.Connection, spawn_daemon,  # type: ignore[no-untyped-def]
                                                        tmp_path: Path, pages: tuple[str, int]) -> None:
    # As the Dockerfile does it: pip install --no-deps <the package> (offline: no isolation).
    site, source = tmp_path / "site", tmp_path / "acme-jobs"
    shutil.copytree(EXAMPLES / "acme-jobs", source)  # a setuptools build writes build/ beside the sources
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                          "--no-deps", "--no-build-isolation", "--no-index", "--target", str(site),
                          str(source)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    jobs = re.search(r"^ENV CHUNKD_JOBS=(\S+)", DOCKERFILE, flags=re.M).group(1)
    assert re.search(r'^RUN pip install --no-cache-dir "requests==[\d.]+"', DOCKERFILE, flags=re.M)

    port = free_port()
    token = "example-manage-token-" + "z" * 20
    (tmp_path / "tokens").write_text(f"manage:{token}\n")
    (tmp_path / "manage-token").write_text(token)
    spawn_daemon(CHUNKD_HTTP_ADDR=f"127.0.0.1:{port}", CHUNKD_JOBS=jobs, CHUNKD_API_TOKENS_FILE=str(tmp_path / "tokens"),
                 PYTHONPATH=f"{site}:{ROOT}")
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, 60)

    base_url, total = pages
    submit = subprocess.run([sys.executable, str(EXAMPLES / "submit.py"), "acme.fetch",
                             json.dumps({"base_url": base_url, "pages": 12}), "example-1"],
                            env={"CHUNKD_API_URL": url, "APP_CHUNKD_TOKEN_FILE": str(tmp_path / "manage-token"),
                                 "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)
    assert submit.returncode == 0, submit.stderr
    iid = json.loads(submit.stdout)["id"]
    assert await wait_status(conn, iid, {"COMPLETED", "FAILED"}, 90) == "COMPLETED"
    report = json.loads(await conn.fetchval("SELECT report::text FROM chunkd_instance WHERE id = $1", iid))
    assert report == {"pages": 12, "bytes": total}
