"""The group graph of one run: recursive memberships computed locally, cycles included.

Groups are read once per run (with their member values) and mapped to
:class:`~adldap_auth.mapping.GroupRecord`; :class:`GroupGraph` indexes them and answers "which
groups is this member in, directly or through nesting" without another LDAP search.

Edges: a member key equal to ``normalize_dn`` of a group in the graph makes that group a child
(nested group); any other member key is a *user key*, compared with
:attr:`~adldap_auth.mapping.UserRecord.member_key`. A member DN that is not a group of the graph
(a group outside the group scope, a contact, a deleted object) is therefore kept as a user key
that no user matches: it is harmless, and its own members are not followed.

The closure: strongly connected components (iterative Tarjan, so any nesting depth works) make
cycles harmless: every group of a cycle is an ancestor of every other. Ancestor sets are then
computed once per component over the condensation, in topological order, and shared by all
the groups of a component. :meth:`GroupGraph.groups_for` caches its answer per set of direct
groups (and primary group) when two users or more have that set, which is common in real
directories; a user with a set of their own gets a fresh answer that nothing retains.

Memory is the sum of the ancestor-set sizes, which is small for real directories (nesting a
few levels deep) but quadratic for a pathological chain thousands of groups long, plus one
string per member key (interned: the groups listing a user share it with the user's own
member key) and one tuple of group indices per user (1,000,000 users in 100,000 groups: about
530 MB of resident memory, see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from sys import intern

from .mapping import GroupRecord, normalize_dn

__all__ = ["GroupGraph", "Nesting", "StoredNesting", "changed_nesting", "member_digest"]


def member_digest(member_keys: Iterable[str]) -> str:
    """A fingerprint of a group's member list, whatever the order of its values."""
    return hashlib.sha256("\n".join(sorted(member_keys)).encode()).hexdigest()


@dataclass(frozen=True)
class Nesting:
    """A group's place in the graph as a batch run stores it (:class:`DirectoryGroup` fields):
    its direct member keys (to tell, in the next incremental run, which members a change
    added or removed) and the groups it is a direct member of (the nesting that logins use)."""

    member_keys: list[str]  # sorted
    digest: str
    parent_guids: list[str]  # sorted


@dataclass(frozen=True)
class StoredNesting:
    """What the database held of a group before this run: its DN and member keys (None when
    no batch run stored them)."""

    dn: str
    member_keys: list[str] | None


