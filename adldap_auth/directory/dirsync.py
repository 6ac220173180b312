"""Active Directory's change feed: the DirSync control (1.2.840.113556.1.4.841).

A DirSync search returns the objects of a whole naming context that changed since the state a
*cookie* names, with only their changed attributes; a linked attribute (``member``) comes as
added and removed values, a deleted object as its tombstone. The cookie belongs to the DC that
issued it, so every batch carries that DC's invocationId. See docs/ad-permissions.md for the
right the account needs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import ldap
from ldap.controls import KNOWN_RESPONSE_CONTROLS, RequestControl, ResponseControl
from ldap.dn import str2dn

from . import DirectoryError, IncompleteRead
from .ber import ber_read
from .connection import INCOMPLETE_ERRORS, DirectorySession, error_text, scrubbed
from .decoding import guid_to_str

logger = logging.getLogger("adldap_auth.directory")

DIRSYNC_OID = "1.2.840.113556.1.4.841"
#: Flags of the request (MS-ADTS 3.1.1.3.4.1.3).
LDAP_DIRSYNC_OBJECT_SECURITY = 0x00000001
LDAP_DIRSYNC_ANCESTORS_FIRST_ORDER = 0x00000800
LDAP_DIRSYNC_PUBLIC_DATA_ONLY = 0x00002000
LDAP_DIRSYNC_INCREMENTAL_VALUES = 0x80000000
#: The control access right "Replicating Directory Changes" (DS-Replication-Get-Changes).
GET_CHANGES_RIGHT = "1131f6aa-9c07-11d1-f79f-00c04fc2dcd2"
#: The reply size the request asks for (what .NET's DirSyncRequestControl asks; Samba ignores it).
DEFAULT_MAX_BYTES = 1_048_576

#: A filter that no object matches (an objectGUID is never all zeros), on an indexed attribute:
#: a read without a cookie with it returns no entry, yet the cookie of the DC's current state
#: (on Samba 4.17 byte for byte the cookie of a read of every object; see current_cookie).
NO_OBJECT_FILTER = "(objectGUID=" + "\\00" * 16 + ")"
#: The Show Deleted control, and the well-known GUID of a naming context's CN=Deleted Objects.
SHOW_DELETED_OID = "1.2.840.113556.1.4.417"
DELETED_OBJECTS_WKGUID = "18e2ea80684f11d2b9aa00c04f79f805"

#: Linked-attribute options under LDAP_DIRSYNC_INCREMENTAL_VALUES: values added / removed.
_ADDED_OPTION = "range=1-1"
_REMOVED_OPTION = "range=0-0"
#: Attributes DirSync adds to every entry; dropped from ``changed`` unless asked for.
_BOOKKEEPING = {"objectguid", "instancetype", "parentguid", "isdeleted"}


class DirSyncUnavailable(DirectoryError):
    """The server refuses DirSync: the bound account lacks the right, or no DirSync at all."""


class DirSyncCookieRejected(DirectoryError):
    """The server cannot use the cookie (corrupt, or from another directory): read again
    without a cookie."""


# -- the control's BER value ------------------------------------------------------------------
# A hand-written encoder: AD reads these INTEGERs as signed 32-bit numbers and wants the flag
# 0x80000000 as the four octets 80 00 00 00; pyasn1 0.6 encodes -2**31 as five (ff 80 00 00 00).


def _ber_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def _ber_integer(value: int) -> bytes:
    """A 32-bit INTEGER in its shortest two's-complement form; 2**31..2**32-1 as negatives."""
    if not -(2**31) <= value < 2**32:
        raise ValueError(f"DirSync integers are 32-bit: {value}")
    if value >= 2**31:
        value -= 2**32
    size = 1
    while not -(1 << (8 * size - 1)) <= value < 1 << (8 * size - 1):
        size += 1
    return b"\x02" + _ber_length(size) + value.to_bytes(size, "big", signed=True)


def encode_request_value(flags: int, max_bytes: int, cookie: bytes) -> bytes:
    """BER of ``SEQUENCE { flags INTEGER, maxBytes INTEGER, cookie OCTET STRING }``."""
    body = _ber_integer(flags) + _ber_integer(max_bytes)
    body += b"\x04" + _ber_length(len(cookie)) + cookie
    return b"\x30" + _ber_length(len(body)) + body


