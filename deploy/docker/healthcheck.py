"""The image's HEALTHCHECK: GET /healthz on the address the daemon itself listens on.

CHUNKD_HTTP_ADDR is read through the daemon's own parser (daemon.wiring.config), never split by
hand, so the check and the daemon cannot disagree about it:
- off (HTTP disabled): nothing to probe; exit 0 and say so, the process state is all there is.
- a wildcard host (0.0.0.0, ::): probe the loopback address of that family.
- a value the daemon refuses (e.g. ":8080"): the daemon exits 2 on it, so the container is
  unhealthy; exit 1 with the daemon's own message.
Exit 0 healthy, 1 unhealthy (Docker's HEALTHCHECK contract).
"""
from __future__ import annotations

import sys
import urllib.error
import urllib.request

from daemon.wiring.config import ConfigError, load

_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def url_for(addr: tuple[str, int]) -> str:
    host = _LOOPBACK.get(addr[0], addr[0])
    return f"http://[{host}]:{addr[1]}/healthz" if ":" in host else f"http://{host}:{addr[1]}/healthz"


def main() -> int:
    try:
        addr = load().http_addr
    except ConfigError as e:
        print(f"unhealthy: {e} (the daemon refuses it too)", file=sys.stderr)
        return 1
    if addr is None:
        print("CHUNKD_HTTP_ADDR=off: no HTTP endpoint to probe")
        return 0
    try:
        with urllib.request.urlopen(url_for(addr), timeout=2) as r:
            return 0 if r.status == 200 else 1
    except (urllib.error.URLError, OSError) as e:
        print(f"unhealthy: {url_for(addr)}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
