"""Database errors that mean "try again later" (connection lost, server restarting,
deadlock, serialization failure) rather than a bug."""
from __future__ import annotations

import asyncpg

TRANSIENT: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.DeadlockDetectedError, asyncpg.SerializationError, asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError, asyncpg.CrashShutdownError, asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError, asyncpg.InvalidCatalogNameError,
    # seen from a pooled connection whose server side was terminated mid-query
    asyncpg.InternalClientError,
    # "database ... is not currently accepting connections" (ALLOW_CONNECTIONS false during
    # maintenance) and lock_not_available: both pass
    asyncpg.ObjectNotInPrerequisiteStateError,
)


def is_transient(exc: BaseException) -> bool:
    """A database outage rather than a bug, also when it arrives inside an ExceptionGroup."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_transient(e) for e in exc.exceptions)
    return isinstance(exc, TRANSIENT)


class Backoff:
    """Exponential backoff for an actor's loop around the database."""

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self.base = base
        self.cap = cap
        self.next = base

    def failed(self) -> float:
        delay, self.next = self.next, min(self.cap, self.next * 2)
        return delay

    def ok(self) -> None:
        self.next = self.base
