"""The membership scope: every group whose nesting counts, read once, for batch runs and logins.

Two scopes, as in django-adldap-sync:

- the **group scope** (``LDAP_SYNC_GROUP_SEARCH`` + ``_FILTER``) says which groups are synced;
- the **membership scope** (``LDAP_SYNC_MEMBERSHIP_SEARCH`` + ``_FILTER``, by default every
  group under ``LDAP_SYNC_BIND_SEARCH``) says whose nesting counts. A user in ``Sales``
  (outside the group scope) where ``Sales`` is a member of ``App-CRM`` (inside) is in
  ``App-CRM``, exactly as the directory resolves it (AD's ``tokenGroups``). With
  ``LDAP_SYNC_GROUP_MEMBERSHIP_CREATE_IF_NOT_EXISTS`` (the default) ``Sales`` is synced too.

One paged search reads the membership scope with member values (ranged on AD). When the two
scopes differ, a second search of the group scope reads only identities, to mark which groups
are in it (:attr:`~adldap_auth.mapping.GroupRecord.in_scope`); a group base outside the
membership base is read in full as well. Member values that name neither a group of the scope
nor a user (contacts, computers, foreign security principals) are simply never matched.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

from django.core.cache import cache
from ldap import SCOPE_BASE
from ldap.filter import escape_filter_chars

from .conf import get_config
from .directory import Entry
from .directory.connection import DirectorySession
from .directory.readers import Scope, and_filter, read_entries
from .groups import GroupGraph
from .mapping import (
    GroupRecord,
    MappingConfig,
    SkipEntry,
    UserRecord,
    entry_guid,
    group_attribute_list,
    map_group,
    normalize_dn,
)

__all__ = [
    "GroupRead",
    "direct_group_guids",
    "group_scope",
    "live_graph",
    "membership_scope",
    "read_groups",
]

#: A filter that names one object class (or category): every group of that kind.
_ONE_CLASS = re.compile(r"\(\s*object(?:class|category)\s*=\s*[\w.-]+\s*\)\Z", re.IGNORECASE)


def group_scope() -> Scope:
    return Scope(get_config().GROUP_SEARCH or "", get_config().GROUP_FILTER)


def membership_scope(config: MappingConfig) -> Scope:
    """``LDAP_SYNC_MEMBERSHIP_SEARCH``/``_FILTER``, or their defaults (see the module doc)."""
    s = get_config()
    filterstr = s.MEMBERSHIP_FILTER
    if not filterstr:
        group_filter = s.GROUP_FILTER
        if _ONE_CLASS.match(group_filter.strip()):
            filterstr = group_filter
        else:
            filterstr = f"(|{group_filter}(objectClass=group)({config.member_attribute}=*))"
    return Scope(s.MEMBERSHIP_SEARCH or "", filterstr)


def is_under(dn: str, base: str) -> bool:
    """Whether ``dn`` is ``base`` or below it (normalized DNs; an empty base holds all)."""
    dn, base = normalize_dn(dn), normalize_dn(base)
    return not base or dn == base or dn.endswith("," + base)


@dataclass
class GroupRead:
    """One entry of the membership scope: the record, or why it was skipped."""

    entry: Entry
    guid: str | None
    record: GroupRecord | None
    skipped: SkipEntry | None = None


def group_scope_guids(session: DirectorySession, config: MappingConfig) -> set[str]:
    """The ids of the group scope's entries, by one id-only read."""
    identity = config.identity_attribute
    return {
        guid
        for entry in read_entries(session, group_scope(), [identity])
        if (guid := entry_guid(entry, identity))
    }


