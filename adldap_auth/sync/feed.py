"""Incremental runs from the server's change feed (LDAP_SYNC_CHANGE_TRACKING = "contentsync").

Instead of a changed-since filter, a sweep of every user's id and a read of every group, an
incremental run asks the server what changed in the user scope and in the membership scope
since the cookies of the last run (RFC 4533, :mod:`adldap_auth.directory.contentsync`):

- users: the changed entries are written as usual; deleted ones (or moved or filtered out of
  scope) are the run's missing users; every other linked user is still present, under the
  member key of its stored DN;
- groups: the stored nesting (:class:`~adldap_auth.models.GroupNode`, member keys included)
  with the changed groups replaced and the deleted ones dropped is the run's group graph, and
  the changed and deleted groups are what the membership recheck starts from.

Both feeds are read before anything is written, so a refused cookie turns the run into a full
one at no cost. A full run takes new cookies when it starts: changes made while it runs are
read again by the next incremental run, never lost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..conf import SyncConfig
from ..directory import Entry
from ..directory.contentsync import ContentSyncUnavailable, CookieRefused, read_changes
from ..directory.readers import Scope, and_filter, read_entries
from ..groups import GroupGraph
from ..mapping import MappingConfig, SkipEntry, entry_guid, map_group
from ..mapping.attribute_lists import group_attribute_list, user_attribute_list
from ..mapping.values import normalize_dn
from ..membership import group_scope_rule, membership_scope
from ..models import DirectoryUser
from ..nesting import stored_group_records
from ..resync import identity_filter
from ..tracking import CONTENT_SYNC, FEED_SCOPES
from .results import FULL, INCREMENTAL

logger = logging.getLogger("adldap_auth.sync")

#: Ids per search when groups are read again by id.
ID_CHUNK = 50


@dataclass
class FeedChanges:
    """What the two feeds said since the last run, read before any write."""

    users: list = field(default_factory=list)  # changed user entries
    deleted_users: frozenset[str] = frozenset()
    #: every linked user the feed did not report gone: guid -> (member key, primary group SID)
    present_users: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    groups: GroupGraph | None = None  # the stored nesting with the changes applied
    changed_groups: set[str] = field(default_factory=set)  # changed and deleted group guids
    #: the server reported nothing since the cookies: the run has nothing to write
    nothing: bool = False


class FeedSteps:
    """The change-feed half of a run (a mixin of :class:`~adldap_auth.sync.engine.SyncEngine`,
    whose state it uses: ``session``, ``config``, ``tracking``, ``mode``, ``report``)."""

    feed: FeedChanges | None = None
    feed_cookies: dict[str, str] | None = None

    def _follow_feed(self, config: MappingConfig, marker) -> None:
        """With "contentsync" tracking: read the changes of an incremental run, or take the
        cookies of a full one. A refused cookie makes the run full."""
        if self.tracking.kind != CONTENT_SYNC:
            return
        if self.mode == INCREMENTAL:
            try:
                self.feed = self._read_feed(config, marker.feed_cookies)
                return
            except (CookieRefused, ContentSyncUnavailable) as error:
                logger.warning("the change feed cannot continue: %s; this run is full", error)
                self.mode, self.marker = FULL, None
                self.mode_reason = f"the server refused the change-feed cookie ({error})"
        self.feed_cookies = {
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
        reread = [g for g in cookies.get("reread", ()) if isinstance(g, str)]
        new_cookies = {
            "users": users.cookie,
            "groups": groups.cookie if groups is not None else cookies["groups"],
            "reread": [],
        }
        if new_cookies["users"] is None or new_cookies["groups"] is None:
            raise CookieRefused(f"{self.session.uri}: the server sent no cookie")
        self.feed_cookies = new_cookies
        if users.empty and (groups is None or groups.empty) and not reread:
            # Nothing to look at: neither the links nor the stored nesting are read.
            return FeedChanges(nothing=True)
        links = list(
            DirectoryUser.objects.values_list("guid", "dn", "removed_at", "removal_reason")
        )
        stored_dns = {guid: dn for guid, dn, _removed, _reason in links}
        deleted = users.deletions(stored_dns)
        changes = FeedChanges(
            users=list(users.changed.values()),
            deleted_users=deleted,
            present_users=_present_users(links, deleted),
        )
        if groups is not None:
            moved = _moved_user_keys(changes, stored_dns, config)
            graph, changed, holders = self._updated_graph(config, groups, moved, reread)
            changes.groups, changes.changed_groups = graph, changed
            new_cookies["reread"] = holders
        self.report.counts["feed_users_changed"] = len(changes.users)
        self.report.counts["feed_users_deleted"] = len(changes.deleted_users)
        self.report.counts["groups_changed"] = len(changes.changed_groups)
        return changes

    def _updated_graph(
        self, config: MappingConfig, batch, moved: dict[str, str | None], reread: list[str]
    ) -> tuple[GroupGraph, set[str], list[str]]:
        """The stored nesting, member keys included, with the feed's groups applied; also the
        changed guids and the groups to read again next run.

        A renamed or deleted entry changes the member values of the groups that held it, yet
        the server does not report those groups (OpenLDAP's refint and memberof keep their
        entryCSN, and may apply the change after the rename's response; AD's linked values do
        not show in DirSync). So its old key (``moved``: old DN -> new DN, or None when gone) is
        replaced in every group that holds it, as referential integrity does, and those groups
        are read again by the next run, which corrects a directory that keeps dangling DNs."""
        records = {record.guid: record for record in stored_group_records()}
        deleted = batch.deletions(records.keys())
        entries = dict(batch.changed)
        again = [g for g in reread if g in records and g not in entries and g not in deleted]
        entries.update(self._read_groups_by_id(config, again))
        for guid, entry in entries.items():  # a renamed group's parents hold its old DN
            old = records.get(guid)
            if old is not None and normalize_dn(old.dn) != normalize_dn(entry.dn):
                moved[normalize_dn(old.dn)] = normalize_dn(entry.dn)
        moved.update((normalize_dn(records[guid].dn), None) for guid in deleted)
        changed: set[str] = set(deleted)
        in_scope = group_scope_rule(self.session, config)
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
            records[guid] = record
        for guid in deleted:
            records.pop(guid, None)
        holders = sorted(g for g, r in records.items() if moved.keys() & set(r.member_keys))
        for guid in holders:
            records[guid].member_keys = _moved_keys(records[guid].member_keys, moved)
        changed.update(holders)
        self.report.counts["feed_groups_reread"] = len(again)
        self.report.counts["groups_seen"] = sum(1 for r in records.values() if r.in_scope)
        return GroupGraph(records.values()), changed, holders

    def _read_groups_by_id(self, config: MappingConfig, guids: list[str]) -> dict[str, Entry]:
        """The membership scope's groups with these ids, read now (a search per chunk)."""
        members = membership_scope(config)
        identity = config.identity_attribute
        attributes = group_attribute_list(config)
        found: dict[str, Entry] = {}
        for start in range(0, len(guids), ID_CHUNK):
            ids = identity_filter(identity, guids[start : start + ID_CHUNK])
            scope = Scope(members.base, and_filter(members.filterstr, ids))
            ranged = [config.member_attribute]
            for entry in read_entries(self.session, scope, attributes, ranged=ranged):
                if guid := entry_guid(entry, identity):
                    found[guid] = entry
        return found


