"""What the bench's daemons ran with, beside what `chunkd run` uses out of the box (issue 26:
the bench says what it used). Both come from the daemon's own configuration code, so they
cannot drift from it."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from daemon.wiring import config as config_mod
from daemon.wiring.node import effective_settings


def settings_report(env: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, Any]:
    """`env`: what the daemons see; `overrides`: the variables the bench's options set."""
    return {"effective": effective_settings(config_mod.load(env)),
            "product_defaults": effective_settings(config_mod.load({})),
            "overrides": dict(overrides)}


def settings_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """One table row per setting: in effect, and the product default beside it."""
    eff, dflt = report.get("effective"), report.get("product_defaults")
    if not eff or not dflt:
        return []
    adapted = lambda s, k: " (adapted)" if s.get(f"adaptive_{k}") else ""  # noqa: E731
    rows = [("settings: in effect | product default", "")]
    for name, kind in (("partitions", ""), ("partition_concurrency", "concurrency"), ("claim_batch", "claim"),
                       ("completer_batch", "")):
        rows.append((f"  {name}", f"{eff[name]}{adapted(eff, kind) if kind else ''} | "
                                  f"{dflt[name]}{adapted(dflt, kind) if kind else ''}"))
    return rows
