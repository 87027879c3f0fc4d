"""The `chunkd` console script. For `chunkd run` it first takes SIGTERM, before importing
anything heavy (daemon/wiring/early_signals.py says why); other commands keep the default."""
from __future__ import annotations

import signal
import sys


def main() -> None:
    if sys.argv[1:2] == ["run"]:
        from daemon.wiring import early_signals
        signal.signal(signal.SIGTERM, early_signals.remember)
    from daemon.cli.commands import main as run
    run()
