"""A run's users: streamed a batch at a time, written with their memberships, swept for removals."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from ..directory.readers import Scope, read_entries
from ..groups import StoredNesting, changed_nesting
from ..mapping import (
    SkipEntry,
    UserRecord,
    entry_guid,
    map_user,
    member_key_of,
    primary_group_sid_of,
    user_attribute_list,
    username_attribute,
)
from ..models import DirectoryGroup, DirectoryUser, GroupNode
from ..nesting import (
    load_stored_graph,
)
from ..store import Store
from ..tracking import changed_filter
from .planner import MembershipPlanner, _chunks, user_ids_holding
from .results import INCREMENTAL

logger = logging.getLogger("adldap_auth.sync")


class UserSteps:
    """The user half of a run: read, write and sweep users and their memberships (a mixin of
    :class:`~adldap_auth.sync.engine.SyncEngine`, whose state it uses)."""

    # -- users --------------------------------------------------------------------------------

    def _sync_users(self, config, store, planner) -> dict[str, tuple[str, str | None]]:
        """Write users (all of them, or those changed) and their memberships, a batch at a time.

        Returns every user in scope: guid -> (member key, primary group SID). A full run gets it
        from the users it reads; an incremental run from an id-only sweep of the whole scope,
        or with the change feed from the stored links less the users the feed says are gone.
        """
        s = self.config
        present: dict[str, tuple[str, str | None]] = {}
        self.synced_user_guids: set[str] = set()
        scope = Scope(s.USER_SEARCH, s.USER_FILTER)
        if self.mode == INCREMENTAL and self.feed is None:
            scope = Scope(
                s.USER_SEARCH,
                changed_filter(
                    self.tracking, self.marker, s.USER_FILTER, s.USER_FILTER_INCREMENTAL, s
                ),
            )
        attributes = [*user_attribute_list(config), self.tracking.attribute]
        if self.feed is not None:  # the change feed: its entries; everyone else is present
            present.update(self.feed.present_users)
            entries = iter(self.feed.users)
        else:
            entries = read_entries(self.session, scope, attributes)
        records = self._read_users(config, entries, present)
        for batch in _chunks(records, s.WRITE_BATCH_SIZE):
            if self.heartbeat:  # before each batch's writes: a lost lock stops the run here
                self.heartbeat()
            self._report_record_problems(batch)
            outcomes = store.sync_users(batch)
            self.report.counts["users_seen"] += len(batch)
            if self.mode == INCREMENTAL:  # only its recheck asks (a million guids in a full run)
                self.synced_user_guids.update(r.guid for r in batch)
            if s.GROUP_MEMBERSHIP:
                store.sync_memberships(planner.desired(outcomes), planner.managed)
            self._remove_disabled(store, batch)
        if self.mode == INCREMENTAL and self.feed is None:
            present = self._sweep_users(config)
        self._sync_deferred_users(store, planner, present)
        return present

    def _sync_deferred_users(
        self, store: Store, planner: MembershipPlanner, present: dict[str, Any]
    ) -> None:
        """Re-created accounts (a username whose Django user is linked to another entry): only
        now that the whole scope was read does the run know whether the old entry is gone,
        so that the user moves to the new one (before removals, which would else remove it)."""
        outcomes = store.sync_deferred_users(present.keys())
        if not outcomes:
            return
        if self.config.GROUP_MEMBERSHIP:
            store.sync_memberships(planner.desired(outcomes), planner.managed)
        self._remove_disabled(store, [outcome.record for outcome in outcomes])

    def _read_users(self, config, entries, present) -> Iterator[UserRecord]:
        for entry in entries:
            self.high_water.see(entry.first(self.tracking.attribute))
            guid = entry_guid(entry, config.identity_attribute)
            if guid:
                # Even a malformed entry is present: its Django user must never be removed.
                present[guid] = (member_key_of(entry, config), primary_group_sid_of(entry))
            try:
                record = map_user(entry, config)
            except SkipEntry as skip:
                if skip.exempt:
                    logger.debug("user %s skipped: %s", entry.dn, skip)
                    self.report.counts["users_exempt"] += 1
                else:
                    self.report.problem("user %s skipped: %s", entry.dn, skip)
                    self.report.counts["users_skipped"] += 1
            else:
                if record.guid == guid:
                    # One string for the present guid and the one the store keeps (claimed
                    # usernames): two per user of a million-user run otherwise.
                    record.guid = guid
                yield record
            self._progress("users", len(present))

    def _sweep_users(self, config) -> dict[str, tuple[str, str | None]]:
        """Id, DN and primary group of every user in scope: finds deletions and moves."""
        s = self.config
        present: dict[str, tuple[str, str | None]] = {}
        attributes = [
            config.identity_attribute,
            self.tracking.attribute,
            "objectSid",
            "primaryGroupID",
        ]
        if config.member_attribute == "memberuid":
            attributes.append(username_attribute(config))
        for entry in read_entries(self.session, Scope(s.USER_SEARCH, s.USER_FILTER), attributes):
            self.high_water.see(entry.first(self.tracking.attribute))
            guid = entry_guid(entry, config.identity_attribute)
            if guid:
                present[guid] = (member_key_of(entry, config), primary_group_sid_of(entry))
            self._progress("sweep", len(present))
        self.report.counts["users_swept"] = len(present)
        return present

    def _resync_affected_memberships(
        self,
        store: Store,
        planner: MembershipPlanner,
        present: dict[str, tuple[str, str | None]],
        changed_groups: set[str],
        before: dict[str, StoredNesting],
    ) -> None:
        """Incremental: memberships of users whose groups changed though their entry did not.

        Rechecked (see :func:`~adldap_auth.groups.changed_nesting`): users added to or removed
        from a changed group; users at any depth below a group whose own place moved, and users
        whose primary group is such a group or below one; users holding a managed group that
        was above a group gone from the membership scope (in the stored nesting), or a managed
        group that this run no longer manages.
        """
        graph = planner.graph
        moved, affected_keys, _new = changed_nesting(graph, before, changed_groups)
        affected_keys |= graph.members_affected_by(moved)
        primary_hit = {
            sid
            for sid in {pg for _key, pg in present.values() if pg}
            if (found := graph.find_by_sid(sid)) is not None and graph.ancestors(found.guid) & moved
        }
        # Changes spread over most groups affect most users: then every user is rechecked,
        # which ends in the same state (a recheck of an unaffected user changes nothing) without
        # reading who holds the groups (millions of rows at 100,000 users).
        # After a run that died unsettled (see _run_body), every user is rechecked too.
        recheck_all = self.unsettled or len(affected_keys) >= len(present) // 2
        if self.unsettled:
            logger.info("a run died after writing memberships: every user's are rechecked")
            self.report.counts["memberships_recheck_all"] = 1
        held = set() if recheck_all else set(user_ids_holding(store, self._lost_group_ids(planner)))
        if not (recheck_all or affected_keys or primary_hit or held):
            return
        # Disabled users are still in scope: a full run keeps their memberships current too.
        links = dict(DirectoryUser.objects.values_list("guid", "user_id"))
        wanted: dict[int, tuple[str, str | None]] = {}
        for guid, (member_key, primary_sid) in present.items():
            user_id = links.get(guid)
            if user_id is None or guid in self.synced_user_guids:
                continue
            if (
                recheck_all
                or member_key in affected_keys
                or primary_sid in primary_hit
                or user_id in held
            ):
                wanted[user_id] = (member_key, primary_sid)
        self.report.counts["memberships_rechecked_users"] = len(wanted)
        items = list(wanted.items())
        batch_size = self.config.WRITE_BATCH_SIZE
        for start in range(0, len(items), batch_size):
            if self.heartbeat:
                self.heartbeat()
            batch = dict(items[start : start + batch_size])
            store.sync_memberships(planner.ids_by_key(batch), planner.managed)

    @staticmethod
    def _lost_group_ids(planner: MembershipPlanner) -> set[int]:
        """Managed groups whose holders may lose them without any user entry changing: those
        this run no longer manages, and those that were above a group now gone from the
        membership scope (its stored nesting tells which)."""
        links = DirectoryGroup.objects.values_list("guid", "group_id")
        by_guid = dict(links)
        lost = {group_id for guid, group_id in by_guid.items() if guid not in planner.present}
        stored = set(GroupNode.objects.values_list("guid", flat=True))
        gone = stored - {r.guid for r in planner.graph.records()}
        if gone:
            old = load_stored_graph()
            above = set().union(*(old.ancestors(guid) for guid in gone))
            lost |= {by_guid[guid] for guid in above if guid in by_guid}
        return lost

    def _report_record_problems(self, batch: list[UserRecord]) -> None:
        for record in batch:
            for problem in record.problems:
                self.report.warning("user %s: %s", record.dn, problem)
