"""Which Django groups each synced user belongs to, from the group graph (or the seed's
per-user filter), creating groups outside the group scope when the settings ask."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ..directory.connection import DirectorySession, connection_config
from ..directory.readers import Scope, and_filter, member_filter, read_entries
from ..groups import GroupGraph
from ..mapping import (
    MappingConfig,
    UserRecord,
    entry_guid,
)
from ..membership import membership_scope
from ..store import MembershipTable, Store

if TYPE_CHECKING:
    from .engine import SyncEngine


def user_ids_holding(store: Store, group_ids: set[int]) -> list[int]:
    """Users holding a Django membership of any of these groups."""
    if not group_ids:
        return []
    table = MembershipTable.of(store.User)
    return list(
        table.model.objects.filter(**{f"{table.group}__in": list(group_ids)})
        .values_list(table.user, flat=True)
        .distinct()
    )


class MembershipPlanner:
    """Each user's wanted set of Django group ids: the graph's closure (or the seed's filter),
    restricted to the groups Django manages.

    A group outside the group scope that a user turns out to be in is created here, with
    ``LDAP_SYNC_GROUP_MEMBERSHIP_CREATE_IF_NOT_EXISTS``, once per run, a batch of users at a
    time (``created`` lists them, ``managed`` grows with them).
    """

    def __init__(
        self,
        engine: SyncEngine,
        config: MappingConfig,
        graph: GroupGraph,
        group_ids: dict[str, int],
        default_ids: set[int],
        store: Store,
        managed: set[int],
        create_outside: bool,
    ) -> None:
        self.engine = engine
        self.config = config
        self.graph = graph
        self.group_ids = group_ids
        self.default_ids = default_ids
        self.store = store
        self.managed = managed
        self.create_outside = create_outside
        self.legacy = engine.config.GROUP_MEMBERSHIP_MODE == "filter"
        self.present: set[str] = set(group_ids)  # guids of the groups managed in this run
        self.created: set[str] = set()
        self._unwritable: set[str] = set()
        self._lookup_session: DirectorySession | None = None

    def desired(self, outcomes: Iterable[Any]) -> dict[int, set[int]]:
        """Wanted group ids of each user of a written batch (by Django user id)."""
        guids = {
            outcome.user.pk: self.group_guids(outcome.record)
            for outcome in outcomes
            if outcome.user is not None and outcome.user.pk is not None
        }
        return self._ids(guids)

    def ids_by_key(self, users: dict[int, tuple[str, str | None]]) -> dict[int, set[int]]:
        """Graph mode: wanted group ids of users known by (member key, primary group SID)."""
        return self._ids(
            {user_id: self.graph.groups_for(key, sid) for user_id, (key, sid) in users.items()}
        )

    def group_guids(self, record: UserRecord) -> Iterable[str]:
        if not self.legacy:
            return self.graph.groups_for(record.member_key, record.primary_group_sid)
        return self._legacy_group_guids(record)

    def _ids(self, guids_by_user: dict[int, Iterable[str]]) -> dict[int, set[int]]:
        manageable = {
            user_id: self.graph.manageable(guids, self.create_outside)
            for user_id, guids in guids_by_user.items()
        }
        self._create({g for guids in manageable.values() for g in guids})
        ids = self.group_ids
        return {
            user_id: {ids[g] for g in guids if g in ids} | self.default_ids
            for user_id, guids in manageable.items()
        }

    def _create(self, guids: set[str]) -> None:
        """Sync the groups of ``guids`` that this run has not synced yet."""
        missing = [g for g in guids if g not in self.group_ids and g not in self._unwritable]
        if not missing:
            return
        written = self.store.sync_groups(self.graph.by_guid(g) for g in sorted(missing))
        self.group_ids.update(written)
        self.managed.update(written.values())
        self.present.update(written)
        self.created.update(written)
        self._unwritable.update(g for g in missing if g not in written)

    def _lookups(self) -> DirectorySession:
        """A second connection to the same server: the per-user searches of the seed's mode
        run while the paged user search is open, and a server may not interleave them."""
        if self._lookup_session is None:
            config = dataclasses.replace(connection_config(), uris=(self.engine.session.uri,))
            self._lookup_session = DirectorySession.open(config)
            self.engine.extra_sessions.append(self._lookup_session)
        return self._lookup_session

    def _legacy_group_guids(self, record: UserRecord) -> set[str]:
        """The seed's way: one search per user with LDAP_SYNC_GROUP_MEMBERSHIP_FILTER."""
        filterstr = member_filter(self.engine.config.GROUP_MEMBERSHIP_FILTER, record.dn)
        members = membership_scope(self.config)
        scope = Scope(members.base, and_filter(members.filterstr, filterstr))
        guids = set()
        for entry in read_entries(self._lookups(), scope, [self.config.identity_attribute]):
            guid = entry_guid(entry, self.config.identity_attribute)
            if guid:
                guids.add(guid)
        # Nesting counts whatever the filter (IN_CHAIN already gives it on AD), as at login.
        return self.graph.groups_above(guids, record.primary_group_sid)


def _chunks(items: Iterable[UserRecord], size: int) -> Iterator[list[UserRecord]]:
    batch: list[UserRecord] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
