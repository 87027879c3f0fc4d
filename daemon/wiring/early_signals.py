"""SIGTERMs that reach `chunkd run` before its event loop listens for them.

A process that is still importing and starting (~0.3 s) has no handler yet, and SIGTERM's
default action kills it (exit -15): the torture saw exactly that when a daemon was stopped
0.2 s after a restart. The console script (daemon/cli/entry.py) installs `remember` first
thing; the node, once it listens, acts on what was remembered: a clean stop like any other."""
from __future__ import annotations

received: list[int] = []


def remember(signum: int, _frame: object) -> None:
    received.append(signum)
