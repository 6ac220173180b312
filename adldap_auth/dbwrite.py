"""Write transactions that wait their turn for SQLite's write lock, and lock conflicts.

SQLite lets one connection write at a time. With its default *deferred* transactions, a
transaction takes the write lock at its first write; one that has *read* first and then meets
another writer's lock fails at once with "database is locked": SQLite does not wait (the busy
timeout does not apply), as waiting could deadlock. The batch run and the login path both read
before writing in their transactions, so each would fail the other's writes.

:func:`write_transaction` is ``transaction.atomic()`` that, on SQLite, takes the write lock
*first* (a write that changes nothing, as the transaction's first statement): the transaction
then waits for another writer for up to the connection's busy timeout (``OPTIONS["timeout"]``,
5 s by default) instead of failing, whatever the site's ``OPTIONS``. Nothing is added when the
database's ``transaction_mode`` is already ``IMMEDIATE`` or ``EXCLUSIVE`` (``BEGIN`` takes the
lock), inside a transaction already open, or on other databases (PostgreSQL, MariaDB lock
rows, not the database).

:func:`lock_conflict` tells a lock conflict (a wait beyond the busy timeout, a deadlock) from
other database errors: another attempt after a pause usually succeeds.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction

logger = logging.getLogger("adldap_auth.login")
T = TypeVar("T")

__all__ = [
    "LOCKED_FIRST_PAUSE",
    "LockBackoff",
    "LOCKED_MAX_PAUSE",
    "LOCKED_RETRY_SECONDS",
    "lock_conflict",
    "retry_locked",
    "write_transaction",
]

#: A write that meets a lock conflict is tried again after a pause, doubled each time from the
#: first to the longest (with jitter), for at most LOCKED_RETRY_SECONDS (seconds) in all.
LOCKED_FIRST_PAUSE, LOCKED_MAX_PAUSE, LOCKED_RETRY_SECONDS = 0.05, 1.0, 15.0

#: How the databases word a lock conflict (lower case), when the driver's error has no code.
_LOCKED_MESSAGES = (
    "database is locked",
    "database table is locked",
    "deadlock",
    "lock wait timeout",
)
#: SQLite's primary result codes of a lock conflict (extended codes keep them in the low byte).
_SQLITE_LOCK_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


@contextmanager
def write_transaction(using: str | None = None) -> Iterator[None]:
    """``transaction.atomic(using)`` that, when it opens a SQLite transaction, takes the
    write lock before anything else (waiting up to the busy timeout for it)."""
    alias = using or DEFAULT_DB_ALIAS
    connection = connections[alias]
    opens = connection.vendor == "sqlite" and not connection.in_atomic_block
    opens = opens and connection.get_autocommit()
    with transaction.atomic(using=alias):
        if opens and getattr(connection, "transaction_mode", None) not in (
            "IMMEDIATE",
            "EXCLUSIVE",
        ):
            _take_write_lock(connection)
        yield


def _take_write_lock(connection) -> None:
    """A write that matches no row: SQLite starts the write transaction (RESERVED lock),
    waiting for the busy timeout while another connection writes."""
    from .models import SyncLock  # a small table of this app, present wherever it is migrated

    table = connection.ops.quote_name(SyncLock._meta.db_table)
    pk = connection.ops.quote_name(SyncLock._meta.pk.column)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET {pk} = {pk} WHERE 0 = 1")


def lock_conflict(error: BaseException) -> bool:
    """Whether the database refused a write because another writer held the lock: SQLite's
    SQLITE_BUSY / SQLITE_LOCKED (a wait beyond the busy timeout, or a deferred transaction
    that read first), MariaDB/MySQL's deadlock and lock wait timeout (errors 1213 and 1205),
    PostgreSQL's deadlock and serialization failure (SQLSTATE 40P01 and 40001). The
    transaction was rolled back; another attempt after a pause usually succeeds. The error's
    message is the fallback when the driver gives no code."""
    cause = error.__cause__ if error.__cause__ is not None else error
    sqlite_code = getattr(cause, "sqlite_errorcode", None)
    if sqlite_code is not None:
        return sqlite_code & 0xFF in _SQLITE_LOCK_CODES
    args = getattr(cause, "args", None) or (None,)
    if args[0] in (1205, 1213) or getattr(cause, "sqlstate", None) in ("40P01", "40001"):
        return True
    if getattr(cause, "sqlstate", None) is not None or isinstance(args[0], int):
        return False  # a coded error of another kind
    message = str(error).lower()
    return any(phrase in message for phrase in _LOCKED_MESSAGES)


class LockBackoff:
    """The pauses between attempts of a write that meets lock conflicts: growing from
    :data:`LOCKED_FIRST_PAUSE` to :data:`LOCKED_MAX_PAUSE` (with jitter), for at most
    :data:`LOCKED_RETRY_SECONDS` from the first conflict."""

    def __init__(self) -> None:
        self.pause = LOCKED_FIRST_PAUSE
        self.until: float | None = None

    @property
    def started(self) -> bool:
        """Whether a lock conflict was met already."""
        return self.until is not None

    def expired(self) -> bool:
        """Whether the time for attempts is over (the first call starts the clock)."""
        now = time.monotonic()
        self.until = self.until or now + LOCKED_RETRY_SECONDS
        return now >= self.until

    def sleep(self) -> None:
        """Wait before the next attempt, longer each time, never beyond the time allowed."""
        remaining = max(0.0, (self.until or time.monotonic()) - time.monotonic())
        time.sleep(min(self.pause * random.uniform(0.5, 1.0), remaining))
        self.pause = min(self.pause * 2, LOCKED_MAX_PAUSE)


def retry_locked(func: Callable[[], T], what: str, using: str | None = None) -> T:
    """``func()``, called again after a growing pause while it fails on a lock conflict, for
    at most :data:`LOCKED_RETRY_SECONDS`; outside a transaction of the caller only (inside
    one, the conflict rolled back more than ``func``'s work: the error is raised)."""
    connection = connections[using or DEFAULT_DB_ALIAS]
    with shared_backoff() as backoff:
        while True:
            try:
                return func()
            except DatabaseError as error:
                if not lock_conflict(error) or connection.in_atomic_block or backoff.expired():
                    raise
                logger.info("%s: the database is busy (%s); trying again", what, error)
                backoff.sleep()


_active_backoff: ContextVar[LockBackoff | None] = ContextVar("adldap_lock_backoff", default=None)


@contextmanager
def shared_backoff() -> Iterator[LockBackoff]:
    """The :class:`LockBackoff` of the outermost retrying writer. A retry nested in another
    (a login's write retried inside the backend's retried login) shares its deadline, so the
    whole waits at most :data:`LOCKED_RETRY_SECONDS`, not that time for each level."""
    current = _active_backoff.get()
    if current is not None:
        yield current
        return
    backoff = LockBackoff()
    token = _active_backoff.set(backoff)
    try:
        yield backoff
    finally:
        _active_backoff.reset(token)
