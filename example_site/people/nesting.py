"""Why a user is in each of their groups: directly, or through which nested groups.

Django holds the *result* of the sync (every group a user is in, at any depth) but not the
nesting itself, so the "me" page asks the directory: starting from the user's entry, it
walks up ``member`` links, one search per group reached (a handful for a typical user), over
one connection made with the site's own ``LDAP_SYNC_*`` settings (TLS, reader account).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from ldap.filter import escape_filter_chars

from adldap_auth.conf import sync_settings
from adldap_auth.directory import DirectoryError
from adldap_auth.directory.connection import DirectorySession
from adldap_auth.mapping import normalize_dn
from adldap_auth.sync import connection_config

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
    s = sync_settings
    member_attribute = s.GROUP_MEMBER_ATTRIBUTE
    paths: dict[str, list[str]] = {}
    queue: deque[tuple[str, list[str]]] = deque([(user_dn, [])])
    try:
        with DirectorySession.open(connection_config()) as session:
            while queue and len(paths) < MAX_GROUPS:
                dn, path = queue.popleft()
                filterstr = f"(&{s.GROUP_FILTER}({member_attribute}={escape_filter_chars(dn)}))"
                for entry in session.search(s.GROUP_SEARCH, filterstr, ["cn"]):
                    key = normalize_dn(entry.dn)
                    if key in paths:
                        continue
                    paths[key] = [*path, entry.text("cn") or entry.dn]
                    queue.append((entry.dn, paths[key]))
    except DirectoryError as error:
        logger.warning("group nesting of %s unavailable: %s", user_dn, error)
        return Nesting(paths, error=str(error))
    return Nesting(paths)
