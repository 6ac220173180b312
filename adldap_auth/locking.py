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

import copy
import hashlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import lru_cache

from django.db import IntegrityError, connections, router, transaction
from django.db.utils import load_backend
from django.utils import timezone

from .conf import sync_settings
from .models import SyncLock

logger = logging.getLogger("adldap_auth.lock")

DEFAULT_NAME = "syncldap"

#: The heartbeat is written at most this often (seconds), however often the sync calls it
#: (every call still checks that the lock is held).
HEARTBEAT_INTERVAL = 30.0
#: PostgreSQL: how long (seconds) a new run that got the advisory lock waits for a previous
#: holder whose lock connection was ended to stop (it notices before its next batch).
LOST_HOLDER_WAIT = 30.0


@dataclass(frozen=True)
class LockOwner:
    """Who holds a lock: process id, host name, and an opaque machine/instance identity."""

    pid: int | None
    host: str
    machine: str = ""
    token: str = ""

    @classmethod
    def current(cls) -> LockOwner:
        return cls(os.getpid(), _hostname(), _machine_id(), secrets.token_hex(4))

    @classmethod
    def parse(cls, text: str) -> LockOwner:
        """Read :meth:`__str__`'s format, ``pid@host#machine#token``; tolerant of anything."""
        who, _, rest = text.partition("#")
        machine, _, token = rest.partition("#")
        pid_text, _, host = who.partition("@")
        try:
            pid = int(pid_text)
        except ValueError:
            return cls(None, who, machine, token)
        return cls(pid, host, machine, token)

    def __str__(self) -> str:
        # The owner column holds 255 characters; host names can be 253.
        tail = f"#{self.machine}#{self.token}"
        return f"{self.pid}@{self.host}"[: 255 - len(tail)] + tail

    def describe(self) -> str:
        return f"pid {self.pid if self.pid is not None else '?'} on host {self.host or '?'}"

    def same_machine(self) -> bool:
        return bool(self.machine) and self.machine == _machine_id()

    def is_dead(self) -> bool:
        """True only when certain: a pid of this machine that no longer exists."""
        if self.pid is None or not self.same_machine():
            return False
        if self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except (PermissionError, OSError):
            return False
        return False


@dataclass(frozen=True)
class LockState:
    held: bool
    owner: LockOwner | None
    since: datetime | None
    heartbeat: datetime | None


class LockHeld(Exception):
    """Another run holds the lock. Nothing was done and nothing was recorded."""

    def __init__(self, owner: LockOwner | None, since: datetime | None):
        self.owner = owner
        self.since = since
        if since is not None and timezone.is_aware(since):
            since_local = timezone.localtime(since)
        else:
            since_local = since  # USE_TZ = False: a naive datetime in TIME_ZONE already
        when = (
            f"since {since_local:%Y-%m-%d %H:%M:%S %Z}".rstrip()
            if since_local
            else "(start time unknown)"
        )
        who = owner.describe() if owner else "holder unknown"
        super().__init__(f"another sync is running {when}, {who}")


class LockLost(Exception):
    """This run no longer holds the lock: taken over after a silence beyond
    LDAP_SYNC_LOCK_STALE_AFTER, or (PostgreSQL) the lock's database session was ended."""


def _hostname() -> str:
    return socket.gethostname()


