"""PostgreSQL: the session-level advisory lock, held on a second database connection of its
own, and the takeover from a silent holder or one that lost its connection."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from django.db import connections
from django.db.utils import load_backend
from django.utils import timezone

from ..models import SyncLock
from .owner import HEARTBEAT_INTERVAL, LockHeld, LockOwner, advisory_key

logger = logging.getLogger("adldap_auth.lock")

#: PostgreSQL: how long (seconds) a new run that got the advisory lock waits for a previous
#: holder whose lock connection was ended to stop (it notices before its next batch).
LOST_HOLDER_WAIT = 30.0


class AdvisoryLock:
    """:class:`~adldap_auth.locking.RunLock`'s PostgreSQL advisory lock and its connection."""

    name: str
    using: str
    owner: LockOwner
    _session: Any

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
