"""Change tracking for incremental runs: which changes a run must read, and when to go full.

Two ways to ask a server "what changed since last time":

- ``usn``: Active Directory's ``uSNChanged``, compared with the ``highestCommittedUSN`` that
  the same domain controller (same ``invocationId``) reported at the start of the last run.
  USNs are per DC, so another DC, or the same DC after a restore, means a full run.
- ``timestamp``: ``whenChanged`` (AD) or ``modifyTimestamp`` with the seed's
  ``LDAP_SYNC_*_FILTER_INCREMENTAL`` filters, minus ``LDAP_SYNC_INCREMENTAL_TIME_OFFSET``
  minutes. The marker is the newest timestamp the server itself wrote on an entry in scope,
  so the Django host's clock never matters.

A server's own change feed (``contentsync``: RFC 4533 on OpenLDAP; ``dirsync``: AD's DirSync)
keeps cookies instead, read and written by :mod:`adldap_auth.sync.feed`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .conf import DEFAULTS
from .directory.connection import RootDSE
from .directory.decoding import format_generalized_time, parse_generalized_time
from .directory.dirsync import DIRSYNC_OID
from .directory.readers import and_filter

logger = logging.getLogger("adldap_auth.sync")

DEFAULTS_INCREMENTAL_USER_FILTER = DEFAULTS["USER_FILTER_INCREMENTAL"]

USN = "usn"
TIMESTAMP = "timestamp"
CONTENT_SYNC = "contentsync"
DIRSYNC = "dirsync"

#: The Content Synchronization control (RFC 4533) in a rootDSE's supportedControl.
CONTENT_SYNC_OID = "1.3.6.1.4.1.4203.1.9.1.1"
#: The scopes whose feed cookies a marker keeps.
FEED_SCOPES = ("users", "groups")
#: The marker's DirSync cookie (base64) and the invocationId of the DC that issued it.
DIRSYNC_COOKIE, DIRSYNC_DC = "dirsync", "invocation_id"


@dataclass(frozen=True)
class Tracking:
    kind: str  # USN or TIMESTAMP
    attribute: str  # lower-case attribute read on every entry: uSNChanged / whenChanged / ...


def choose_tracking(
    root: RootDSE, setting: str, member_attribute: str = "member", identity: str = "entryuuid"
) -> Tracking:
    """``LDAP_SYNC_CHANGE_TRACKING`` ("auto", "usn", "timestamp", "contentsync", "dirsync")
    for this server.

    "usn" on a server without ``highestCommittedUSN`` (not AD) falls back to timestamps;
    "contentsync" on a server that does not offer RFC 4533, and "dirsync" on one that does not
    offer DirSync (or, for either, ``memberUid`` groups, whose member keys the database does
    not keep, or another identity than the feed's own) fall back to "auto".
    """
    if setting in (CONTENT_SYNC, DIRSYNC):
        reason = _feed_obstacle(root, setting, member_attribute, identity)
        if reason is None:
            return Tracking(setting, "modifytimestamp" if setting == CONTENT_SYNC else "usnchanged")
        logger.warning("LDAP_SYNC_CHANGE_TRACKING is %r but %s", setting, reason)
        setting = "auto"
    has_usn = root.is_ad and root.highest_committed_usn is not None
    kind = setting
    if kind == "auto" or (kind == USN and not has_usn):
        if kind == USN:
            logger.warning("LDAP_SYNC_CHANGE_TRACKING is 'usn' but the server has no USNs")
        kind = USN if has_usn else TIMESTAMP
    if kind == USN:
        return Tracking(USN, "usnchanged")
    return Tracking(TIMESTAMP, "whenchanged" if root.is_ad else "modifytimestamp")


def _feed_obstacle(root: RootDSE, setting: str, member_attribute: str, identity: str) -> str | None:
    """Why this server's change feed cannot serve the run (None: it can)."""
    oid, feed, own_id = (
        (CONTENT_SYNC_OID, "Content Synchronization (RFC 4533)", "entryuuid")
        if setting == CONTENT_SYNC
        else (DIRSYNC_OID, "DirSync (Active Directory)", "objectguid")
    )
    if oid not in root.supported_controls or (setting == DIRSYNC and not root.is_ad):
        return f"the server does not offer {feed}"
    if setting == CONTENT_SYNC and (root.vendor or "").startswith("389"):
        # Measured on 389-DS 2.3: an entry that leaves the scope through the filter (a locked
        # account) is not reported at all, and its Sync Done control says "present phase"
        # after every refresh: deletions would be missed or everything read as gone.
        return (
            "389 Directory Server's Content Synchronization does not report entries that "
            "leave the filter (locked accounts)"
        )
    if member_attribute == "memberuid":
        return "memberUid groups are not followed by the change feed"
    if identity != own_id:
        return f"the feed names entries by {own_id}, not LDAP_SYNC_IDENTITY_ATTRIBUTE"
    return None


def choose_mode(
    requested: str | None,
    marker: Any,
    root: RootDSE,
    tracking: Tracking,
    *,
    incremental_allowed: bool,
    between_full: int,
) -> tuple[str, str]:
    """Return (``"full"`` or ``"incremental"``, the reason), for the run record and logs."""
    if requested == "full":
        return "full", "full run requested"
    if not incremental_allowed:
        return "full", "incremental runs are disabled (LDAP_SYNC_USER_INCREMENTAL)"
    if marker is None:
        return "full", "first run against this server, or the last run read another server"
    if tracking.kind == CONTENT_SYNC:
        cookies = marker.feed_cookies if isinstance(marker.feed_cookies, dict) else {}
        if not all(isinstance(cookies.get(scope), str) for scope in FEED_SCOPES):
            return "full", "no change-feed cookie recorded for this server"
    elif tracking.kind == DIRSYNC:
        cookies = marker.feed_cookies if isinstance(marker.feed_cookies, dict) else {}
        if not isinstance(cookies.get(DIRSYNC_COOKIE), str):
            return "full", "no DirSync cookie recorded for this server"
        if not root.invocation_id or cookies.get(DIRSYNC_DC) != root.invocation_id:
            return "full", (
                "the DirSync cookie belongs to another domain controller, or this one was "
                "restored (its invocationId changed)"
            )
    elif tracking.kind == USN:
        if marker.highest_usn is None:
            return "full", "no uSNChanged marker recorded for this server"
        if not root.invocation_id or marker.invocation_id != root.invocation_id:
            return "full", "the domain controller's invocationId changed (restore or another DC)"
        if (
            root.highest_committed_usn is not None
            and root.highest_committed_usn < marker.highest_usn
        ):
            return "full", "the server's highestCommittedUSN went backwards"
    elif not marker.timestamp:
        return "full", "no timestamp marker recorded for this server"
    else:
        try:
            datetime.fromisoformat(marker.timestamp)
        except ValueError:
            return "full", "the recorded timestamp marker is corrupt"
    if requested is None and between_full >= 0 and marker.incrementals_since_full >= between_full:
        return "full", f"{marker.incrementals_since_full} incremental runs since the last full run"
    return "incremental", "changes since the last run"


def changed_filter(
    tracking: Tracking, marker: Any, base_filter: str, incremental_filter: str, settings: Any
) -> str:
    """The filter selecting entries changed since ``marker``."""
    if tracking.kind == USN:
        return and_filter(base_filter, f"(uSNChanged>={int(marker.highest_usn) + 1})")
    since = since_timestamp(marker, settings.INCREMENTAL_TIME_OFFSET)
    text = format_generalized_time(since, settings.INCREMENTAL_TIMESTAMPFORMAT)
    # The seed's default incremental filter names AD's objects and whenChanged: on other
    # servers (or with a custom full filter) the scope's own filter plus the server's
    # timestamp attribute is what a user means.
    seed_default = incremental_filter == DEFAULTS_INCREMENTAL_USER_FILTER
    if "?" in incremental_filter and not (seed_default and tracking.attribute != "whenchanged"):
        return incremental_filter.replace("?", text)
    attribute = "whenChanged" if tracking.attribute == "whenchanged" else "modifyTimestamp"
    return and_filter(base_filter, f"({attribute}>={text})")


#: A generalized time in whole seconds, UTC: same-layout values sort as their bytes.
_SECONDS_UTC = re.compile(rb"[0-9]{14}Z")


def since_timestamp(marker: Any, offset_minutes: int) -> datetime:
    return datetime.fromisoformat(marker.timestamp) - timedelta(minutes=int(offset_minutes))


def entry_changed(
    value: bytes | None, tracking: Tracking, marker: Any, offset_minutes: int
) -> bool:
    """Whether an entry whose tracking attribute is ``value`` changed since ``marker``.

    An entry without the attribute counts as changed: reading it again is always safe.
    """
    if value is None:
        return True
    try:
        if tracking.kind == USN:
            return int(value) > int(marker.highest_usn)
        since = since_timestamp(marker, offset_minutes)
        if _SECONDS_UTC.fullmatch(value) and since.utcoffset() == timedelta(0):
            # "YYYYMMDDHHMMSSZ" (OpenLDAP): compared as bytes, no parsing of every entry's time
            floor = since.strftime("%Y%m%d%H%M%S").encode() + b"Z"
            return value > floor or (value == floor and since.microsecond == 0)
        return parse_generalized_time(value) >= since
    except ValueError:
        return True


class TimestampHigh:
    """The newest change timestamp seen on any entry during a run (server clock)."""

    def __init__(self) -> None:
        self.value: datetime | None = None
        self._raw: bytes | None = None  # the value as the server wrote it

    def see(self, raw: bytes | None) -> None:
        if raw is None:
            return
        newest = self._raw
        if (
            newest is not None
            and len(raw) == len(newest)
            and raw <= newest
            and raw.endswith(b"Z")
            and raw[:1].isdigit()
        ):
            # Two UTC generalized times of one layout sort as their bytes: not newer. Saves
            # parsing the timestamp of every entry (seconds over 100,000 entries).
            return
        try:
            moment = parse_generalized_time(raw)
        except ValueError:
            return
        if self.value is None or moment > self.value:
            self.value = moment
            self._raw = raw if raw.endswith(b"Z") and raw[:1].isdigit() else None
