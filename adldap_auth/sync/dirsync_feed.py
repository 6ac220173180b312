"""Change-feed runs on Active Directory (LDAP_SYNC_CHANGE_TRACKING = "dirsync").

DirSync (:mod:`adldap_auth.directory.dirsync`) reads a whole naming context (the rootDSE's
``defaultNamingContext``) and returns only the attributes that changed, ``member`` as the
values added and removed, and deleted objects as tombstones. So an incremental run:

- reads again, whole, the changed users of the user scope and the changed linked users, by
  objectGUID within the user scope and filter: a partial entry never blanks a field, and a
  linked user not found (moved out, filtered out, e.g. disabled under a filter that excludes
  disabled accounts) is missing, as is a deleted one;
- applies to the stored member keys of a group the ``member`` values added and removed, when
  nothing else of it changed; reads again, whole, a new group and one renamed, moved or with
  another changed attribute;
- takes the primary group of the users whose entry did not change from their links.

A renamed or moved object is reported only through its ``name`` (Samba 4.17), so ``name`` is
always asked for. Deletions reach the account only if it may list ``CN=Deleted Objects``:
without that (checked every run), or without "Replicating Directory Changes", the run tracks
changes by uSNChanged, with a warning (docs/ad-permissions.md). A cookie is valid on the DC
that issued it only: it is kept with that DC's invocationId.
"""

from __future__ import annotations

import base64
import binascii

from ..conf import get_config
from ..directory.dirsync import (
    DirSyncBatch,
    DirSyncCookieRejected,
    DirSyncEntry,
    DirSyncUnavailable,
    ServerFacts,
    current_cookie,
    read_changes,
    tombstones_visible,
)
from ..directory.readers import Scope
from ..mapping import GroupRecord, MappingConfig
from ..mapping.attribute_lists import group_attribute_list, user_attribute_list
from ..mapping.values import normalize_dn
from ..membership import group_scope, is_under, membership_scope
from ..nesting import stored_group_records
from ..tracking import DIRSYNC_COOKIE, DIRSYNC_DC
from .feed import (
    FeedChanges,
    FeedSteps,
    GroupUpdate,
    UserLink,
    moved_keys,
    present_users,
    user_links,
)


class DirSyncSteps(FeedSteps):
    """The DirSync reads of :class:`FeedSteps` (a mixin of the engine, like it)."""

    def _dirsync_cookies(self, config: MappingConfig) -> dict:
        """The cookie of the DC's state now, for the next incremental run."""
        base = self._naming_context()
        batch = current_cookie(self.session, base, self._server_facts())
        self._check_tombstones(base)
        return _cookies(batch)

    def _read_dirsync(self, config: MappingConfig, cookies: dict) -> FeedChanges:
        base = self._naming_context()
        try:
            cookie = base64.b64decode(cookies[DIRSYNC_COOKIE], validate=True)
        except (binascii.Error, ValueError) as error:
            raise DirSyncCookieRejected(f"the stored DirSync cookie is corrupt ({error})") from None
        batch = read_changes(
            self.session,
            base,
            _dirsync_filter(config),
            _dirsync_attributes(config),
            cookie,
            facts=self._server_facts(),
        )
        if batch.invocation_id != cookies.get(DIRSYNC_DC):
            raise DirSyncCookieRejected(
                f"{self.session.uri}: the DirSync cookie is of another domain controller"
            )
        self._check_tombstones(base)
        if not (batch.entries or batch.deleted) and not self.unsettled:
            # Nothing to look at: neither the links nor the stored nesting are read.
            self.feed_cookies = _cookies(batch)
            return FeedChanges(nothing=True)
        links = user_links()
        records = {r.guid: r for r in stored_group_records()} if self.config.GROUP else {}
        changes = self._dirsync_users(config, batch, links, records)
        new_cookies = _cookies(batch)
        if self.config.GROUP:
            update = _group_update(config, batch, records, links)
            changes.groups, changes.changed_groups, _holders = self._updated_graph(config, update)
        self.report.counts["feed_entries"] = len(batch.entries)
        self.report.counts["feed_deleted"] = len(batch.deleted)
        return self._feed_read(changes, new_cookies)

    def _dirsync_users(
        self,
        config: MappingConfig,
        batch: DirSyncBatch,
        links: list[UserLink],
        records: dict[str, GroupRecord],
    ) -> FeedChanges:
        """The changed users read again whole; the linked ones not found, or deleted, gone."""
        linked = {link.guid for link in links}
        base = self.config.USER_SEARCH or ""
        candidates = [
            entry.guid
            for entry in batch.entries
            if entry.guid in linked
            or (entry.guid not in records and not _is_group(entry) and is_under(entry.dn, base))
        ]
        scope = Scope(base, self.config.USER_FILTER)
        found = self._read_by_id(config, scope, user_attribute_list(config), candidates)
        missing = {g for g in candidates if g in linked and g not in found}
        missing |= linked & set(batch.deleted)
        self.report.counts["feed_users_reread"] = len(candidates)
        return FeedChanges(
            users=list(found.values()),
            deleted_users=frozenset(missing),
            present_users=present_users(links, missing),
        )

    def _server_facts(self) -> ServerFacts:
        """The rootDSE the run read, for DirSync: its two searches are not sent again."""
        root = self.root
        return ServerFacts([root.naming_context], root.supported_controls, root.invocation_id)

    def _naming_context(self) -> str:
        if not self.root.naming_context:
            raise DirSyncUnavailable(f"{self.session.uri}: the rootDSE names no naming context")
        return self.root.naming_context

    def _check_tombstones(self, base: str) -> None:
        if not tombstones_visible(self.session, base):
            raise DirSyncUnavailable(
                f"the account {self.config.BIND_DN!r} may not list the deleted objects of "
                f"{base!r} (List contents and Read property on CN=Deleted Objects), so DirSync "
                "would report no deletion; see docs/ad-permissions.md"
            )