def decode_response_value(data: bytes) -> tuple[int, int, bytes]:
    """``(moreResults, unused, cookie)`` from the BER of the response control's value."""
    body, end = ber_read(data, 0, 0x30)
    if end != len(data):
        raise ValueError("trailing bytes after the DirSync response value")
    more, pos = ber_read(body, 0, 0x02)
    unused, pos = ber_read(body, pos, 0x02)
    cookie, pos = ber_read(body, pos, 0x04)
    if pos != len(body) or not more or not unused:
        raise ValueError("malformed DirSync response value")
    return (
        int.from_bytes(more, "big", signed=True),
        int.from_bytes(unused, "big", signed=True),
        cookie,
    )


class DirSyncRequestControl(RequestControl):
    """The DirSync request; always critical (Samba refuses it otherwise)."""

    def __init__(self, flags: int, cookie: bytes = b"", max_bytes: int = DEFAULT_MAX_BYTES):
        super().__init__(DIRSYNC_OID, True)
        self.flags, self.cookie, self.max_bytes = flags, cookie, max_bytes

    def encodeControlValue(self) -> bytes:  # noqa: N802 (python-ldap's name)
        return encode_request_value(self.flags, self.max_bytes, self.cookie)


class DirSyncResponseControl(ResponseControl):
    """The DirSync response: whether more changes wait, and the next cookie."""

    controlType = DIRSYNC_OID
    more_results = False
    cookie = b""

    def decodeControlValue(self, encodedControlValue: bytes) -> None:  # noqa: N802, N803
        more, _unused, self.cookie = decode_response_value(encodedControlValue)
        self.more_results = more != 0


# -- reading changes --------------------------------------------------------------------------


@dataclass(frozen=True)
class DirSyncEntry:
    """One new or changed object. ``changed`` maps lower-case names to the values of the
    attributes that changed (an empty list: the attribute was cleared); ``added``/``removed``
    hold linked-attribute deltas (``member``) under LDAP_DIRSYNC_INCREMENTAL_VALUES."""

    guid: str
    dn: str
    changed: dict[str, list[bytes]] = field(default_factory=dict)
    added: dict[str, list[bytes]] = field(default_factory=dict)
    removed: dict[str, list[bytes]] = field(default_factory=dict)


@dataclass(frozen=True)
class DirSyncBatch:
    """What changed since the cookie given to :func:`read_changes`, and the next cookie.

    ``cookie`` is only valid on the DC whose ``invocation_id`` comes with it (None when the
    account cannot read the DC's NTDS Settings object). ``complete`` is True for a read without
    a cookie run to its end: ``entries`` then hold every object in scope.
    """

    entries: list[DirSyncEntry]
    deleted: list[str]
    cookie: bytes
    invocation_id: str | None
    server: str
    complete: bool
    searches: int


