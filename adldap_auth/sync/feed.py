"""Incremental runs from the server's change feed (LDAP_SYNC_CHANGE_TRACKING = "contentsync" on
OpenLDAP, "dirsync" on Active Directory: :mod:`adldap_auth.sync.dirsync_feed`).

Instead of a changed-since filter, a sweep of every user's id and a read of every group, an
incremental run asks the server what changed since the cookies of the last run (RFC 4533,
:mod:`adldap_auth.directory.contentsync`, or AD's DirSync):

- users: the changed entries are written as usual; deleted ones (or moved or filtered out of
  scope) are the run's missing users; every other linked user is still present, under the
  member key of its stored DN and its stored primary group;
- groups: the stored nesting (:class:`~adldap_auth.models.GroupNode`, member keys included)
  with the changed groups replaced and the deleted ones dropped is the run's group graph, and
  the changed and deleted groups are what the membership recheck starts from.

The feed is read before anything is written, so a refused cookie turns the run into a full
one at no cost. A full run takes new cookies when it starts: changes made while it runs are
read again by the next incremental run, never lost.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..conf import SyncConfig
from ..directory import Entry
from ..directory.contentsync import (
    ContentSyncUnavailable,
    CookieRefused,
    read_changes,
)
from ..directory.dirsync import DirSyncCookieRejected, DirSyncUnavailable
from ..directory.readers import Scope, and_filter, read_entries
from ..groups import GroupGraph
from ..mapping import GroupRecord, MappingConfig, SkipEntry, entry_guid, map_group
from ..mapping.attribute_lists import group_attribute_list, user_attribute_list
from ..mapping.values import normalize_dn
from ..membership import GroupScopeRule, membership_scope
from ..models import DirectoryUser
from ..nesting import stored_group_records
from ..resync import identity_filter
from ..tracking import CONTENT_SYNC, DIRSYNC, FEED_SCOPES
from .results import FULL, INCREMENTAL

logger = logging.getLogger("adldap_auth.sync")

#: Ids per search when entries are read again by id.
ID_CHUNK = 50
#: What makes a feed's incremental run a full one: the server cannot continue from the cookie.
REFUSED = (CookieRefused, ContentSyncUnavailable, DirSyncCookieRejected)


@dataclass
class FeedChanges:
    """What the feed said since the last run, read before any write."""

    users: list = field(default_factory=list)  # changed user entries
    deleted_users: frozenset[str] = frozenset()
    #: every linked user the feed did not report gone: guid -> (member key, primary group SID)
    present_users: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    groups: GroupGraph | None = None  # the stored nesting with the changes applied
    changed_groups: set[str] = field(default_factory=set)  # changed and deleted group guids
    #: the server reported nothing since the cookies: the run has nothing to write
    nothing: bool = False


@dataclass
class GroupUpdate:
    """What a feed says of the stored groups, for :meth:`FeedSteps._updated_graph`."""

    records: dict[str, GroupRecord]  # the stored nesting, by guid
    entries: dict[str, Entry]  # changed groups, read whole
    deleted: set[str]  # groups gone from the membership scope
    gone: set[str]  # of those, the ones whose DN no longer names anything (deleted entries)
    moved: dict[str, str | None]  # old member key -> new one (None: deleted) of changed entries
    to_read: list[str] = field(default_factory=list)  # groups to read whole now, by id
    #: member values added and removed (normalized DNs) of groups whose other values are as stored
    deltas: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)


@dataclass(frozen=True)
class UserLink:
    guid: str
    dn: str
    removed_missing: bool  # removed as gone from the directory
    primary_group_sid: str


class FeedSteps:
    """The change-feed half of a run (a mixin of :class:`~adldap_auth.sync.engine.SyncEngine`,
    whose state it uses: ``session``, ``config``, ``tracking``, ``mode``, ``report``,
    ``unsettled``: memberships a dead run left half written make every feed read whole)."""

    feed: FeedChanges | None = None
    feed_cookies: dict | None = None

    def _follow_feed(self, config: MappingConfig, marker) -> None:
        """With a change feed: read the changes of an incremental run, or take the cookies of
        a full one. A refused cookie makes the run full; DirSync refused to the account makes
        it track changes as "auto" does, with a warning."""
        kind = self.tracking.kind
        if kind not in (CONTENT_SYNC, DIRSYNC):
            return
        read, start = (
            (self._read_feed, self._contentsync_cookies)
            if kind == CONTENT_SYNC
            else (self._read_dirsync, self._dirsync_cookies)
        )
        try:
            if self.mode == INCREMENTAL:
                try:
                    self.feed = read(config, marker.feed_cookies)
                    return
                except REFUSED as error:
                    logger.warning("the change feed cannot continue: %s; this run is full", error)
                    self.mode, self.marker = FULL, None
                    self.mode_reason = f"the server refused the change-feed cookie ({error})"
            self.feed_cookies = start(config)
        except DirSyncUnavailable as error:
            self.report.warning(
                "DirSync cannot be used, changes are tracked by uSNChanged: %s", error
            )
            self.feed, self.feed_cookies = None, None
            self._choose_mode(config, "auto")
            self.mode_reason += " (tracked by uSNChanged: DirSync cannot be used)"

    # -- contentsync --------------------------------------------------------------------------

    def _contentsync_cookies(self, config: MappingConfig) -> dict[str, str]:
        return {
            scope: read_changes(
                self.session, *self._feed_scope(scope, config), ["1.1"], None
            ).cookie
            for scope in FEED_SCOPES
        }

    def _feed_scope(self, scope: str, config: MappingConfig) -> tuple[str, str]:
        return feed_scope(scope, self.config, config)

    def _read_feed(self, config: MappingConfig, cookies: dict) -> FeedChanges:
        base, filterstr = self._feed_scope("users", config)
        users = read_changes(
            self.session, base, filterstr, user_attribute_list(config), cookies["users"]
        )
        groups = None
        if self.config.GROUP:
            base, filterstr = self._feed_scope("groups", config)
            attributes = group_attribute_list(config)
            groups = read_changes(self.session, base, filterstr, attributes, cookies["groups"])
        reread = reread_list(cookies)
        new_cookies = {
            "users": users.cookie,
            "groups": groups.cookie if groups is not None else cookies["groups"],
            "reread": [],
        }
        if new_cookies["users"] is None or new_cookies["groups"] is None:
            raise CookieRefused(f"{self.session.uri}: the server sent no cookie")
        if users.empty and (groups is None or groups.empty) and not reread and not self.unsettled:
            # Nothing to look at: neither the links nor the stored nesting are read.
            self.feed_cookies = new_cookies
            return FeedChanges(nothing=True)
        links = user_links()
        stored_dns = {link.guid: link.dn for link in links}
        deleted = users.deletions(stored_dns)
        changes = FeedChanges(
            users=list(users.changed.values()),
            deleted_users=deleted,
            present_users=present_users(links, deleted),
        )
        if groups is not None:
            renamed = {
                guid: entry.dn
                for entry in changes.users
                if (guid := entry_guid(entry, config.identity_attribute))
            }
            records = {record.guid: record for record in stored_group_records()}
            gone = set(groups.deletions(records.keys()))
            update = GroupUpdate(
                records=records,
                entries=by_identity(groups.changed.values(), config),
                deleted=gone,
                gone=gone,
                moved=moved_keys(stored_dns, renamed, changes.deleted_users),
                to_read=reread,
            )
            changes.groups, changes.changed_groups, holders = self._updated_graph(config, update)
            new_cookies["reread"] = holders
        return self._feed_read(changes, new_cookies)

    def _feed_read(self, changes: FeedChanges, cookies: dict) -> FeedChanges:
        """Keep the next cookies and count what the feed said."""
        self.feed_cookies = cookies
        self.report.counts["feed_users_changed"] = len(changes.users)
        self.report.counts["feed_users_deleted"] = len(changes.deleted_users)
        self.report.counts["groups_changed"] = len(changes.changed_groups)
        return changes

    # -- the group graph ----------------------------------------------------------------------

    def _updated_graph(
        self, config: MappingConfig, update: GroupUpdate
    ) -> tuple[GroupGraph, set[str], list[str]]:
        """The stored nesting, member keys included, with the feed's groups applied; also the
        changed guids and the groups to read again next run.

        A renamed or deleted entry changes the member values of the groups that held it, yet
        the server does not report those groups (OpenLDAP's refint and memberof keep their
        entryCSN, and may apply the change after the rename's response; AD's linked values do
        not show in DirSync). So its old key (``moved``: old DN -> new DN, or None when gone) is
        replaced in every group that holds it, as referential integrity does, and those groups
        are read again by the next run, which corrects a directory that keeps dangling DNs.
        Member deltas apply after that: they name the members by their DNs of now."""
        records, moved = update.records, update.moved
        wanted = [g for g in update.to_read if g not in update.entries and g not in update.deleted]
        entries = {**update.entries, **self._read_groups_by_id(config, wanted)}
        deleted = update.deleted | {g for g in wanted if g in records and g not in entries}
        for guid, entry in entries.items():  # a renamed group's parents hold its old DN
            old = records.get(guid)
            if old is not None and normalize_dn(old.dn) != normalize_dn(entry.dn):
                moved[normalize_dn(old.dn)] = normalize_dn(entry.dn)
        for guid in update.gone & records.keys():
            moved.setdefault(normalize_dn(records[guid].dn), None)
        changed = set(deleted) | self._map_groups(config, records, entries)
        for guid in deleted:
            records.pop(guid, None)
        holders = sorted(g for g, r in records.items() if moved.keys() & set(r.member_keys))
        for guid in holders:
            records[guid].member_keys = _moved_keys(records[guid].member_keys, moved)
        for guid, (added, removed) in update.deltas.items():
            if guid in records and guid not in entries:
                gone_keys = set(removed)
                kept = [key for key in records[guid].member_keys if key not in gone_keys]
                records[guid].member_keys = list(dict.fromkeys([*kept, *added]))
                changed.add(guid)
        changed.update(holders)
        self.report.counts["feed_groups_reread"] = len(wanted)
        self.report.counts["groups_seen"] = sum(1 for r in records.values() if r.in_scope)
        return GroupGraph(records.values()), changed, holders

    def _map_groups(
        self, config: MappingConfig, records: dict[str, GroupRecord], entries: dict[str, Entry]
    ) -> set[str]:
        """Map the changed groups into ``records``; return their guids."""
        changed: set[str] = set()
        in_scope = GroupScopeRule(self.session, config)
        for entry in entries.values():
            guid = entry_guid(entry, config.identity_attribute)
            if guid is None:
                continue
            changed.add(guid)
            try:
                record = map_group(entry, config)
            except SkipEntry as skip:
                self.report.problem("group %s skipped: %s", entry.dn, skip)
                self.report.counts["groups_skipped"] += 1
                records.pop(guid, None)
                continue
            record.in_scope = in_scope(guid, entry.dn)
            if not record.in_scope:
                in_scope.confirm_base()
            records[guid] = record
        return changed

    def _read_groups_by_id(self, config: MappingConfig, guids: list[str]) -> dict[str, Entry]:
        """The membership scope's groups with these ids, read now (a search per chunk)."""
        return self._read_by_id(
            config,
            membership_scope(config),
            group_attribute_list(config),
            guids,
            ranged=[config.member_attribute],
        )

    def _read_by_id(
        self,
        config: MappingConfig,
        scope: Scope,
        attributes: list[str],
        guids: list[str],
        ranged: Iterable[str] = (),
    ) -> dict[str, Entry]:
        """The entries of ``scope`` with these ids, read now (a search per ID_CHUNK ids)."""
        identity = config.identity_attribute
        found: dict[str, Entry] = {}
        for start in range(0, len(guids), ID_CHUNK):
            ids = identity_filter(identity, guids[start : start + ID_CHUNK])
            chunk = Scope(scope.base, and_filter(scope.filterstr, ids))
            for entry in read_entries(self.session, chunk, attributes, ranged=ranged):
                if guid := entry_guid(entry, identity):
                    found[guid] = entry
        return found