class GroupGraph:
    """Groups and their member values, read once per run; transitive closure computed locally.

    Two records with the same guid: the last one wins.
    """

    def __init__(self, groups: Iterable[GroupRecord]) -> None:
        records: dict[str, GroupRecord] = {}
        for record in groups:
            records[record.guid] = record
        self._records = records
        self._guids: list[str] = list(records)
        guids = self._guids
        self._guid_index: dict[str, int] = {guid: i for i, guid in enumerate(guids)}
        count = len(guids)

        dn_index: dict[str, int] = {}
        sid_index: dict[str, str] = {}
        for i, guid in enumerate(guids):
            record = records[guid]
            dn_index[intern(normalize_dn(record.dn))] = i
            if record.object_sid:
                sid_index[record.object_sid] = guid
        self._dn_index = dn_index
        self._sid_index = sid_index

        # parents[i]: indices of the groups that group i is a direct member of.
        parents: list[list[int]] = [[] for _ in range(count)]
        user_direct: defaultdict[str, list[int]] = defaultdict(list)
        find_group = dn_index.get
        for i, guid in enumerate(guids):
            member_keys = records[guid].member_keys
            # One string object per member key, whatever the number of groups listing it (and
            # the same one as the users' member keys, see mapping.member_key_of): at 1,000,000
            # users in 5 groups each, five copies of every user DN would be most of the graph.
            if isinstance(member_keys, list):
                member_keys[:] = map(intern, member_keys)
            for key in member_keys:
                child = find_group(key)
                if child is None:
                    user_direct[key].append(i)
                else:
                    parents[child].append(i)
        self._parents = parents
        self._children: list[list[int]] | None = None

        # Users' direct groups as sorted tuples of indices (a frozenset of five costs twice as
        # much), interned: users with the same direct groups share one tuple.
        interned: dict[tuple[int, ...], tuple[int, ...]] = {}
        sharing: dict[tuple[int, ...], int] = {}
        self._user_direct: dict[str, tuple[int, ...]] = {}
        for key, indices in user_direct.items():
            direct = tuple(sorted(set(indices)))
            direct = interned.setdefault(direct, direct)
            sharing[direct] = sharing.get(direct, 0) + 1
            self._user_direct[key] = direct
        #: direct sets worth caching an answer for: those of two users or more.
        self._shared = {direct for direct, users in sharing.items() if users > 1}
        self._shared.add(_EMPTY)
        del interned, sharing, user_direct

        self._component, self._ancestors = _closure(guids, parents)
        self._cache: dict[tuple[tuple[int, ...], int | None], frozenset[str]] = {}

    # -- lookups --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._guids)

    def records(self) -> list[GroupRecord]:
        """Every group record of the graph (one per guid), in reading order."""
        return list(self._records.values())

    def __iter__(self) -> Iterator[GroupRecord]:
        return iter(self._records.values())

    def __contains__(self, guid: object) -> bool:
        return guid in self._records

    def by_guid(self, guid: str) -> GroupRecord:
        """The record of a group; ``KeyError`` when it is not in the graph."""
        return self._records[guid]

    def find_by_sid(self, sid: str) -> GroupRecord | None:
        guid = self._sid_index.get(sid)
        return None if guid is None else self._records[guid]

    def user_keys(self) -> set[str]:
        """Every member key that is not a group of the graph."""
        return set(self._user_direct)

    # -- closure --------------------------------------------------------------------------

    def ancestors(self, group_guid: str) -> frozenset[str]:
        """The group itself and every group above it (``KeyError`` for an unknown guid)."""
        index = self._guid_index[group_guid]
        return self._ancestors[self._component[index]]

    def groups_for(self, member_key: str, primary_group_sid: str | None = None) -> frozenset[str]:
        """Guids of every group the member is in, directly or through nesting.

        Includes the AD primary group (found by ``primary_group_sid``) and every group above
        it. An unknown member key has no groups (but may still have a primary group). The
        returned sets are shared between callers: do not rely on their identity, and do not
        try to mutate them (they are frozensets).
        """
        direct = self._user_direct.get(member_key, _EMPTY)
        primary = self._primary_index(primary_group_sid)
        key = (direct, primary)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        component = self._component
        components = {component[i] for i in direct}
        if primary is not None:
            components.add(component[primary])
        ancestors = self._ancestors
        if not components:
            result = _NO_GROUPS
        elif len(components) == 1:
            result = ancestors[components.pop()]
        else:
            # Copying the largest set and adding the others is the cheapest union.
            sets = sorted((ancestors[c] for c in components), key=len, reverse=True)
            result = sets[0].union(*sets[1:])
        if direct in self._shared:
            self._cache[key] = result
        return result

    def groups_above(
        self, direct_guids: Iterable[str], primary_group_sid: str | None = None
    ) -> frozenset[str]:
        """Guids of these groups (the unknown ones left out), of the primary group, and of
        every group above them: :meth:`groups_for` for a member whose direct groups are known
        by another way (a login reads them live)."""
        index = self._guid_index
        components = {self._component[index[g]] for g in direct_guids if g in index}
        primary = self._primary_index(primary_group_sid)
        if primary is not None:
            components.add(self._component[primary])
        return frozenset().union(*(self._ancestors[c] for c in components))

    def manageable(self, guids: Iterable[str], create_outside_scope: bool) -> list[str]:
        """The groups of ``guids`` that Django manages: those of the group scope, and with
        ``LDAP_SYNC_GROUP_MEMBERSHIP_CREATE_IF_NOT_EXISTS`` every group of the graph."""
        records = self._records
        return [g for g in guids if g in records and (create_outside_scope or records[g].in_scope)]

    def members_affected_by(self, group_guids: Iterable[str]) -> set[str]:
        """User keys whose :meth:`groups_for` may include any of these groups.

        That is every user key listed by one of the groups or by a group nested below them (at
        any depth). Unknown guids are ignored. Users tied to a group only as their AD primary
        group are not listed (the graph does not know users' primary groups): the caller,
        which holds ``primary_group_sid`` of each user, adds them if it needs to.
        """
        children = self._children
        if children is None:
            children = [[] for _ in self._guids]
            for child, parent_list in enumerate(self._parents):
                for parent in parent_list:
                    children[parent].append(child)
            self._children = children
        seen: set[int] = set()
        todo = [self._guid_index[g] for g in group_guids if g in self._guid_index]
        while todo:
            index = todo.pop()
            if index in seen:
                continue
            seen.add(index)
            todo.extend(children[index])
        dn_index = self._dn_index
        result: set[str] = set()
        for index in seen:
            result.update(
                key for key in self._records[self._guids[index]].member_keys if key not in dn_index
            )
        return result

    def parent_guids(self, group_guid: str) -> list[str]:
        """Guids of the groups of the graph that list this group as a member, sorted."""
        guids = self._guids
        return sorted({guids[i] for i in self._parents[self._guid_index[group_guid]]})

    def nesting_of(self, group_guid: str) -> Nesting:
        """A group's :class:`Nesting` (``KeyError`` for an unknown guid), built on demand:
        the batch run streams them to the database rather than holding them all."""
        keys = sorted(self._records[group_guid].member_keys)
        return Nesting(keys, member_digest(keys), self.parent_guids(group_guid))

    def nesting(self) -> dict[str, Nesting]:
        """Every group's :class:`Nesting`."""
        return {guid: self.nesting_of(guid) for guid in self._records}

    def without_users(self) -> GroupGraph:
        """The same graph with group member keys only: what a login walks up, at a fraction
        of the memory (and of the size in a cache)."""
        dn_index = self._dn_index
        return GroupGraph(
            replace(record, member_keys=[k for k in record.member_keys if k in dn_index])
            for record in self._records.values()
        )

    def group_for_key(self, member_key: str) -> str | None:
        """The guid of the group whose normalized DN is ``member_key``, or None (a user key)."""
        index = self._dn_index.get(member_key)
        return None if index is None else self._guids[index]

    # -- internals ------------------------------------------------------------------------

    def _primary_index(self, primary_group_sid: str | None) -> int | None:
        if primary_group_sid is None:
            return None
        guid = self._sid_index.get(primary_group_sid)
        return None if guid is None else self._guid_index[guid]


