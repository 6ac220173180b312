"""What a watch waits on between two batches: a clock, or the server telling it of a change.

- :class:`Clock`: the next batch in ``LDAP_SYNC_WATCH_INTERVAL`` seconds. With DirSync,
  uSNChanged or timestamps the batch itself is the look at the directory (a DirSync batch with
  nothing changed is one search).
- :class:`PersistentSearch`: OpenLDAP with syncprov (``LDAP_SYNC_CHANGE_TRACKING =
  "contentsync"``). A Content Synchronization search in ``refreshAndPersist`` mode (RFC 4533)
  per feed scope, from the cookies the last batch stored, asking for no attributes (``1.1``):
  the server sends a message as soon as an entry in scope changes, and the watch runs a batch,
  which reads the change itself from the same cookies. The searches only ring; they never
  carry data into the database, so a message lost with a dropped connection costs latency
  (the clock still rings), never a change.

Both wait for at most the interval, so a batch runs at least that often whatever the server
says, and both return early when the watch is asked to stop.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

import ldap
from ldap.syncrepl import SyncInfoMessage, SyncRequestControl
from pyasn1.error import PyAsn1Error

from ..directory import DirectoryError
from ..directory.connection import DirectorySession

logger = logging.getLogger("adldap_auth.watch")

#: Longest single wait for a message, so a stop request and the lock's heartbeat are seen.
POLL_SECONDS = 0.5


class Doorbell(Protocol):
    broken: bool  # its connection failed: not to be used again

    def wait(self, seconds: float, stop: threading.Event, tick: Callable[[], None]) -> bool:
        """Wait up to ``seconds``; True when a change is known to wait (ring), False when the
        time ran out or ``stop`` was set. ``tick()`` is called at least every
        :data:`POLL_SECONDS` (the lock's heartbeat)."""

    def close(self) -> None: ...


class Clock:
    """Rings never: the next batch comes when the interval ends."""

    broken = False

    def wait(self, seconds: float, stop: threading.Event, tick: Callable[[], None]) -> bool:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not stop.is_set():
            tick()
            stop.wait(min(left, POLL_SECONDS))
        return False

    def close(self) -> None:
        pass


class PersistentSearch:
    """Persistent Content Synchronization searches that ring at the first change in scope.

    ``scopes`` are (base, filter, cookie) triples, the cookies those the last batch stored.
    The searches run on ``session``, which the watch keeps from batch to batch (one connection
    and bind, not one per batch): :meth:`close` abandons them and leaves the session open,
    unless the connection broke (:attr:`broken`), which the watch then closes.
    With ``after_refresh_only``, entries the server sends in the refresh phase (changed since
    those cookies, before the search started) do not ring: the watch asks for it after a
    batch that a ring started found nothing, so a server whose cookie lags behind its last
    writes (slapd 2.5 after a burst of concurrent writes) cannot ring it in a loop; such
    changes wait for the clock.
    """

    def __init__(
        self,
        scopes: list[tuple[str, str, str]],
        session: DirectorySession,
        *,
        after_refresh_only: bool = False,
    ) -> None:
        self.session = session
        self.after_refresh_only = after_refresh_only
        self.broken = False  # the connection failed: the session is of no further use
        self.persisting: dict[int, bool] = {}  # msgid -> refresh phase over
        conn = self.session.connection
        try:
            for base, filterstr, cookie in scopes:
                control = SyncRequestControl(
                    criticality=True, cookie=cookie, mode="refreshAndPersist"
                )
                self.session.search_count += 1
                msgid = conn.search_ext(
                    base, ldap.SCOPE_SUBTREE, filterstr, ["1.1"], serverctrls=[control]
                )
                self.persisting[msgid] = False
        except ldap.LDAPError as error:
            self.close()
            self.broken = True
            raise DirectoryError(f"{self.session.uri}: persistent search failed: {error}") from None

    def wait(self, seconds: float, stop: threading.Event, tick: Callable[[], None]) -> bool:
        deadline = time.monotonic() + seconds
        conn = self.session.connection
        while (left := deadline - time.monotonic()) > 0 and not stop.is_set():
            tick()
            try:
                kind, messages, msgid, _controls, _name, _value = conn.result4(
                    ldap.RES_ANY,
                    all=0,
                    timeout=min(left, POLL_SECONDS),
                    add_ctrls=1,
                    add_intermediates=1,
                )
            except ldap.TIMEOUT:
                continue
            except (ldap.LDAPError, PyAsn1Error) as error:
                # The server ended the search (e-syncRefreshRequired, a restart, a dropped
                # connection): a batch finds out what it means.
                logger.info("%s: persistent search ended: %s", self.session.uri, error)
                self.broken = True
                return True
            if msgid not in self.persisting:
                continue  # a late message of a search abandoned on this session
            if self._rings(kind, messages, msgid):
                return True
        return False

    def _rings(self, kind: int, messages: list, msgid: int) -> bool:
        if kind == ldap.RES_SEARCH_RESULT:
            return True  # the server ended the persistent search
        persisting = self.persisting.get(msgid, True)
        if kind == ldap.RES_SEARCH_ENTRY:
            return persisting or not self.after_refresh_only
        if kind != ldap.RES_INTERMEDIATE:
            return False
        for name, value, _controls in messages:
            if name != SyncInfoMessage.responseName:
                continue
            info = SyncInfoMessage(value)
            named = info.syncIdSet is not None and info.syncIdSet["syncUUIDs"]
            if named and (persisting or not self.after_refresh_only):
                return True
            for phase in (info.refreshDelete, info.refreshPresent):
                if phase is not None and phase.get("refreshDone", True):
                    self.persisting[msgid] = True
        return False

    def close(self) -> None:
        """Abandon the searches; the session stays open."""
        conn = self.session.connection
        for msgid in self.persisting:
            with contextlib.suppress(ldap.LDAPError):
                conn.abandon(msgid)
        self.persisting = {}
