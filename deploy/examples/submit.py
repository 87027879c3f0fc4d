"""What the application container does to start a job: POST to the chunkd sidecar's API.

Standard library only, so any Python app can copy it. CHUNKD_API_URL is the sidecar
(http://127.0.0.1:8080 in a pod: the containers share the network namespace) and the
manage token is read from the read-only file the Secret is mounted at (APP_CHUNKD_TOKEN_FILE,
the app's own setting, not the daemon's), never from the environment (it would show in `kubectl describe` and crash dumps).

    CHUNKD_API_URL=http://127.0.0.1:8080 APP_CHUNKD_TOKEN_FILE=/var/run/secrets/chunkd/manage-token \\
        python submit.py acme.fetch '{"base_url": "https://data.example.com", "pages": 500}' nightly-2026-01-31
"""
from __future__ import annotations

import json
import os
import sys
import urllib.request


def submit(api_url: str, token: str, job: str, parameters: dict, idempotency_key: str | None = None) -> dict:
    body = {"job": job, "parameters": parameters}
    if idempotency_key:
        body["idempotency_key"] = idempotency_key  # a retried submit returns the same instance
    req = urllib.request.Request(f"{api_url.rstrip('/')}/api/v1/instances", data=json.dumps(body).encode(),
                                 method="POST", headers={"Authorization": f"Bearer {token}",
                                                         "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def main(argv: list[str]) -> int:
    api_url = os.environ.get("CHUNKD_API_URL", "http://127.0.0.1:8080")
    with open(os.environ.get("APP_CHUNKD_TOKEN_FILE", "/var/run/secrets/chunkd/manage-token")) as f:
        token = f.read().strip()
    job, params = argv[0], json.loads(argv[1])
    instance = submit(api_url, token, job, params, argv[2] if len(argv) > 2 else None)
    print(json.dumps(instance))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