def _cookies(batch: DirSyncBatch) -> dict:
    return {
        DIRSYNC_COOKIE: base64.b64encode(batch.cookie).decode("ascii"),
        DIRSYNC_DC: batch.invocation_id or "",
    }


def _group_update(
    config: MappingConfig,
    batch: DirSyncBatch,
    records: dict[str, GroupRecord],
    links: list[UserLink],
) -> GroupUpdate:
    """What DirSync says of the stored groups: member deltas, groups to read whole, deletions,
    and the entries now at another DN (their holders' keys follow, as AD's links do)."""
    members = membership_scope(config)
    member = config.member_attribute
    to_read: list[str] = []
    deltas: dict[str, tuple[list[str], list[str]]] = {}
    for entry in batch.entries:
        stored = records.get(entry.guid)
        if stored is None:
            if _is_group(entry) and is_under(entry.dn, members.base):
                to_read.append(entry.guid)
        elif entry.changed or normalize_dn(entry.dn) != normalize_dn(stored.dn):
            to_read.append(entry.guid)
        elif entry.added or entry.removed:
            deltas[entry.guid] = (
                _keys(entry.added.get(member, [])),
                _keys(entry.removed.get(member, [])),
            )
    stored_dns = {link.guid: link.dn for link in links}
    stored_dns.update((guid, record.dn) for guid, record in records.items())
    deleted = set(batch.deleted)
    current = {entry.guid: entry.dn for entry in batch.entries}
    return GroupUpdate(
        records=records,
        entries={},
        deleted=deleted & records.keys(),
        gone=deleted & records.keys(),
        moved=moved_keys(stored_dns, current, deleted),
        to_read=to_read,
        deltas=deltas,
    )


def _dirsync_filter(config: MappingConfig) -> str:
    """Every object of the user, group and membership scopes, and every user: a user that
    leaves the user filter (disabled, say) must still be reported."""
    parts = [get_config().USER_FILTER, membership_scope(config).filterstr, group_scope().filterstr]
    wrapped = [text if text.startswith("(") else f"({text})" for text in map(str.strip, parts)]
    return "(|" + "".join(dict.fromkeys([*wrapped, "(objectClass=user)"])) + ")"


def _dirsync_attributes(config: MappingConfig) -> list[str]:
    """What the users and groups are read with, ``name`` (renames and moves) and
    ``objectClass`` (what a new object is); objectGUID comes with every entry anyway."""
    names = [*user_attribute_list(config), *group_attribute_list(config), "name", "objectclass"]
    return [name for name in dict.fromkeys(names) if name != config.identity_attribute]


def _is_group(entry: DirSyncEntry) -> bool:
    return any(value.lower() == b"group" for value in entry.changed.get("objectclass", []))


def _keys(values: list[bytes]) -> list[str]:
    return [normalize_dn(value.decode("utf-8", "replace")) for value in values]
