"""`chunkd submit-batch FILE`: many submissions through POST /api/v1/instances:batch."""
from __future__ import annotations

import json
import sys
from typing import Any

from daemon.http.bulk import MAX_BATCH


def cli_submit_batch(client: Any, path: str, as_json: bool) -> int:
    """`chunkd submit-batch FILE`: FILE (or - for stdin) holds one submit body per line (JSON
    Lines) or a JSON array; sent in batches of MAX_BATCH. Exit 1 if any item was refused."""
    text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    stripped = text.lstrip()
    items = json.loads(text) if stripped.startswith("[") else [json.loads(line) for line in text.splitlines()
                                                               if line.strip()]
    refused = created = existing = 0
    for start in range(0, len(items), MAX_BATCH):
        res = client.call("POST", "/api/v1/instances:batch", body={"items": items[start:start + MAX_BATCH]})
        for r in res["results"]:
            r["index"] += start
            if as_json:
                print(json.dumps(r))
            elif r["status"] >= 400:
                print(f"item {r['index']}: {r['status']} {r['error']['code']}: {r['error']['message']}",
                      file=sys.stderr)
        created, existing, refused = created + res["created"], existing + res["existing"], refused + res["refused"]
    if not as_json:
        print(f"{created} created, {existing} existing, {refused} refused")
    return 1 if refused else 0
