"""Database errors that mean "try again later" rather than a bug of ours.

A daemon exits only when its own code is broken: a lost connection, a server restarting,
a statement cancelled by an operator or by statement_timeout (SQLSTATE 57014), a
deadlock, a full disk or too many connections all pass, so actors retry them with backoff.
"""
from __future__ import annotations

import asyncpg
from asyncpg.exceptions._base import DataError as ClientDataError

TRANSIENT: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    # class 57: admin shutdown, crash shutdown, cannot connect now, query cancelled
    # (pg_cancel_backend, statement_timeout)
    asyncpg.OperatorInterventionError,
    # class 40: deadlock, serialization failure; class 53: too many connections, disk full,
    # out of memory; class 58: I/O errors of the server
    asyncpg.TransactionRollbackError, asyncpg.InsufficientResourcesError, asyncpg.PostgresSystemError,
    asyncpg.InvalidCatalogNameError,
    # seen from a pooled connection whose server side was terminated mid-query, and as
    # "cannot switch to state 15; another operation is in progress" during a server restart
    asyncpg.InternalClientError,
    # "database ... is not currently accepting connections" (ALLOW_CONNECTIONS false during
    # maintenance) and lock_not_available: both pass
    asyncpg.ObjectNotInPrerequisiteStateError,
)

# An argument asyncpg could not encode (a transactional step's write with a value of the
# wrong type, say). It derives from InterfaceError but retrying cannot help: it is the
# input's fault, so it is never transient.
BAD_INPUT: tuple[type[BaseException], ...] = (ClientDataError,)


# A database's own limits (a DBA's statement_timeout, lock_timeout,
# idle_in_transaction_session_timeout) hit by *work*: user SQL or a long reduction. Retrying
# the same work hits them again, so the work counts an attempt instead of retrying for ever.
STATEMENT_TIMEOUT = "statement timeout"
LOCK_TIMEOUT = "lock timeout"
IDLE_TIMEOUT = "idle-in-transaction timeout"


def limit_reason(exc: BaseException) -> str | None:
    """The server's reason when `exc` is one of its limits, readable: "statement timeout"
    (SQLSTATE 57014 from statement_timeout, not an operator's pg_cancel_backend), "lock
    timeout" (55P03), "idle-in-transaction timeout" (25P03, when the server's message got
    through: usually it closes the connection first, see `closed_connection`)."""
    if isinstance(exc, BaseExceptionGroup):
        return next((r for e in exc.exceptions if (r := limit_reason(e)) is not None), None)
    if isinstance(exc, asyncpg.QueryCanceledError):
        return STATEMENT_TIMEOUT if "statement timeout" in str(exc) else None
    if isinstance(exc, asyncpg.LockNotAvailableError):
        return LOCK_TIMEOUT
    if isinstance(exc, asyncpg.IdleInTransactionSessionTimeoutError):
        return IDLE_TIMEOUT
    cause = exc.__cause__ or exc.__context__
    return limit_reason(cause) if cause is not None and cause is not exc else None


def closed_connection(exc: BaseException) -> bool:
    """The connection went away under us (how a killed idle transaction usually shows:
    asyncpg drops the server's last message and reports the connection closed)."""
    if isinstance(exc, BaseExceptionGroup):
        return any(closed_connection(e) for e in exc.exceptions)
    return isinstance(exc, (asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError)) and \
        not isinstance(exc, BAD_INPUT) and "closed" in str(exc)


def is_transient(exc: BaseException) -> bool:
    """A database outage rather than a bug, also when it arrives inside an ExceptionGroup."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_transient(e) for e in exc.exceptions)
    return isinstance(exc, TRANSIENT) and not isinstance(exc, BAD_INPUT)


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