def by_identity(entries: Iterable[Entry], config: MappingConfig) -> dict[str, Entry]:
    """Entries by their identity attribute's value, the key of the stored records (a feed
    names entries by its own ids: 389-DS's syncUUID spells nsUniqueId another way)."""
    return {
        guid: entry for entry in entries if (guid := entry_guid(entry, config.identity_attribute))
    }


def feed_scope(scope: str, settings: SyncConfig, config: MappingConfig) -> tuple[str, str]:
    """(base, filter) of a contentsync feed scope: "users" (the user scope) or "groups" (the
    membership scope, every group whose nesting counts)."""
    if scope == "users":
        return settings.USER_SEARCH or "", settings.USER_FILTER
    members = membership_scope(config)
    return members.base, members.filterstr


def user_links() -> list[UserLink]:
    """Every identity link, as much as a feed run needs of it."""
    rows = DirectoryUser.objects.values_list(
        "guid", "dn", "removed_at", "removal_reason", "primary_group_sid"
    )
    return [
        UserLink(
            guid,
            dn,
            removed_at is not None and reason == DirectoryUser.REASON_MISSING,
            primary,
        )
        for guid, dn, removed_at, reason, primary in rows
    ]


def present_users(
    links: list[UserLink], deleted: Iterable[str]
) -> dict[str, tuple[str, str | None]]:
    """Every linked user the feed did not report gone, by guid: (member key, primary group
    SID as last read). Users removed as missing stay out (they come back as changed entries)."""
    gone = set(deleted)
    return {
        link.guid: (normalize_dn(link.dn), link.primary_group_sid or None)
        for link in links
        if link.guid not in gone and not link.removed_missing
    }


def moved_keys(
    stored_dns: dict[str, str], current_dns: dict[str, str], gone: Iterable[str]
) -> dict[str, str | None]:
    """Old member key -> new one of the stored entries now at another DN, None for those
    gone."""
    moved: dict[str, str | None] = {
        normalize_dn(stored_dns[guid]): None for guid in gone if guid in stored_dns
    }
    for guid, dn in current_dns.items():
        if guid in stored_dns and normalize_dn(dn) != normalize_dn(stored_dns[guid]):
            moved[normalize_dn(stored_dns[guid])] = normalize_dn(dn)
    return moved


def reread_list(cookies: dict) -> list[str]:
    """The groups the last run asked to read again (holders of renamed or deleted entries)."""
    return [guid for guid in cookies.get("reread", ()) if isinstance(guid, str)]


def _moved_keys(keys: list[str], moved: dict[str, str | None]) -> list[str]:
    """``keys`` with the moved ones replaced (or dropped), in order, without duplicates."""
    result = (moved.get(key, key) for key in keys)
    return list(dict.fromkeys(key for key in result if key is not None))
