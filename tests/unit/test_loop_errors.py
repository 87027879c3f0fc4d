"""The event loop's exception handler as the daemon installs it (daemon/wiring/logs.py).

CI saw `chunkd demo` print asyncpg's "Resetting connection with an active transaction" as
an ERROR line on the user's terminal when a shutdown cut a commit short under load."""
from __future__ import annotations

import asyncio
import logging

import pytest
import structlog

from daemon.wiring.logs import route_loop_errors


def test_a_rolled_back_transaction_is_a_warning_that_says_so(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    try:
        route_loop_errors(loop)
        with structlog.testing.capture_logs() as seen, caplog.at_level(logging.ERROR, logger="asyncio"):
            loop.call_exception_handler({"message": "Resetting connection with an active transaction <conn>"})
        assert [(e["log_level"], e["event"]) for e in seen] == [
            ("warning", "a transaction cut short (cancelled during its commit) was rolled back")]
        assert not caplog.records  # nothing reaches asyncio's ERROR logger
    finally:
        loop.close()


def test_other_loop_errors_keep_the_default_handling(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    try:
        route_loop_errors(loop)
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            loop.call_exception_handler({"message": "Task exception was never retrieved"})
        assert [r.getMessage() for r in caplog.records] == ["Task exception was never retrieved"]
    finally:
        loop.close()
