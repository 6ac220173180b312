"""One batch run at a time, across processes and hosts, on the database the site already has.

:func:`run_lock` (or :class:`RunLock`) takes the lock or raises :class:`LockHeld` at once (it
waits only for a PostgreSQL holder that lost its lock, below). Two mechanisms, chosen by the
database backend:

**PostgreSQL**: a session-level advisory lock (``pg_try_advisory_lock``) held on a dedicated
connection opened for the run (the sync's own commits on the default connection cannot release
it). The server releases it when that connection ends, so a killed or crashed process never
leaves a lock behind. The ``SyncLock`` row only says who holds it (for the message and
``syncldap --status``) and carries the heartbeat. When the holder's heartbeat is older than
``LDAP_SYNC_LOCK_STALE_AFTER`` (a hung process, a host that vanished without closing its
connection), the next run ends the holder's database session with ``pg_terminate_backend``
(allowed for the same database role) and takes the lock.

The holder checks its lock before each batch's writes (:meth:`RunLock.heartbeat`, one small
query on the lock's connection): when that connection was ended (``pg_terminate_backend``, a
proxy or network cut) while the process runs on, the run stops there with :class:`LockLost`,
records itself failed and clears the row. A run that gets the advisory lock while the row
still names such a holder (its process, and the connection it writes with, still alive) waits
up to :data:`LOST_HOLDER_WAIT` seconds for it to stop, then raises :class:`LockHeld`: two runs
never write at once.

**Every other backend** (SQLite, MySQL, Oracle...): the ``SyncLock`` row, taken with one
conditional ``UPDATE ... WHERE owner = '' OR heartbeat_at < now - LOCK_STALE_AFTER`` (or
``owner = <a dead owner>``), which is atomic on every database: of two runs that race, exactly
one updates the row. The holder refreshes ``heartbeat_at`` while it runs (:meth:`RunLock.heartbeat`,
called by the sync before each batch, which also checks that the row still names it) and
clears the owner when it ends. A lock left by a process that died is taken over:

- at once when the holder ran on the same machine and its pid no longer exists (``os.kill(pid,
  0)``); "same machine" means the same host name, boot id and pid namespace, so two containers
  that share a host name never judge each other's pids;
- otherwise when its heartbeat is older than ``LDAP_SYNC_LOCK_STALE_AFTER`` seconds (default 6
  hours). Keep it well above the longest time between two heartbeats, i.e. the time one batch
  of ``LDAP_SYNC_WRITE_BATCH_SIZE`` users takes.

The lock is bound to its database: sites whose hosts use different databases are not
serialised (they do not share data either).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from django.db import connections, router
from django.utils import timezone

from ..models import SyncLock
from .advisory import LOST_HOLDER_WAIT, AdvisoryLock
from .owner import (
    HEARTBEAT_INTERVAL,
    LockHeld,
    LockLost,
    LockOwner,
    LockState,
    advisory_key,
    stale_after,
)
from .rows import RowLock

logger = logging.getLogger("adldap_auth.lock")

DEFAULT_NAME = "syncldap"

__all__ = [
    "DEFAULT_NAME",
    "HEARTBEAT_INTERVAL",
    "LOST_HOLDER_WAIT",
    "LockHeld",
    "LockLost",
    "LockOwner",
    "LockState",
    "RunLock",
    "advisory_key",
    "run_lock",
    "stale_after",
]


class RunLock(AdvisoryLock, RowLock):
    """The batch-run lock named ``name``. Use as a context manager, or acquire()/release().

    ``using`` is a database alias (default: where ``SyncLock`` rows are written).
    """

    def __init__(self, name: str = DEFAULT_NAME, using: str | None = None):
        self.name = name
        self.using = using or router.db_for_write(SyncLock)
        self.owner = LockOwner.current()
        self.held = False
        self._session = None  # PostgreSQL: the dedicated connection holding the advisory lock
        self._last_beat = 0.0
        self._was_lost = False

    # -- public API ------------------------------------------------------------------------

    def acquire(self) -> None:
        """Take the lock or raise :class:`LockHeld` at once."""
        if self.held:
            raise RuntimeError("this RunLock is already held")
        if self._is_postgresql():
            self._acquire_advisory()
        else:
            self._acquire_row()
        self.held = True
        self._last_beat = time.monotonic()
        logger.info("sync lock %r taken by %s", self.name, self.owner.describe())

    def heartbeat(self, force: bool = False) -> None:
        """Check that this run still holds the lock, and tell other hosts it is alive.

        The sync calls it before each batch's writes: every call checks the lock (one small
        query), so a lost lock stops the run before its next write; ``heartbeat_at`` is
        written at most every :data:`HEARTBEAT_INTERVAL` seconds (always with ``force``).
        Raises :class:`LockLost` when the lock is no longer this run's.
        """
        if not self.held:
            return
        now = time.monotonic()
        beat = force or now - self._last_beat >= self._beat_interval()
        if beat:
            self._last_beat = now
        if self._session is not None:
            # Never through a new connection: the lock lives and dies with the first one.
            if self._session.connection is None or self._session.connection.closed:
                self._lost()
                raise LockLost(
                    "lock lost: the sync lock's database connection was closed; this run stops"
                )
            try:
                if beat:
                    updated = self._pg_execute(
                        "UPDATE {table} SET heartbeat_at = %s WHERE name = %s AND owner = %s",
                        [timezone.now(), self.name, str(self.owner)],
                    )
                else:  # the session holds the advisory lock for as long as it lives
                    updated = self._pg_execute("SELECT 1", [])
            except Exception as error:  # the lock connection is gone, so is the lock
                self._lost()
                raise LockLost(
                    f"lock lost: the sync lock's database connection was ended ({error}); "
                    "this run stops"
                ) from error
        else:
            mine = self._rows().filter(owner=str(self.owner))
            updated = mine.update(heartbeat_at=timezone.now()) if beat else mine.exists()
        if not updated:
            self._lost()
            raise LockLost(
                f"lock lost: the sync lock {self.name!r} was taken over by another run (this "
                "run's heartbeat was older than LDAP_SYNC_LOCK_STALE_AFTER); this run stops"
            )

    def _lost(self) -> None:
        self.held = False
        self._was_lost = True

    @staticmethod
    def _beat_interval() -> float:
        """HEARTBEAT_INTERVAL, or less when LDAP_SYNC_LOCK_STALE_AFTER is very short."""
        return min(HEARTBEAT_INTERVAL, stale_after().total_seconds() / 4)

    def release(self) -> None:
        """Give the lock back. Safe to call twice, and after a :class:`LockLost`: then the
        row still naming this run is cleared, which tells a run waiting for the lock
        (:data:`LOST_HOLDER_WAIT`) that this one has stopped."""
        session, self._session = self._session, None
        was_held, self.held = self.held, False
        was_lost, self._was_lost = self._was_lost, False
        try:
            if session is not None:
                try:
                    if was_held:  # (lost: the session is gone or no longer the holder)
                        with session.cursor() as cursor:
                            cursor.execute(
                                f"UPDATE {SyncLock._meta.db_table} SET owner = '' "
                                "WHERE name = %s AND owner = %s",
                                [self.name, str(self.owner)],
                            )
                            cursor.execute(
                                "SELECT pg_advisory_unlock(%s)", [advisory_key(self.name)]
                            )
                finally:
                    session.close()  # ends the session: the server drops the lock in any case
            elif was_held:
                self._rows().filter(owner=str(self.owner)).update(owner="")
            if was_lost:
                self._clear_lost_row(session is not None)
        except Exception:
            logger.exception("sync lock %r: release failed (it expires by itself)", self.name)
        if was_held:
            logger.info("sync lock %r released", self.name)

    def _clear_lost_row(self, postgresql: bool) -> None:
        """After a LockLost: clear the row if it still names this run. On PostgreSQL through
        a new session of its own, committed at once whatever the caller's transaction."""
        if not postgresql:
            self._rows().filter(owner=str(self.owner)).update(owner="")
            return
        self._session = self._open_session()
        try:
            self._pg_execute(
                "UPDATE {table} SET owner = '' WHERE name = %s AND owner = %s",
                [self.name, str(self.owner)],
            )
        finally:
            session, self._session = self._session, None
            session.close()

    def status(self) -> tuple[LockOwner | None, datetime | None, datetime | None]:
        """(owner, acquired_at, heartbeat_at) of the current holder, or (None, None, None)."""
        row = (
            self._rows().filter(owner__gt="").values("owner", "acquired_at", "heartbeat_at").first()
        )
        if row is None:
            return None, None, None
        return LockOwner.parse(row["owner"]), row["acquired_at"], row["heartbeat_at"]

    def probe(self) -> LockState:
        """Whether some run holds the lock now, and who (read-only; for status displays)."""
        holder, since, beat = self.status()
        if self._is_postgresql():
            key = advisory_key(self.name) & 0xFFFFFFFFFFFFFFFF
            with connections[self.using].cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                    "AND classid = %s AND objid = %s AND objsubid = 1",
                    [key >> 32, key & 0xFFFFFFFF],
                )
                held = bool(cursor.fetchone()[0])
        else:
            held = (
                holder is not None
                and not holder.is_dead()
                and not self._is_stale(beat, timezone.now())
            )
        if not held:
            return LockState(False, None, None, None)
        return LockState(True, holder, since, beat)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


@contextmanager
def run_lock(name: str = DEFAULT_NAME, using: str | None = None) -> Iterator[RunLock]:
    """``with run_lock() as lock:`` hold the batch-run lock; raises :class:`LockHeld` at once."""
    lock = RunLock(name, using)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