@lru_cache(maxsize=1)
def _machine_id() -> str:
    """Host name + boot id + pid namespace: equal only where ``os.kill(pid, 0)`` is meaningful."""
    parts = [_hostname()]
    for path in ("/proc/sys/kernel/random/boot_id", "/etc/machine-id"):
        try:
            with open(path) as file:
                parts.append(file.read().strip())
            break
        except OSError:
            continue
    with suppress(OSError):
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:12]


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_try_advisory_lock``, derived from the lock's name."""
    digest = hashlib.sha256(f"adldap_auth.lock:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def stale_after() -> timedelta | None:
    value = sync_settings.LOCK_STALE_AFTER
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value
    return timedelta(seconds=float(value))


class RunLock:
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
        limit = stale_after()
        if limit is None:
            return HEARTBEAT_INTERVAL
        return min(HEARTBEAT_INTERVAL, limit.total_seconds() / 4)

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
        row = self._rows().filter(owner__gt="").values("owner", "acquired_at", "heartbeat_at").first()
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
            held = holder is not None and not holder.is_dead() and not self._is_stale(
                beat, timezone.now()
            )
        if not held:
            return LockState(False, None, None, None)
        return LockState(True, holder, since, beat)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    # -- every backend: the lock row ---------------------------------------------------------

    def _rows(self):
        return SyncLock.objects.using(self.using).filter(name=self.name)

    def _ensure_row(self) -> None:
        if self._rows().exists():
            return
        try:
            with transaction.atomic(using=self.using):
                SyncLock.objects.using(self.using).create(name=self.name)
        except IntegrityError:
            pass  # another run created it at the same moment

    def _acquire_row(self) -> None:
        self._ensure_row()
        row = self._rows().values("owner", "acquired_at", "heartbeat_at").get()
        now = timezone.now()
        mine = {"owner": str(self.owner), "acquired_at": now, "heartbeat_at": now}
        if row["owner"]:
            holder = LockOwner.parse(row["owner"])
            if holder.is_dead():
                logger.warning(
                    "sync lock %r: holder %s is dead; taking the lock over",
                    self.name,
                    holder.describe(),
                )
            elif self._is_stale(row["heartbeat_at"], now):
                logger.warning(
                    "sync lock %r: holder %s silent since %s (LDAP_SYNC_LOCK_STALE_AFTER); "
                    "taking the lock over",
                    self.name,
                    holder.describe(),
                    row["heartbeat_at"],
                )
            else:
                raise LockHeld(holder, row["acquired_at"])
            # Compare-and-swap on the exact owner seen: of two runs taking over, one wins.
            taken = self._rows().filter(owner=row["owner"]).update(**mine)
        else:
            taken = self._rows().filter(owner="").update(**mine)
        if not taken:
            holder, since, _beat = self.status()
            raise LockHeld(holder, since)

    def _is_stale(self, heartbeat_at: datetime | None, now: datetime) -> bool:
        limit = stale_after()
        if limit is None:
            return False
        return heartbeat_at is None or heartbeat_at < now - limit

    # -- PostgreSQL: a session-level advisory lock ------------------------------------------

    def _is_postgresql(self) -> bool:
        return connections[self.using].vendor == "postgresql"

    def _open_session(self):
        """A new connection with the same settings as ``using`` (the test database in tests).

        Built as Django builds every connection: the ``DatabaseWrapper`` of the ``ENGINE``
        (``load_backend``), given a copy of the alias's settings and the alias. That class name
        and its ``(settings_dict, alias)`` signature are the contract of every database backend,
        Django's and third-party ones; ``connections`` keeps one connection per alias and
        thread, so it cannot give a second one.
        """
        settings_dict = copy.deepcopy(connections[self.using].settings_dict)
        settings_dict["CONN_MAX_AGE"] = 0
        session = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(settings_dict, self.using)
        session.ensure_connection()
        session.set_autocommit(True)
        return session

    def _pg_execute(self, sql: str, params: list) -> int:
        """Run one statement on the lock's own connection; return the row count."""
        with self._session.cursor() as cursor:
            cursor.execute(sql.replace("{table}", SyncLock._meta.db_table), params)
            return cursor.rowcount

    def _acquire_advisory(self) -> None:
        self._session = self._open_session()
        try:
            # The row is written on the lock's connection only, never on the default one,
            # so an open transaction of the caller can neither hide nor block it.
            self._pg_execute(
                "INSERT INTO {table} (name, owner) VALUES (%s, '') ON CONFLICT (name) DO NOTHING",
                [self.name],
            )
            # The owner text names this session's backend, so that others can tell the row
            # of the current holder from one left by a holder that died, and the backend
            # the run writes with, so that they can tell whether this process still runs.
            backend_pid = self._session.connection.info.backend_pid
            writer_pid = self._writer_pid()
            token = f"pg{backend_pid}" + (f"w{writer_pid}" if writer_pid else "")
            self.owner = replace(self.owner, token=token)
            self._take_advisory()
            self._wait_for_lost_holder()
            now = timezone.now()
            self._pg_execute(
                "UPDATE {table} SET owner = %s, acquired_at = %s, heartbeat_at = %s WHERE name = %s",
                [str(self.owner), now, now, self.name],
            )
        except BaseException:
            session, self._session = self._session, None
            session.close()
            raise

    def _take_advisory(self) -> None:
        """Take the advisory lock, taking it over from a silent holder; else raise LockHeld."""
        for _attempt in range(3):
            if self._try_advisory():
                return
            pids = self._advisory_holders()
            if not pids:
                continue  # released in the meantime
            holder, since, beat = self._holder_row(pids[0])
            if holder is None or not self._is_stale(beat, timezone.now()):
                raise LockHeld(holder, since)
            if not self._terminate(pids, holder):
                raise LockHeld(holder, since)
            # The server frees the lock once the ended backend has exited.
            for _wait in range(50):
                if self._try_advisory():
                    return
                time.sleep(0.1)
            raise LockHeld(holder, since)
        holder, since, _beat = self._row_on_session()
        raise LockHeld(holder, since)

    def _try_advisory(self) -> bool:
        with self._session.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [advisory_key(self.name)])
            return bool(cursor.fetchone()[0])

    def _advisory_holders(self) -> list[int]:
        """Backend pids of the sessions holding the advisory lock (one, or none)."""
        key = advisory_key(self.name) & 0xFFFFFFFFFFFFFFFF
        with self._session.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND classid = %s AND objid = %s AND objsubid = 1",
                [key >> 32, key & 0xFFFFFFFF],
            )
            return [row[0] for row in cursor.fetchall()]

    def _holder_row(
        self, backend_pid: int, wait: float = 3.0
    ) -> tuple[LockOwner | None, datetime | None, datetime | None]:
        """The row of the holder with ``backend_pid``; it writes it just after taking the lock,
        so wait a moment for it. (None, None, None) when it never shows up."""
        deadline = time.monotonic() + wait
        while True:
            holder, since, beat = self._row_on_session()
            if holder is not None and _token_pids(holder.token)[0] == backend_pid:
                return holder, since, beat
            if time.monotonic() > deadline:
                return None, None, None
            time.sleep(0.05)

    def _writer_pid(self) -> int | None:
        """The backend pid of the connection the run writes with (``using``), if known."""
        try:
            writer = connections[self.using]
            writer.ensure_connection()
            return int(writer.connection.info.backend_pid)
        except Exception:  # noqa: BLE001 - only a hint for other runs
            return None

    def _wait_for_lost_holder(self) -> None:
        """With the advisory lock taken: if the row still names a previous holder, that
        holder's lock session ended without a release (killed, or ended by
        ``pg_terminate_backend`` or a network cut while the process runs on). A process that
        runs on notices before its next batch's writes, records its run failed and clears
        the row; wait for that (at most :data:`LOST_HOLDER_WAIT` seconds, else
        :class:`LockHeld`), so that two runs never write at once. No wait when the holder
        is surely gone: a dead pid of this machine, its writing session ended, a heartbeat
        older than LDAP_SYNC_LOCK_STALE_AFTER, or older than the longest such a wait can be.
        """
        deadline = time.monotonic() + LOST_HOLDER_WAIT
        waited = False
        while True:
            holder, since, beat = self._row_on_session()
            if holder is None or not self._may_still_run(holder, beat):
                if waited:
                    logger.info("sync lock %r: the previous holder has stopped", self.name)
                return
            if time.monotonic() > deadline:
                raise LockHeld(holder, since)
            if not waited:
                waited = True
                logger.warning(
                    "sync lock %r: its previous holder %s lost the lock's connection and may "
                    "still be running; waiting for it to stop",
                    self.name,
                    holder.describe(),
                )
            time.sleep(0.1)

    def _may_still_run(self, holder: LockOwner, beat: datetime | None) -> bool:
        """Whether the run named by the row (not holding the advisory lock) may still write."""
        now = timezone.now()
        if holder.is_dead() or self._is_stale(beat, now):
            return False
        if beat is None or beat < now - timedelta(seconds=HEARTBEAT_INTERVAL + LOST_HOLDER_WAIT):
            return False  # it would have stopped by now (it checks the lock at every batch)
        _lock_pid, writer_pid = _token_pids(holder.token)
        if writer_pid is None:
            return False
        with self._session.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [writer_pid])
            return cursor.fetchone() is not None

    def _row_on_session(self) -> tuple[LockOwner | None, datetime | None, datetime | None]:
        with self._session.cursor() as cursor:
            cursor.execute(
                f"SELECT owner, acquired_at, heartbeat_at FROM {SyncLock._meta.db_table} "
                "WHERE name = %s",
                [self.name],
            )
            row = cursor.fetchone()
        if not row or not row[0]:
            return None, None, None
        return LockOwner.parse(row[0]), row[1], row[2]

    def _terminate(self, backend_pids: list[int], holder: LockOwner) -> bool:
        """End the database session of a silent holder; True when it was ended."""
        ended = False
        with self._session.cursor() as cursor:
            for pid in backend_pids:
                try:
                    cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
                    ended = bool(cursor.fetchone()[0]) or ended
                except Exception as error:
                    logger.error(
                        "sync lock %r: could not end the session of silent holder %s: %s",
                        self.name,
                        holder.describe(),
                        error,
                    )
                    return False
        if ended:
            logger.warning(
                "sync lock %r: holder %s silent beyond LDAP_SYNC_LOCK_STALE_AFTER; its database "
                "session was ended and the lock taken over",
                self.name,
                holder.describe(),
            )
        return ended


def _token_pids(token: str) -> tuple[int | None, int | None]:
    """(lock session pid, writing session pid) from a PostgreSQL owner token ``pg<n>w<m>``."""
    lock_pid, _, writer_pid = token.removeprefix("pg").partition("w")
    if not token.startswith("pg") or not lock_pid.isdigit():
        return None, None
    return int(lock_pid), int(writer_pid) if writer_pid.isdigit() else None


@contextmanager
def run_lock(name: str = DEFAULT_NAME, using: str | None = None) -> Iterator[RunLock]:
    """``with run_lock() as lock:`` hold the batch-run lock; raises :class:`LockHeld` at once."""
    lock = RunLock(name, using)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