def changed_nesting(
    graph: GroupGraph, before: Mapping[str, StoredNesting | None], changed: Iterable[str]
) -> tuple[set[str], set[str], set[str]]:
    """What the changed groups of an incremental run may have changed in users' closures.

    ``before`` is what the database held of each changed group (None: not there). Returns
    ``(moved, user_keys, unknown)``:

    - ``moved``: groups whose own membership in other groups may have changed (a nested group
      added to or removed from a changed group, a group whose DN changed, a group new to the
      database): the users at any depth below them must be rechecked;
    - ``user_keys``: member keys added to or removed from a changed group directly;
    - ``unknown``: changed groups without a stored member list (new, or stored by an older
      version): their former members are unknown, so the users holding them are rechecked too.

    Why it is enough: a user's closure changes only through a changed edge that the user
    reaches through unchanged edges, so the user is below the edge's child in the new graph.
    """
    moved: set[str] = set()
    user_keys: set[str] = set()
    unknown: set[str] = set()
    for guid in changed:
        if guid not in graph:
            continue
        record = graph.by_guid(guid)
        stored = before.get(guid)
        if stored is None or stored.member_keys is None:
            moved.add(guid)
            unknown.add(guid)
            continue
        if normalize_dn(stored.dn) != normalize_dn(record.dn):
            moved.add(guid)
        for key in set(stored.member_keys).symmetric_difference(record.member_keys):
            child = graph.group_for_key(key)
            if child is None:
                user_keys.add(key)
            else:
                moved.add(child)
    return moved, user_keys, unknown


_EMPTY: tuple[int, ...] = ()
_NO_GROUPS: frozenset[str] = frozenset()


def _closure(guids: list[str], parents: list[list[int]]) -> tuple[list[int], list[frozenset[str]]]:
    """Components of the "is a member of" graph and each component's ancestor guids.

    Returns ``(component_of_group, ancestors_of_component)``. Tarjan's algorithm, iterative;
    it emits a component only after every component reachable from it (every group above it),
    so the ancestor sets can be built in emission order.
    """
    # One function on purpose: the iterative algorithm's state lives in these locals, and a
    # split would pass them around on the hot path of every run.
    count = len(guids)
    order = [-1] * count  # discovery index
    low = [0] * count
    on_stack = [False] * count
    component = [-1] * count
    stack: list[int] = []
    ancestors: list[frozenset[str]] = []
    counter = 0

    for root in range(count):
        if order[root] != -1:
            continue
        order[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = True
        work = [(root, 0)]
        while work:
            node, position = work[-1]
            node_parents = parents[node]
            if position < len(node_parents):
                work[-1] = (node, position + 1)
                nxt = node_parents[position]
                if order[nxt] == -1:
                    order[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack[nxt] = True
                    work.append((nxt, 0))
                elif on_stack[nxt] and order[nxt] < low[node]:
                    low[node] = order[nxt]
                continue
            work.pop()
            if work:
                caller = work[-1][0]
                if low[node] < low[caller]:
                    low[caller] = low[node]
            if low[node] != order[node]:
                continue
            # node is the root of a component: pop it, then build its ancestor set.
            number = len(ancestors)
            members = []
            while True:
                member = stack.pop()
                on_stack[member] = False
                component[member] = number
                members.append(member)
                if member == node:
                    break
            above = {
                component[parent]
                for member in members
                for parent in parents[member]
                if component[parent] != number
            }
            own = frozenset(guids[m] for m in members)
            if not above:
                ancestors.append(own)
            else:
                ancestors.append(own.union(*(ancestors[c] for c in above)))
    return component, ancestors