class GroupScopeRule:
    """Whether a group of the membership scope (guid, DN) is in the group scope: by its DN
    when both scopes use one filter (the usual case: no extra search), else by one id-only
    read of the group scope.

    By DN, a group base that does not exist (a typo) or is a referral would read as a group
    scope without groups, so every managed group would leave it. :meth:`confirm_base` makes
    one base read of the group base, which fails the run then; it costs nothing once a group
    was found inside the base."""

    def __init__(self, session: DirectorySession, config: MappingConfig) -> None:
        groups, members = group_scope(), membership_scope(config)
        self.session = session
        self.base = groups.base
        self.by_dn = groups.filterstr.strip() == members.filterstr.strip()
        self.base_confirmed = not self.by_dn or normalize_dn(groups.base) == normalize_dn(
            members.base
        )
        self.ids = None if self.by_dn else group_scope_guids(session, config)

    def __call__(self, guid: str, dn: str) -> bool:
        if self.ids is not None:
            return guid in self.ids
        inside = is_under(dn, self.base)
        self.base_confirmed = self.base_confirmed or inside
        return inside

    def confirm_base(self) -> None:
        """Raise :class:`~adldap_auth.directory.IncompleteRead` unless the group base exists
        (read only when no group was found inside it)."""
        if not self.base_confirmed:
            for _entry in self.session.search(
                self.base, "(objectClass=*)", ["1.1"], scope=SCOPE_BASE
            ):
                pass
            self.base_confirmed = True


def read_groups(
    session: DirectorySession,
    config: MappingConfig,
    extra_attributes: tuple[str, ...] = (),
) -> Iterator[GroupRead]:
    """Every group of the membership scope (and of the group scope), mapped, with
    ``in_scope`` set. Raises :class:`~adldap_auth.directory.DirectoryError` on any
    incomplete read, like every reader."""
    groups, members = group_scope(), membership_scope(config)
    in_scope = GroupScopeRule(session, config)
    attributes = [*group_attribute_list(config), *extra_attributes]
    ranged = [config.member_attribute]
    seen: set[str] = set()
    scopes = [members]
    if not is_under(groups.base, members.base):
        scopes.append(groups)
    for scope in scopes:
        for entry in read_entries(session, scope, attributes, ranged=ranged):
            guid = entry_guid(entry, config.identity_attribute)
            if guid is not None:
                if guid in seen:
                    continue
                seen.add(guid)
            try:
                record = map_group(entry, config)
            except SkipEntry as skip:
                yield GroupRead(entry, guid, None, skip)
                continue
            record.in_scope = scope is groups or in_scope(record.guid, entry.dn)
            yield GroupRead(entry, guid, record)
    if groups not in scopes:  # a group base searched itself has shown it exists
        in_scope.confirm_base()  # before the caller writes anything


_LIVE_KEY = "adldap_auth:live-graph"


def live_graph(
    session: DirectorySession, config: MappingConfig, refresh: bool = False
) -> GroupGraph:
    """The group graph of the membership scope read now, without user keys, for logins that
    have no stored nesting (or ask for the live one). Kept in Django's cache for
    ``LDAP_SYNC_LOGIN_GROUP_CACHE_TIMEOUT`` seconds, so that every worker reads it once."""
    timeout = get_config().LOGIN_GROUP_CACHE_TIMEOUT
    key = f"{_LIVE_KEY}:{_scope_fingerprint(config)}"
    if timeout and not refresh:
        cached = cache.get(key)
        if cached is not None:
            return cached
    graph = GroupGraph(read.record for read in read_groups(session, config) if read.record)
    graph = graph.without_users()
    if timeout:
        cache.set(key, graph, timeout)
    return graph


def _scope_fingerprint(config: MappingConfig) -> str:
    s = get_config()
    parts = (
        tuple(s.bind_uris),
        group_scope(),
        membership_scope(config),
        config.identity_attribute,
        config.member_attribute,
        tuple(group_attribute_list(config)),
        tuple(sorted(config.group_attributes.items())),
    )
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


def direct_group_guids(
    session: DirectorySession, record: UserRecord, config: MappingConfig
) -> set[str]:
    """The groups of the membership scope that list the user as a member, read now (one
    search): what a login starts from before walking up the graph."""
    value = record.member_key if config.member_attribute == "memberuid" else record.dn
    clause = f"({config.member_attribute}={escape_filter_chars(value)})"
    scopes = [membership_scope(config)]
    if not is_under(group_scope().base, scopes[0].base):
        scopes.append(group_scope())
    identity = config.identity_attribute
    return {
        guid
        for scope in scopes
        for entry in read_entries(
            session, Scope(scope.base, and_filter(scope.filterstr, clause)), [identity]
        )
        if (guid := entry_guid(entry, identity))
    }
