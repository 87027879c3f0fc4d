"""Start-up's first contact with the database: wait while it is away, stop on what waiting
cannot cure.

A sidecar must not crash-loop because Postgres restarts or is not up yet (its pod, its
Service DNS, a failover): the daemon keeps /healthz alive, says on /readyz what it waits
for, and retries with backoff. Bad credentials or a database that does not exist are the
operator's to fix: one clear line and exit 2 (the CLI maps `DatabaseRefused`)."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit

import anyio
import asyncpg
import structlog

from storage.errors import is_transient

log = structlog.get_logger("chunkd.startup")

T = TypeVar("T")

RETRY_FIRST = 0.5  # seconds before the second attempt; doubled up to RETRY_MAX
RETRY_MAX = 5.0
# Refusals that retrying cannot cure. A missing database is transient for a running daemon
# (dropped and re-created under it) but at start-up it is a wrong CHUNKD_DATABASE_URL.
_PERMANENT: tuple[type[BaseException], ...] = (
    asyncpg.InvalidAuthorizationSpecificationError,  # 28000: no pg_hba entry, role does not exist
    asyncpg.InvalidPasswordError,                    # 28P01
    asyncpg.InvalidCatalogNameError,                 # 3D000: database does not exist
)


class DatabaseRefused(Exception):
    """The database answered and refused us for good: exit 2 with this message."""


def where(dsn: str) -> str:
    """host:port/database of a DSN, never its password (it goes to logs and /readyz)."""
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
    except ValueError:
        return "the database"
    db = parts.path.lstrip("/") or parts.username or "postgres"
    return f"{host}:{port}/{db}"


async def until_reachable(attempt: Callable[[], Awaitable[T]], dsn: str, stop: anyio.Event,
                          waiting: Callable[[str], None]) -> T | None:
    """`attempt()` until it succeeds; between tries `waiting(why)` says what start-up waits
    for. None if `stop` is set meanwhile (also during an attempt: a SIGTERM while the
    database is away ends the daemon at once)."""
    delay = RETRY_FIRST
    place = where(dsn)
    while not stop.is_set():
        try:
            return await _unless_stopped(attempt, stop)
        except _Stopped:
            return None
        except _PERMANENT as e:
            raise DatabaseRefused(f"the database at {place} refused chunkd: {e} (check CHUNKD_DATABASE_URL)") from None
        except Exception as e:  # noqa: BLE001 - sorted by is_transient below
            if not is_transient(e):
                raise
            reason = f"{type(e).__name__}: {e}".strip().rstrip(":")
            waiting(f"waiting for the database at {place} ({reason}); retrying in {delay:g}s")
            log.warning("database not reachable at start-up; retrying", database=place, error=reason, retry_in=delay)
        with anyio.move_on_after(delay):
            await stop.wait()
        delay = min(delay * 2, RETRY_MAX)
    return None


async def _unless_stopped(attempt: Callable[[], Awaitable[T]], stop: anyio.Event) -> T:
    """`attempt()`, cancelled if `stop` is set first (then `_Stopped`); its own error raised
    as it is, not wrapped in a task group's ExceptionGroup."""
    outcome: list[T] = []
    error: list[BaseException] = []
    async with anyio.create_task_group() as tg:
        async def watch() -> None:
            await stop.wait()
            tg.cancel_scope.cancel()

        async def run() -> None:
            try:
                outcome.append(await attempt())
            except Exception as e:  # noqa: BLE001 - re-raised below, unwrapped
                error.append(e)
            tg.cancel_scope.cancel()
        tg.start_soon(watch)
        tg.start_soon(run)
    if error:
        raise error[0]
    if not outcome:
        raise _Stopped
    return outcome[0]


class _Stopped(Exception):
    """Stopped during an attempt."""
