"""Re-read chosen users from the directory now: the admin action "sync these users now".

Each user is found by its identity link's immutable id (``objectGUID`` on AD, ``entryUUID``
elsewhere) with a search of the user scope (``LDAP_SYNC_USER_SEARCH`` and
``LDAP_SYNC_USER_FILTER``, ids OR-ed 50 at a time), so a renamed or moved entry is still found,
and an entry moved out of the scope is not synced. Each entry found then goes through the path a
login takes (:func:`adldap_auth.login.user_groups` and :func:`adldap_auth.login.write_user`: the
shared mapper, group resolution and store), so the result is the state a full run would leave
for that entry; a disabled entry also gets the removal callbacks, as in a run.

Not done here, because it needs the whole scope: removing users whose entry is gone (reported
as "not found"; the next full run applies the removal rules and threshold). No run record is
written and the batch lock is not taken: like a login, this is safe during a run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ldap.filter import escape_filter_chars

from .callbacks import resolve_callback
from .conf import get_config
from .directory import DirectoryError, Entry
from .directory.connection import DirectorySession, connection_config
from .directory.decoding import guid_to_bytes
from .directory.readers import Scope, and_filter, read_entries
from .login import mapping_entry, user_groups, write_user
from .mapping import (
    BINARY_GUID_ATTRIBUTES,
    MappingConfig,
    SkipEntry,
    build_mapping_config,
    entry_guid,
    map_user,
    user_attribute_list,
)
from .models import DirectoryUser
from .store import RunReport, Store

logger = logging.getLogger("adldap_auth.resync")

#: Ids per search.
CHUNK = 50


@dataclass
class ResyncResult:
    """What :func:`sync_users_now` did, by username."""

    synced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # disabled in the directory
    not_found: list[str] = field(default_factory=list)  # no entry with the id in the scope
    not_linked: list[str] = field(default_factory=list)  # never synced from the directory
    problems: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not (self.error or self.problems or self.not_found)

    def message(self) -> str:
        parts = []
        if self.error:
            parts.append(f"the directory could not be read: {self.error}")
        if self.synced:
            parts.append(f"{len(self.synced)} synced from the directory: {_names(self.synced)}")
        if self.removed:
            parts.append(
                f"{len(self.removed)} disabled in the directory, removal rules applied: "
                f"{_names(self.removed)}"
            )
        if self.not_found:
            parts.append(
                f"{len(self.not_found)} not found in the directory scope (the next full run "
                f"applies the removal rules): {_names(self.not_found)}"
            )
        if self.not_linked:
            parts.append(
                f"{len(self.not_linked)} not from the directory, left alone: "
                f"{_names(self.not_linked)}"
            )
        if self.problems:
            parts.append(f"problems: {'; '.join(self.problems[:5])}")
        return "; ".join(parts) or "no users selected"


def _names(usernames: list[str], shown: int = 10) -> str:
    text = ", ".join(usernames[:shown])
    return text + (f" and {len(usernames) - shown} more" if len(usernames) > shown else "")


def identity_filter(attribute: str, guids: Iterable[str]) -> str:
    """``(|(attr=id1)(attr=id2)...)``, ids escaped (objectGUID as its 16 bytes)."""
    clauses = []
    for guid in guids:
        if attribute.lower() in BINARY_GUID_ATTRIBUTES:
            value = "".join(f"\\{byte:02x}" for byte in guid_to_bytes(guid))
        else:
            value = escape_filter_chars(guid)
        clauses.append(f"({attribute}={value})")
    return clauses[0] if len(clauses) == 1 else "(|" + "".join(clauses) + ")"


def read_users_by_id(
    session: DirectorySession, config: MappingConfig, guids: list[str]
) -> dict[str, Entry]:
    """The entries of the user scope with these ids, by id."""
    s = get_config()
    attributes = list(dict.fromkeys([*user_attribute_list(config), "memberof"]))
    found: dict[str, Entry] = {}
    for start in range(0, len(guids), CHUNK):
        chunk = guids[start : start + CHUNK]
        scope = Scope(
            s.USER_SEARCH,
            and_filter(s.USER_FILTER, identity_filter(config.identity_attribute, chunk)),
        )
        for entry in read_entries(session, scope, attributes, ranged=["memberof"]):
            guid = entry_guid(entry, config.identity_attribute)
            if guid:
                found[guid] = entry
    return found


def sync_users_now(users: Iterable[Any]) -> ResyncResult:
    """Re-read ``users`` (Django users) from the directory and write what changed."""
    users = list(users)
    result = ResyncResult()
    links = {
        link.user_id: link
        for link in DirectoryUser.objects.filter(user_id__in=[user.pk for user in users])
    }
    for user in users:
        if user.pk not in links:
            result.not_linked.append(user.get_username())
    if not links:
        return result
    by_user = {user.pk: user for user in users}
    try:
        with DirectorySession.open(connection_config()) as session:
            root = session.root_dse()
            config = build_mapping_config(is_ad=root.is_ad)
            found = read_users_by_id(session, config, [link.guid for link in links.values()])
            for user_id, link in links.items():
                username = by_user[user_id].get_username()
                entry = found.get(link.guid)
                if entry is None:
                    result.not_found.append(username)
                    continue
                _sync_one(session, entry, config, root.is_ad, username, result)
    except DirectoryError as error:
        result.error = str(error)
        logger.error("sync of %d users failed: %s", len(links), error)
    return result


def _sync_one(
    session: DirectorySession,
    entry: Entry,
    config: MappingConfig,
    is_ad: bool,
    username: str,
    result: ResyncResult,
) -> None:
    try:
        record = map_user(mapping_entry(entry, config), config)
    except SkipEntry as skip:
        result.problems.append(f"{username}: {skip}")
        return
    groups = user_groups(session, entry, record, config, is_ad)
    user = write_user(record, groups, config, server=session.uri)
    if user is None:
        result.problems.append(f"{username}: not written (see the log)")
        return
    result.synced.append(user.get_username())
    if record.disabled:
        links = DirectoryUser.objects.select_related("user").filter(
            guid=record.guid, removed_at__isnull=True
        )
        if links:
            report = RunReport()
            Store(config, report, server=session.uri).remove_users(
                links,
                [resolve_callback(path) for path in get_config().REMOVED_USER_CALLBACKS],
                DirectoryUser.REASON_DISABLED,
            )
            result.problems.extend(report.problems)
            if report.counts["users_removed"]:
                result.removed.append(user.get_username())