def read_changes(
    session: DirectorySession,
    base: str,
    filterstr: str,
    attributes: Iterable[str],
    cookie: bytes | None,
    *,
    flags: int = LDAP_DIRSYNC_INCREMENTAL_VALUES,
    max_bytes: int = DEFAULT_MAX_BYTES,
    facts: ServerFacts | None = None,
) -> DirSyncBatch:
    """The objects matching ``filterstr`` in the naming context ``base`` that changed since
    ``cookie`` (all of them when None), searching again while the server has more.

    ``base`` must be a naming context head (DirSync reads whole NCs; Samba and Windows refuse
    other bases). With a cookie the filter also takes every tombstone, so deletions of objects
    the caller holds are never missed. ``facts``: what the caller already read of the server
    (else two more searches). Raises :class:`DirSyncUnavailable`,
    :class:`DirSyncCookieRejected`, or :class:`IncompleteRead` when a search stops early.
    """
    facts = facts or server_facts(session)
    naming_contexts = facts.naming_contexts
    if DIRSYNC_OID not in facts.supported_controls:
        raise DirSyncUnavailable(f"{session.uri} does not offer DirSync ({DIRSYNC_OID})")
    if _dn_key(base) not in {_dn_key(nc) for nc in naming_contexts}:
        raise DirectoryError(
            f"DirSync reads a whole naming context: its base must be one of "
            f"{sorted(naming_contexts)}, not {base!r}"
        )
    requested = list(dict.fromkeys([*attributes, "objectGUID", "isDeleted"]))
    asked = {name.lower() for name in attributes}
    if cookie:
        wrapped = filterstr if filterstr.startswith("(") else f"({filterstr})"
        filterstr = f"(|{wrapped}(isDeleted=TRUE))"
    changes: dict[str, DirSyncEntry] = {}
    deleted: dict[str, None] = {}
    control = DirSyncRequestControl(flags, cookie or b"", max_bytes)
    searches = 0
    while True:
        data, response = _search(session, base, filterstr, requested, control, bool(cookie))
        searches += 1
        for dn, attrs in data:
            if dn is not None:  # a continuation reference: referrals are not chased
                _collect(dn, attrs, asked, changes, deleted)
        control.cookie = response.cookie
        if not response.more_results:
            break
    return DirSyncBatch(
        entries=list(changes.values()),
        deleted=list(deleted),
        cookie=control.cookie,
        invocation_id=facts.invocation_id,
        server=session.uri,
        complete=not cookie,
        searches=searches,
    )


def current_cookie(
    session: DirectorySession, base: str, facts: ServerFacts | None = None
) -> DirSyncBatch:
    """A cookie of the DC's state now, from a read that returns no entry (NO_OBJECT_FILTER):
    a read without a cookie of the objects themselves would return every one of them."""
    return read_changes(session, base, NO_OBJECT_FILTER, ["objectGUID"], None, facts=facts)


def tombstones_visible(session: DirectorySession, base: str) -> bool:
    """Whether the account may list the tombstones of the naming context ``base``: DirSync
    reports deletions only to an account that may list ``CN=Deleted Objects`` (Samba 4.17,
    even with both replication rights). One search of at most one entry; a naming context
    without any tombstone reads as False."""
    where = f"{session.uri}: listing the deleted objects of {base!r}"
    session.search_count += 1
    try:
        msgid = session.connection.search_ext(
            f"<WKGUID={DELETED_OBJECTS_WKGUID},{base}>",
            ldap.SCOPE_ONELEVEL,
            "(isDeleted=TRUE)",
            ["1.1"],
            serverctrls=[RequestControl(SHOW_DELETED_OID, True)],
            sizelimit=1,
        )
        _type, data, _msgid, _controls = session.connection.result3(
            msgid, all=1, timeout=session.config.operation_timeout
        )
    except ldap.SIZELIMIT_EXCEEDED:
        return True
    except (ldap.NO_SUCH_OBJECT, ldap.INSUFFICIENT_ACCESS):
        return False
    except ldap.LDAPError as error:
        raise DirectoryError(f"{where} failed: {error_text(error)}") from scrubbed(error)
    return any(dn for dn, _attrs in data)


@dataclass(frozen=True)
class ServerFacts:
    """What :func:`read_changes` needs to know of the server."""

    naming_contexts: list[str]
    supported_controls: frozenset[str]
    invocation_id: str | None  # None: the DC's NTDS Settings object is not readable


def server_facts(session: DirectorySession) -> ServerFacts:
    """The server's naming contexts, supported controls and invocationId (None: unreadable)."""
    root = session.read_entry("", ["namingContexts", "supportedControl", "dsServiceName"])
    if root is None:
        raise DirectoryError(f"{session.uri}: the rootDSE is not readable")
    contexts = [value.decode() for value in root.attrs.get("namingcontexts", [])]
    supported = {value.decode() for value in root.attrs.get("supportedcontrol", [])}
    invocation_id = None
    service = root.text("dsServiceName")
    if service:
        server = session.read_entry(service, ["invocationId"])
        raw = server.first("invocationId") if server else None
        invocation_id = guid_to_str(raw) if raw else None
    return ServerFacts(contexts, frozenset(supported), invocation_id)


def _dn_key(dn: str) -> tuple:
    try:
        return tuple(tuple((a.lower(), v.lower()) for a, v, _ in rdn) for rdn in str2dn(dn))
    except ldap.DECODING_ERROR:
        return (dn.lower(),)


