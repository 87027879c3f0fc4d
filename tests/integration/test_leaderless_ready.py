"""A cluster where no daemon may lead is not ready (issue 24 row 6).

With CHUNKD_SCHEDULING=false on every daemon nothing takes the maintenance lead: no gate
opens, no instance completes. The daemons used to answer /readyz 200 regardless; now
/readyz says why nothing advances, `chunkd_ready` is 0 (the ChunkdNotReady alert) and
`chunkd_maintenance_eligible` is 0 (the ChunkdNoLeaderEligible alert). A daemon that may
lead, once started, makes them ready again."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from tests.conftest import wait_ready


def _readyz(url: str) -> tuple[int, list[str]]:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
            return r.status, json.loads(r.read())["problems"]
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())["problems"]


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def _until(what: str, check, timeout: float):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (got := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout}s")
        time.sleep(0.2)
    return got


def test_no_daemon_may_lead_is_not_ready_until_one_may(api_daemon) -> None:  # type: ignore[no-untyped-def]
    secondary = api_daemon(CHUNKD_SCHEDULING="false")  # ready at first: a leader may be on its way
    # three leader leases (15 s) without a leader: not ready, and /readyz says why
    problems = _until("/readyz reports the missing leader",
                      lambda: (lambda r: r[0] == 503 and r[1])(_readyz(secondary.url)), timeout=60)
    said = " ".join(problems)
    assert "no maintenance leader for" in said and "CHUNKD_SCHEDULING=false on every daemon" in said, problems
    assert "gates, retries, lease rescues and instance completion are stopped" in said
    assert _metric(secondary.url, "chunkd_ready") == 0
    assert _metric(secondary.url, "chunkd_maintenance_eligible") == 0

    primary = api_daemon()  # may lead
    assert _metric(primary.url, "chunkd_maintenance_eligible") == 1
    wait_ready(secondary.url, timeout=30)
    assert _readyz(secondary.url) == (200, [])
