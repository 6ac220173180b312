"""How a login finds the user's groups: its direct groups read live, then the batch's group
graph (stored, or read live and cached) walked upwards."""

from __future__ import annotations

import logging
from typing import Any

from django.core.cache import cache
from django.core.signals import setting_changed
from django.dispatch import receiver

from ..conf import PREFIX, get_config
from ..directory import Entry
from ..directory.connection import DirectorySession
from ..directory.readers import Scope, and_filter, member_filter, read_entries
from ..mapping import GroupRecord, MappingConfig, UserRecord, entry_guid
from ..membership import direct_group_guids, live_graph, membership_scope
from ..nesting import VERSION_KEY, forget_loaded, stored_graph

logger = logging.getLogger("adldap_auth.login")

#: LDAP_MATCHING_RULE_IN_CHAIN: transitive ``member`` matching on Active Directory.
IN_CHAIN = "1.2.840.113556.1.4.1941"


def user_groups(
    session: DirectorySession,
    entry: Entry,
    record: UserRecord,
    config: MappingConfig,
    is_ad: bool,
) -> list[GroupRecord]:
    """The groups Django manages that the user is in, directly or by nesting: the batch's
    answer, by the batch's graph (see the module docstring). Empty when groups or memberships
    are not synced. Raises :class:`~adldap_auth.directory.DirectoryError` when a search fails.
    """
    s = get_config()
    if not (s.GROUP and s.GROUP_MEMBERSHIP):
        return []
    stored = None if s.LOGIN_GROUP_RESOLUTION == "graph" else stored_graph()
    graph = stored if stored is not None else live_graph(session, config)
    if s.GROUP_MEMBERSHIP_MODE == "filter":
        direct = _filter_group_guids(session, record, config)
    else:
        direct = direct_group_guids(session, record, config)
    if stored is not None and not all(guid in graph for guid in direct):
        # A group created since the last batch run: the live graph (cached) may know it.
        logger.debug("login of %s: a direct group is newer than the stored nesting", record.dn)
        graph = live_graph(session, config)
    if not all(guid in graph for guid in direct):
        logger.debug("login of %s: a direct group is not in the graph; reading it", record.dn)
        graph = live_graph(session, config, refresh=True)
    guids = graph.groups_above(direct, record.primary_group_sid)
    create_outside = bool(s.GROUP_MEMBERSHIP_CREATE_IF_NOT_EXISTS)
    return [graph.by_guid(guid) for guid in graph.manageable(sorted(guids), create_outside)]


def _filter_group_guids(
    session: DirectorySession, record: UserRecord, config: MappingConfig
) -> set[str]:
    """``LDAP_SYNC_GROUP_MEMBERSHIP_MODE = "filter"``: the seed's per-user filter, run in the
    membership scope as the batch runs it."""
    scope = membership_scope(config)
    filterstr = member_filter(get_config().GROUP_MEMBERSHIP_FILTER, record.dn)
    identity = config.identity_attribute
    return {
        guid
        for found in read_entries(
            session, Scope(scope.base, and_filter(scope.filterstr, filterstr)), [identity]
        )
        if (guid := entry_guid(found, identity))
    }


def clear_group_cache() -> None:
    """Forget the graphs of logins: the live one in Django's cache and this process's copy of
    the stored one (done when an ``LDAP_SYNC_*`` setting changes)."""
    cache.delete(VERSION_KEY)
    forget_loaded()


@receiver(setting_changed)
def _settings_changed(sender: Any, setting: str, **kwargs: Any) -> None:
    if setting.startswith(PREFIX):
        clear_group_cache()