def _search(
    session: DirectorySession,
    base: str,
    filterstr: str,
    attrlist: list[str],
    control: DirSyncRequestControl,
    with_cookie: bool,
) -> tuple[list, DirSyncResponseControl]:
    """One DirSync search: its entries and its response control; server refusals translated."""
    where = f"{session.uri}: DirSync search of {base!r}"
    session.search_count += 1
    try:
        msgid = session.connection.search_ext(
            base, ldap.SCOPE_SUBTREE, filterstr, attrlist, serverctrls=[control]
        )
        _type, data, _msgid, controls = session.connection.result3(
            msgid,
            all=1,
            timeout=session.config.operation_timeout,
            # python-ldap silently drops a response control it has no class for.
            resp_ctrl_classes={**KNOWN_RESPONSE_CONTROLS, DIRSYNC_OID: DirSyncResponseControl},
        )
    except ValueError as error:  # DirSyncResponseControl could not decode the reply
        raise DirectoryError(f"{where}: malformed DirSync reply: {error}") from None
    except ldap.INSUFFICIENT_ACCESS as error:
        raise DirSyncUnavailable(
            f"{where} refused: the account {session.config.bind_dn!r} lacks the right "
            f'"Replicating Directory Changes" ({GET_CHANGES_RIGHT}) on {base!r} '
            "(or read with LDAP_DIRSYNC_OBJECT_SECURITY); see docs/ad-permissions.md"
        ) from scrubbed(error)
    except ldap.UNAVAILABLE_CRITICAL_EXTENSION as error:
        if with_cookie:
            raise DirSyncCookieRejected(
                f"{where}: the server rejected the cookie ({error_text(error)}); "
                "read again without a cookie"
            ) from scrubbed(error)
        raise DirSyncUnavailable(f"{where}: {error_text(error)}") from scrubbed(error)
    except INCOMPLETE_ERRORS as error:
        raise IncompleteRead(f"{where} stopped early: {error_text(error)}") from scrubbed(error)
    except ldap.LDAPError as error:
        raise DirectoryError(f"{where} failed: {error_text(error)}") from scrubbed(error)
    for response in controls or ():
        if isinstance(response, DirSyncResponseControl):
            return data, response
    raise DirectoryError(f"{where}: the reply carries no DirSync control (no cookie)")


def _collect(
    dn: str,
    attrs: dict[str, list[bytes]],
    asked: set[str],
    changes: dict[str, DirSyncEntry],
    deleted: dict[str, None],
) -> None:
    """Sort one returned entry into ``changes`` or ``deleted`` (by objectGUID), merging an
    object that comes back in a later search of the same read."""
    lowered = {key.lower(): values for key, values in attrs.items()}
    raw_guid = (lowered.get("objectguid") or [None])[0]
    if raw_guid is None:
        logger.warning("DirSync entry %r without objectGUID ignored", dn)
        return
    guid = guid_to_str(raw_guid)
    if _is_tombstone(dn, lowered):
        changes.pop(guid, None)
        deleted[guid] = None
        return
    deleted.pop(guid, None)
    entry = changes.setdefault(guid, DirSyncEntry(guid, dn))
    if entry.dn != dn:
        entry = changes[guid] = DirSyncEntry(guid, dn, entry.changed, entry.added, entry.removed)
    for key, values in lowered.items():
        name, _, option = key.partition(";")
        if option == _ADDED_OPTION:
            entry.added.setdefault(name, []).extend(values)
        elif option == _REMOVED_OPTION:
            entry.removed.setdefault(name, []).extend(values)
        elif name not in _BOOKKEEPING or name in asked:
            entry.changed[name] = list(values)


def _is_tombstone(dn: str, attrs: dict[str, list[bytes]]) -> bool:
    """A deleted object: ``isDeleted: TRUE``, a ``\\0ADEL:`` DN, or (an account that may not
    read the tombstone) an empty DN."""
    flag = (attrs.get("isdeleted") or [b""])[0]
    return flag.upper() == b"TRUE" or not dn or "\\0ADEL:" in dn.upper()