def feed_scope(scope: str, settings: SyncConfig, config: MappingConfig) -> tuple[str, str]:
    """(base, filter) of a feed scope: "users" (the user scope) or "groups" (the membership
    scope, every group whose nesting counts)."""
    if scope == "users":
        return settings.USER_SEARCH or "", settings.USER_FILTER
    members = membership_scope(config)
    return members.base, members.filterstr


def _present_users(links: list[tuple], deleted: frozenset[str]) -> dict[str, tuple[str, None]]:
    """Every linked user the feed did not report gone, by guid: (member key, primary group
    SID). Users removed as missing stay out (they come back as changed entries)."""
    return {
        guid: (normalize_dn(dn), None)
        for guid, dn, removed_at, reason in links
        if guid not in deleted
        and not (removed_at is not None and reason == DirectoryUser.REASON_MISSING)
    }


def _moved_user_keys(
    changes: FeedChanges, stored_dns: dict[str, str], config: MappingConfig
) -> dict[str, str | None]:
    """Old member key -> new one of the users the feed reports renamed, None for deleted."""
    moved: dict[str, str | None] = {
        normalize_dn(stored_dns[g]): None for g in changes.deleted_users
    }
    for entry in changes.users:
        guid = entry_guid(entry, config.identity_attribute)
        if guid in stored_dns and normalize_dn(entry.dn) != normalize_dn(stored_dns[guid]):
            moved[normalize_dn(stored_dns[guid])] = normalize_dn(entry.dn)
    return moved


def _moved_keys(keys: list[str], moved: dict[str, str | None]) -> list[str]:
    """``keys`` with the moved ones replaced (or dropped), in order, without duplicates."""
    result = (moved.get(key, key) for key in keys)
    return list(dict.fromkeys(key for key in result if key is not None))
