"""Content Synchronization (RFC 4533) in refreshOnly mode: what changed in a scope since a cookie.

One :func:`read_changes` call sends one search with the Sync Request control on the session's
connection and collects the whole refresh: entries added or changed (state ``add``/``modify``),
entryUUIDs deleted (state ``delete`` or a syncIdSet with refreshDeletes), entryUUIDs present
(state ``present`` or a syncIdSet without it) and the new cookie. OpenLDAP offers it with the
syncprov overlay, 389-DS with its Content Synchronization plugin; Active Directory does not.

A refresh comes in one of two forms, and :meth:`ContentSyncBatch.deletions` hides the
difference: a *delete phase* lists what was deleted; a *full refresh* (a read without cookie,
or a present phase: a cookie older than the server's session log, of another server) lists
what is still there, and everything else the caller knows of is gone.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import ldap
from ldap.controls import KNOWN_RESPONSE_CONTROLS, ResponseControl
from ldap.syncrepl import SyncDoneControl, SyncInfoMessage, SyncRequestControl, SyncStateControl
from pyasn1.error import PyAsn1Error

from . import DirectoryError, Entry, IncompleteRead
from .ber import ber_read
from .connection import INCOMPLETE_ERRORS, DirectorySession, error_text, scrubbed

logger = logging.getLogger("adldap_auth.directory")

__all__ = ["ContentSyncBatch", "ContentSyncUnavailable", "CookieRefused", "read_changes"]

#: The result code of e-syncRefreshRequired (RFC 4533, 2.6); python-ldap has no class for it.
SYNC_REFRESH_REQUIRED = 4096


class SyncState(SyncStateControl):
    """python-ldap's Sync State control (one per entry of a refresh), decoded by hand: with
    pyasn1 its decoding was the largest client cost of a refresh (about 0.1 ms an entry)."""

    def decodeControlValue(self, encodedControlValue: bytes) -> None:  # noqa: N802, N803
        try:
            body, end = ber_read(encodedControlValue, 0, 0x30)
            state, pos = ber_read(body, 0, 0x0A)  # ENUMERATED
            entry_uuid, pos = ber_read(body, pos, 0x04)
            cookie = None
            if pos < len(body):
                cookie, pos = ber_read(body, pos, 0x04)
            if end != len(encodedControlValue) or pos != len(body) or len(entry_uuid) != 16:
                raise ValueError("not a SyncStateValue")
            self.state = self.opnames[int.from_bytes(state, "big")]
        except (ValueError, IndexError) as error:
            raise PyAsn1Error(f"undecodable Sync State control: {error}") from None
        self.entryUUID = str(uuid.UUID(bytes=entry_uuid))
        self.cookie = None if cookie is None else cookie.decode("iso-8859-1")  # as python-ldap


#: The response controls a refresh decodes (python-ldap's, with the Sync State one above).
RESPONSE_CONTROLS = {**KNOWN_RESPONSE_CONTROLS, SyncState.controlType: SyncState}


class ContentSyncUnavailable(DirectoryError):
    """The server offers no Content Synchronization for this base (OpenLDAP: no syncprov
    overlay on its database; slapd answers unavailableCriticalExtension)."""


class CookieRefused(DirectoryError):
    """The server will not continue from this cookie (stale, from a restored server, not
    understood): the caller must forget it and make a full run."""


@dataclass(frozen=True)
class ContentSyncBatch:
    """What one refresh returned. Ask :meth:`deletions` which known entries are gone.

    ``changed`` maps the entryUUID (lower-case, hyphenated) of every entry added, modified,
    renamed or moved into the scope to its :class:`Entry`, in the order the server sent them.
    ``cookie`` is the state to pass to the next read (None: the server gave none, start over
    without one). ``full_refresh`` says the server listed the whole scope (a read without
    cookie, or a present phase) rather than only the changes.
    """

    changed: Mapping[str, Entry]
    cookie: str | None
    full_refresh: bool
    _deleted: frozenset[str] = field(default=frozenset(), repr=False)
    _present: frozenset[str] = field(default=frozenset(), repr=False)

    @property
    def empty(self) -> bool:
        """True when the server reported nothing at all: no change, deletion or present list
        (only a new cookie). The caller need not look at what it holds."""
        return not (self.changed or self.full_refresh or self._deleted)

    def deletions(self, known_uuids: Iterable[str]) -> frozenset[str]:
        """Which of ``known_uuids`` left the scope (deleted, moved out, filtered out).

        ``known_uuids``: every entry of this scope the caller holds from earlier reads (any
        form :class:`uuid.UUID` accepts), never a subset: after a full refresh each known entry
        neither changed nor present is gone; otherwise those the server named as deleted (it
        also names entries that never were in the scope, e.g. renamed outside the filter).
        """
        if not (self.full_refresh or self._deleted):
            return frozenset()  # nothing to compare: the known ids are not even read
        known = {_canonical(value) for value in known_uuids}
        if not self.full_refresh:
            return frozenset(known & self._deleted)
        return frozenset((known - (self._present | self.changed.keys())) | (known & self._deleted))


def read_changes(
    session: DirectorySession,
    base: str,
    filterstr: str,
    attributes: Iterable[str],
    cookie: str | None,
) -> ContentSyncBatch:
    """The changes under ``base`` (subtree) matching ``filterstr`` since ``cookie``.

    ``cookie`` is None for a first read (every entry in scope comes back as changed) or a
    cookie a previous batch returned, stored verbatim. Raises :class:`CookieRefused`,
    :class:`ContentSyncUnavailable`, :class:`IncompleteRead` (size or time limit, dropped
    connection, a server silent for longer than the operation timeout) or
    :class:`DirectoryError`.
    """
    if cookie and cookie.startswith("rid=") and "csn=" not in cookie:
        # An OpenLDAP cookie without a change sequence number: slapd would read it as no
        # cookie and send the whole scope without a present phase, so deletions would be lost.
        raise CookieRefused(f"{session.uri}: the cookie {cookie!r} holds no CSN")
    control = SyncRequestControl(criticality=True, cookie=cookie or None, mode="refreshOnly")
    collector = _Refresh(full_refresh=not cookie)
    conn = session.connection
    try:
        session.search_count += 1
        msgid = conn.search_ext(
            base, ldap.SCOPE_SUBTREE, filterstr, list(attributes), serverctrls=[control]
        )
        try:
            while not collector.done:
                # Each message within the operation timeout: a refresh of a big scope may
                # take longer than that, a silent server does not.
                kind, messages, _id, controls, _name, _value = conn.result4(
                    msgid,
                    all=0,
                    timeout=session.config.operation_timeout,
                    add_ctrls=1,
                    add_intermediates=1,
                    resp_ctrl_classes=RESPONSE_CONTROLS,
                )
                collector.take(kind, messages, controls)
        except (ldap.TIMEOUT, DirectoryError, PyAsn1Error):
            with contextlib.suppress(ldap.LDAPError):
                conn.abandon(msgid)
            raise
    except ldap.UNAVAILABLE_CRITICAL_EXTENSION:
        raise ContentSyncUnavailable(
            f"{session.uri}: no Content Synchronization (RFC 4533) under {base!r}"
        ) from None
    except ldap.NO_SUCH_OBJECT:
        raise IncompleteRead(f"{session.uri}: search base {base!r} does not exist") from None
    except INCOMPLETE_ERRORS as error:
        raise IncompleteRead(
            f"{session.uri}: content sync of {base!r} stopped early: {error_text(error)}"
        ) from scrubbed(error)
    except ldap.LDAPError as error:
        raise _refusal(session.uri, base, error, cookie) from scrubbed(error)
    except PyAsn1Error as error:
        raise DirectoryError(f"{session.uri}: undecodable sync message: {error}") from None
    return collector.batch(session.uri, cookie)


def _refusal(uri: str, base: str, error: ldap.LDAPError, cookie: str | None) -> DirectoryError:
    """The error for a failed sync search: a refused cookie or a plain directory error."""
    details = error.args[0] if error.args and isinstance(error.args[0], dict) else {}
    text = error_text(error)
    if details.get("result") == SYNC_REFRESH_REQUIRED:
        return CookieRefused(f"{uri}: the server asks for a full refresh: {text}")
    if cookie and isinstance(error, ldap.UNWILLING_TO_PERFORM):
        # slapd: "consumer state is newer than provider!" (a server restored from a backup)
        return CookieRefused(f"{uri}: cookie refused: {text}")
    return DirectoryError(f"{uri}: content sync of {base!r} failed: {text}")


class _Refresh:
    """The state of one refresh, fed message by message (RFC 4533, 3.3.1)."""

    def __init__(self, full_refresh: bool) -> None:
        self.changed: dict[str, Entry] = {}
        self.deleted: set[str] = set()
        self.present: set[str] = set()
        self.full_refresh = full_refresh  # a read without cookie lists the whole scope
        self.cookie: str | None = None
        self.done = False
        self.synced = False  # the server sent the Sync Done control

    def take(self, kind: int, messages: list, controls: list[ResponseControl]) -> None:
        if kind == ldap.RES_SEARCH_ENTRY:
            for dn, attrs, entry_controls in messages:
                self._entry(dn, attrs, entry_controls)
        elif kind == ldap.RES_INTERMEDIATE:
            for name, value, _controls in messages:
                if name == SyncInfoMessage.responseName:
                    self._info(SyncInfoMessage(value))
        elif kind == ldap.RES_SEARCH_RESULT:
            self.done = True
            for control in controls or ():
                if isinstance(control, SyncDoneControl):
                    self.synced = True
                    self._set_cookie(control.cookie)
                    if not control.refreshDeletes:  # a present phase ended the refresh
                        self.full_refresh = True
        # search references: referrals are not chased

    def _entry(self, dn: str, attrs: dict, controls: list[ResponseControl]) -> None:
        state = next((c for c in controls if isinstance(c, SyncStateControl)), None)
        if state is None:
            raise ContentSyncUnavailable(f"the server sent {dn!r} without a sync state")
        self._set_cookie(state.cookie)
        if state.state == "present":
            self.present.add(state.entryUUID)
            self.full_refresh = True
        elif state.state == "delete":
            self.changed.pop(state.entryUUID, None)
            self.deleted.add(state.entryUUID)
        else:  # add, modify
            self.deleted.discard(state.entryUUID)
            self.changed[state.entryUUID] = Entry(dn, {k.lower(): v for k, v in attrs.items()})

    def _info(self, info: SyncInfoMessage) -> None:
        if info.newcookie is not None:
            self._set_cookie(info.newcookie)
        elif info.refreshPresent is not None:  # the end of a present phase
            self.full_refresh = True
            self._set_cookie(info.refreshPresent.get("cookie"))
        elif info.refreshDelete is not None:  # the end of a delete phase
            self._set_cookie(info.refreshDelete.get("cookie"))
        elif info.syncIdSet is not None:
            uuids = info.syncIdSet["syncUUIDs"]
            if info.syncIdSet["refreshDeletes"]:
                for gone in uuids:
                    self.changed.pop(gone, None)
                self.deleted.update(uuids)
            else:
                self.present.update(uuids)
                self.full_refresh = True
            self._set_cookie(info.syncIdSet.get("cookie"))

    def _set_cookie(self, cookie: str | None) -> None:
        if cookie is not None:
            self.cookie = cookie

    def batch(self, uri: str, sent: str | None) -> ContentSyncBatch:
        if not self.synced:
            raise ContentSyncUnavailable(f"{uri}: the search ended without a Sync Done control")
        if sent and self.cookie == "":
            # slapd reads a cookie it cannot parse as none: it sends the whole scope as a
            # delete phase (no deletes) and an empty cookie. Deletions would be lost.
            raise CookieRefused(f"{uri}: the server did not understand the cookie")
        logger.debug(
            "%s: content sync: %d changed, %d deleted, %d present, full refresh %s",
            uri,
            len(self.changed),
            len(self.deleted),
            len(self.present),
            self.full_refresh,
        )
        return ContentSyncBatch(
            changed=MappingProxyType(self.changed),
            cookie=self.cookie or sent or None,
            full_refresh=self.full_refresh,
            _deleted=frozenset(self.deleted),
            _present=frozenset(self.present),
        )


def _canonical(value: str) -> str:
    """An entryUUID as the server's sync controls spell it: lower-case and hyphenated."""
    return str(uuid.UUID(value))
