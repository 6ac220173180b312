"""Why a user is in each of their groups: directly, or through which nested groups.

Django holds every group a user is in, at any depth, and adldap-auth stores the nesting it
computed them from; this page asks the directory itself, to show the way: starting from the
user's entry (and its AD primary group, a direct membership too), it walks up ``member`` links
in the membership scope (every group whose nesting counts, in the group scope or not), one
search per group reached (a handful for a typical user), over one connection made with the
site's own ``LDAP_SYNC_*`` settings (TLS, reader account).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from ldap.filter import escape_filter_chars

from adldap_auth.conf import get_config
from adldap_auth.directory import DirectoryError
from adldap_auth.directory.connection import DirectorySession, connection_config
from adldap_auth.mapping import build_mapping_config, normalize_dn, primary_group_sid_of
from adldap_auth.membership import membership_scope

logger = logging.getLogger(__name__)

#: Stop walking up after this many groups (a safety net for huge directories).
MAX_GROUPS = 200


@dataclass
class Nesting:
    """Groups above a user: ``paths[group_dn]`` lists the group names from a direct group
    (first) up to that group (last); a direct group's path is just its own name."""

    paths: dict[str, list[str]]
    error: str = ""

    def path_to(self, group_dn: str) -> list[str] | None:
        return self.paths.get(normalize_dn(group_dn))


def group_nesting(user_dn: str) -> Nesting:
    """Walk up from ``user_dn`` through ``member`` values (breadth first: shortest paths)."""
    member_attribute = get_config().GROUP_MEMBER_ATTRIBUTE
    paths: dict[str, list[str]] = {}
    queue: deque[tuple[str, list[str]]] = deque([(user_dn, [])])
    try:
        with DirectorySession.open(connection_config()) as session:
            scope = membership_scope(build_mapping_config(is_ad=session.root_dse().is_ad))
            user = session.read_entry(user_dn, ["objectSid", "primaryGroupID"])
            primary_sid = primary_group_sid_of(user) if user is not None else None
            if primary_sid:
                found = f"(&{scope.filterstr}(objectSid={escape_filter_chars(primary_sid)}))"
                for entry in session.search(scope.base, found, ["cn"]):
                    paths[normalize_dn(entry.dn)] = [entry.text("cn") or entry.dn]
                    queue.append((entry.dn, paths[normalize_dn(entry.dn)]))
            while queue and len(paths) < MAX_GROUPS:
                dn, path = queue.popleft()
                filterstr = f"(&{scope.filterstr}({member_attribute}={escape_filter_chars(dn)}))"
                for entry in session.search(scope.base, filterstr, ["cn"]):
                    key = normalize_dn(entry.dn)
                    if key in paths:
                        continue
                    paths[key] = [*path, entry.text("cn") or entry.dn]
                    queue.append((entry.dn, paths[key]))
    except DirectoryError as error:
        logger.warning("group nesting of %s unavailable: %s", user_dn, error)
        return Nesting(paths, error=str(error))
    return Nesting(paths)
