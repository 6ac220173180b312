"""The login path for one user: find the entry's groups, then write through the shared store.

:class:`adldap_auth.backends.ADLDAPBackend` calls this module once django-auth-ldap has found
and bound the user. Nothing here is a second copy of the batch sync: entries are mapped by
:mod:`adldap_auth.mapping`, recursive memberships are computed by
:class:`adldap_auth.groups.GroupGraph`, and everything is written by
:class:`adldap_auth.store.Store`, with the same rules as a ``syncldap full`` run, so a login
and a batch run leave the same Django state for the same entry.

Login names (:func:`normalize_login_name`, :func:`user_search_filter`)
    Surrounding plain spaces are dropped and a down-level ``DOMAIN\\user`` becomes ``user`` (the
    domain part is not checked: the password is). ``user@domain`` is kept whole and matched
    as the username attribute's value, as its local part ``user``, and, when the username
    attribute is ``sAMAccountName``, as a ``userPrincipalName``; a name that matches more than
    one entry logs nobody in (a WARNING names the login and the count). Every value is
    escaped (RFC 4515), so ``*``, ``(``, ``)`` and ``\\`` never widen the search; a name with
    a control, format or separator character anywhere (NUL, tab, newline, zero-width
    space...) is refused before any stripping and any search.

Groups (:func:`user_groups`)
    One resolver for logins and batch runs: the batch's :class:`~adldap_auth.groups.GroupGraph`
    of the membership scope (:mod:`adldap_auth.membership`). The login reads the user's
    *direct* groups live (one search of the membership scope, ``(member=<user dn>)``), then
    walks up the graph: the nesting the last batch run stored (:mod:`adldap_auth.nesting`,
    in Django's cache under a version each batch run bumps), or, before any batch run, with
    ``LDAP_SYNC_LOGIN_GROUP_RESOLUTION = "graph"``, or when a direct group is newer than the
    stored nesting, the graph read live (cached for ``LDAP_SYNC_LOGIN_GROUP_CACHE_TIMEOUT``
    seconds). The AD primary group and the groups above it count, as in the batch. The groups
    kept are those Django manages: the group scope, and with
    ``LDAP_SYNC_GROUP_MEMBERSHIP_CREATE_IF_NOT_EXISTS`` every group found. A change of the
    user's own memberships reaches the login at once; a change of nesting, with the next
    batch run. Cost after the bind: 1 search with stored nesting.

    ``LDAP_SYNC_GROUP_MEMBERSHIP_MODE = "filter"`` (the seed's per-user filter) runs that
    filter in the membership scope for the direct groups instead.

Writes (:func:`write_user`)
    One query first reads the links of the user's groups, the default groups
    (``LDAP_SYNC_GROUP_MEMBERSHIP_ADD_DEFAULT``) and the user's memberships of both. Then,
    each in its own savepoint and only for what differs: ``Store.sync_groups`` for the groups
    not linked yet or changed (name, DN, SID), ``Store.ensure_plain_groups`` for missing
    default groups, ``Store.sync_memberships`` when the memberships are not the directory's;
    ``Store.sync_users([record])`` always (it writes nothing when nothing changed). The login
    of an unchanged user thus reads the link, the groups, then (the store) the link and the
    profiles, and writes nothing but django-auth-ldap's own ``user.save()``. A batch run (or
    another login) writing the same rows at the same moment makes one of them fail on a
    unique constraint; the login then starts again from the database's new state, up to
    :data:`WRITE_ATTEMPTS` times, so no ``IntegrityError`` reaches the login view. Each write
    transaction takes SQLite's write lock first, waiting for the busy timeout
    (:func:`adldap_auth.dbwrite.write_transaction`); a write that still meets a lock conflict
    (a wait beyond the busy timeout, a deadlock) starts again after a growing pause, for at
    most :data:`~adldap_auth.dbwrite.LOCKED_RETRY_SECONDS` (outside a transaction of the caller only).
"""

from __future__ import annotations

from .entry import (
    DirectoryAttrs,
    complete_ranges,
    connected_uri,
    decoded_attrs,
    is_ad_entry,
    mapping_entry,
)
from .groups import IN_CHAIN, clear_group_cache, user_groups
from .names import (
    DETECTION_ATTRIBUTES,
    is_exempt,
    login_user_attributes,
    normalize_login_name,
    user_search_filter,
    username_attribute,
)
from .writes import WRITE_ATTEMPTS, existing_user, old_entry_gone, username_taken, write_user

__all__ = [
    "DETECTION_ATTRIBUTES",
    "IN_CHAIN",
    "WRITE_ATTEMPTS",
    "DirectoryAttrs",
    "clear_group_cache",
    "complete_ranges",
    "connected_uri",
    "decoded_attrs",
    "existing_user",
    "is_ad_entry",
    "is_exempt",
    "login_user_attributes",
    "mapping_entry",
    "normalize_login_name",
    "old_entry_gone",
    "user_groups",
    "user_search_filter",
    "username_attribute",
    "username_taken",
    "write_user",
]
