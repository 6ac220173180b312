"""The login path for one user: find the entry's groups, then write through the shared store.

:class:`adldap_auth.backends.ADLDAPBackend` calls this module once django-auth-ldap has found
and bound the user. Nothing here is a second copy of the batch sync: entries are mapped by
:mod:`adldap_auth.mapping`, recursive memberships are computed by
:class:`adldap_auth.groups.GroupGraph`, and everything is written by
:class:`adldap_auth.store.Store`, with the same rules as a ``syncldap full`` run, so a login
and a batch run leave the same Django state for the same entry.

Login names (:func:`normalize_login_name`, :func:`user_search_filter`)
    Surrounding spaces are dropped and a down-level ``DOMAIN\\user`` becomes ``user`` (the
    domain part is not checked: the password is). ``user@domain`` is kept whole and matched
    as the username attribute's value, as its local part ``user``, and, when the username
    attribute is ``sAMAccountName``, as a ``userPrincipalName``; a name that matches more than
    one entry logs nobody in. Every value is escaped (RFC 4515), so ``*``, ``(``, ``)`` and
    ``\\`` never widen the search; a name with a control character (NUL...) is refused
    before any search.

Groups (:func:`user_groups`), ``LDAP_SYNC_LOGIN_GROUP_RESOLUTION``
    The answer is always the batch's: the groups of the scope (``LDAP_SYNC_GROUP_SEARCH`` and
    ``_FILTER``) that the user is in through groups of the scope, plus the AD primary group
    and the groups above it. How it is found:

    ``"auto"`` on *Active Directory* (an entry with ``objectGUID`` and ``objectSid`` and no
    ``entryUUID``): a base read of the user's ``tokenGroups`` (the SIDs of every security group
    above the user and its primary group, computed by the DC), then one search of the scope,
    ``(&<GROUP_FILTER>(|(objectSid=<each SID>)(distinguishedName=<each direct group>)))``,
    for those groups and the user's direct groups (``memberOf``, so direct distribution groups
    count). The ``memberOf`` values of the user and of the groups found are the edges; the
    :class:`~adldap_auth.groups.GroupGraph` of that small graph gives the batch's set, even
    when a group outside the scope sits between two groups of it. If a group found has a
    parent under the group base that was not found (a distribution group, which
    ``tokenGroups`` leaves out, or a group the filter excludes), or ``tokenGroups`` is not
    readable by the bind account (hardened domains: see the AD permissions page), the
    ``"in_chain"`` search below answers instead. Cost after the bind: 3 searches (user,
    ``tokenGroups``, groups), whatever the nesting depth; 4 when the fallback runs.

    ``"in_chain"`` on AD: one search, ``(&<GROUP_FILTER>(|(member:1.2.840.113556.1.4.1941:=<user
    dn>)(objectSid=<primary group SID>)(member:1.2.840.113556.1.4.1941:=<SID=<primary group
    SID>>)))``, with the same ``memberOf`` edges. 2 searches in all, but the server walks
    every group of the scope: on Samba 4.17 about 10 times slower than the fast path.

    ``"auto"`` on *other servers* (``member`` values), once a batch run has stored the nesting
    (:mod:`adldap_auth.stored_groups`): one search of the user's direct groups,
    ``(&<GROUP_FILTER>(member=<user dn>))``, and the groups above them as the last batch run
    stored them. A user's own memberships reach the login at once; a change of nesting (a
    group put into another) with the next batch run. A direct group that the last batch run
    did not store (created since) makes the login read the graph, as below. Cost after the
    bind: 1 search, whatever the number of groups.

    ``"graph"`` everywhere (and ``"auto"`` before any batch run, or with ``memberUid`` or
    ``uniqueMember`` values): the whole group graph of the scope, read as the batch reads it
    (paged, ranged ``member`` values), kept in the process for
    ``LDAP_SYNC_LOGIN_GROUP_CACHE_TIMEOUT`` seconds (default 60; 0 reads it at every login),
    so a group change reaches logins within that delay (and the next batch run in any case).
    Cost after the bind: 0 searches with a warm cache, one per page of groups when cold.

    ``LDAP_SYNC_GROUP_MEMBERSHIP_MODE = "filter"`` (the seed's per-user filter) runs that
    filter in the group scope (plus the primary group clauses on AD): 2 searches.

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
    :data:`WRITE_ATTEMPTS` times, so no ``IntegrityError`` reaches the login view.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import ldap
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.signals import setting_changed
from django.db import DatabaseError, IntegrityError, connections, router, transaction
from django.dispatch import receiver
from ldap.filter import escape_filter_chars

from .callbacks import resolve_callback
from .conf import PREFIX, sync_settings
from .directory import Entry
from .directory.connection import DirectorySession
from .directory.decoding import sid_to_str
from .directory.readers import Scope, and_filter, member_filter, read_entries
from .groups import GroupGraph
from .mapping import (
    GroupRecord,
    MappingConfig,
    SkipEntry,
    UserRecord,
    build_mapping_config,
    group_attribute_list,
    map_group,
    normalize_dn,
    user_attribute_list,
)
from .models import DirectoryGroup, DirectoryUser
from .store import RunReport, Store
from .stored_groups import clear_stored_groups, stored_groups
from .sync import default_group_names

logger = logging.getLogger("adldap_auth.login")

__all__ = [
    "IN_CHAIN",
    "WRITE_ATTEMPTS",
    "DirectoryAttrs",
    "clear_group_cache",
    "connected_uri",
    "group_graph",
    "is_ad_entry",
    "is_exempt",
    "login_user_attributes",
    "normalize_login_name",
    "user_groups",
    "user_search_filter",
    "username_attribute",
    "write_user",
]

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
#: LDAP_MATCHING_RULE_IN_CHAIN: transitive ``member`` matching on Active Directory.
IN_CHAIN = "1.2.840.113556.1.4.1941"
#: How many times a login re-reads the database after losing a race with another writer.
WRITE_ATTEMPTS = 3
#: Attributes read on top of the mapper's: ``memberOf`` (edges among the user's groups on AD)
#: and both usual identity attributes (to recognise AD from the entry, without a rootDSE read).
DETECTION_ATTRIBUTES = ("memberof", "objectguid", "entryuuid", "objectsid")


# --------------------------------------------------------------------------------------------
# Login names and the user search


def normalize_login_name(username: str) -> str:
    """The name a user typed, made searchable: spaces stripped, ``DOMAIN\\user`` -> ``user``.

    ``user@domain`` is returned unchanged (see :func:`user_search_filter`). A name with a
    control character (NUL included) gives "": no directory username has one (the mapper
    refuses them), and Samba compares filter values only up to a NUL, so ``alice\\x00`` would
    otherwise find alice.
    """
    name = username.strip()
    if "\\" in name:
        name = name.partition("\\")[2].strip()
    if _CONTROL_CHARS.search(name):
        return ""
    return name


def _local_part(login: str) -> str:
    return login.rpartition("@")[0].strip() if "@" in login else ""


def is_exempt(login: str, exempt_usernames: Iterable[str]) -> bool:
    """True when the typed name, or its local part, is in ``LDAP_SYNC_USER_EXEMPT_FROM_SYNC``."""
    exempt = {name.lower() for name in exempt_usernames}
    return login.lower() in exempt or _local_part(login).lower() in exempt


def user_search_filter(
    user_filter: str, username_attr: str, login: str, upn_attr: str | None = None
) -> str:
    """The user search for a typed name: the scope filter and the escaped name.

    ``user@domain`` also matches its local part, and the ``upn_attr`` (``userPrincipalName``
    on AD) when given.
    """
    clauses = [f"({username_attr}={escape_filter_chars(login)})"]
    local = _local_part(login)
    if local:
        clauses.append(f"({username_attr}={escape_filter_chars(local)})")
        if upn_attr:
            clauses.append(f"({upn_attr}={escape_filter_chars(login)})")
    name_filter = clauses[0] if len(clauses) == 1 else "(|" + "".join(clauses) + ")"
    return and_filter(user_filter, name_filter)


def _mapping_configs() -> list[MappingConfig]:
    """The mapping configs a login may use: both AD and not AD when the identity is "auto"."""
    if str(sync_settings.IDENTITY_ATTRIBUTE).lower() == "auto":
        return [build_mapping_config(is_ad=True), build_mapping_config(is_ad=False)]
    return [build_mapping_config(is_ad=None)]


def username_attribute(config: MappingConfig | None = None) -> str:
    """The attribute mapped to the username field, as spelled in ``LDAP_SYNC_USER_ATTRIBUTES``."""
    config = config or _mapping_configs()[0]
    attr = next(a for a, f in config.user_attributes.items() if f == config.username_field)
    return config.spelling(attr)


def login_user_attributes() -> list[str]:
    """Everything the login's user search requests: the mapper's list, plus detection ones."""
    names: list[str] = []
    for config in _mapping_configs():
        names.extend(user_attribute_list(config))
    names.extend(DETECTION_ATTRIBUTES)
    return list(dict.fromkeys(names))


class DirectoryAttrs(ldap.cidict.cidict):
    """django-auth-ldap's view of a user's attributes (case-insensitive, values decoded to
    ``str`` when they are UTF-8), carrying the raw :class:`~adldap_auth.directory.Entry` (exact
    DN, ``bytes`` values) that the mapper needs, as ``entry``."""

    __slots__ = ("entry",)


def decoded_attrs(entry: Entry, raw: dict[str, list[bytes]]) -> DirectoryAttrs:
    """django-auth-ldap's decoding (each value to ``str`` when it is UTF-8) plus the entry."""
    attrs = DirectoryAttrs()
    for name, values in raw.items():
        attrs[name] = [_decode(value) for value in values]
    attrs.entry = entry
    return attrs


def _decode(value: bytes) -> str | bytes:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


def is_ad_entry(entry: Entry) -> bool:
    """Whether an entry comes from Active Directory: objectGUID and objectSid, no entryUUID.

    Used instead of a rootDSE read (one more round trip per login); it agrees with the
    batch's rootDSE test on AD, Samba AD and OpenLDAP. A site whose entries defeat it sets
    ``LDAP_SYNC_IDENTITY_ATTRIBUTE`` explicitly.
    """
    attrs = entry.attrs
    return "entryuuid" not in attrs and "objectguid" in attrs and "objectsid" in attrs


def mapping_entry(entry: Entry, config: MappingConfig) -> Entry:
    """The entry restricted to what a batch run reads, so callbacks see the same attributes."""
    wanted = set(user_attribute_list(config))
    return Entry(entry.dn, {k: v for k, v in entry.attrs.items() if k in wanted})


def complete_ranges(session: DirectorySession, entry: Entry) -> Entry:
    """Fetch the rest of attributes returned in ranges (``memberOf;range=0-1499`` on Windows
    AD for users in more than 1,500 groups): one more search, only in that case."""
    ranged = {key.partition(";")[0] for key in entry.attrs if ";range=" in key}
    if not ranged:
        return entry
    whole = session.read_entry(entry.dn, sorted(ranged))
    attrs = {k: v for k, v in entry.attrs.items() if ";range=" not in k}
    if whole is not None:
        attrs.update({k: v for k, v in whole.attrs.items() if k in ranged})
    return Entry(entry.dn, attrs)


def connected_uri(connection: Any, uris: Sequence[str]) -> str:
    """The URI of ``uris`` that ``connection`` (a libldap failover list) is connected to.

    Found from the socket's peer address; "" when it cannot be told (a host name, a proxy).
    Only used for :attr:`DirectoryUser.server`, an informative field.
    """
    try:
        fd = connection.get_option(ldap.OPT_DESC)
        with socket.socket(fileno=os.dup(fd)) as sock:
            host, port = sock.getpeername()[:2]
    except (ldap.LDAPError, OSError, TypeError, ValueError):
        return uris[0] if len(uris) == 1 else ""
    for uri in uris:
        parts = urlsplit(uri)
        default_port = 636 if parts.scheme.lower() == "ldaps" else 389
        try:
            uri_port = parts.port or default_port
        except ValueError:
            continue
        if parts.hostname == host and uri_port == port:
            return uri
    return uris[0] if len(uris) == 1 else ""


# --------------------------------------------------------------------------------------------
# Groups


def user_groups(
    session: DirectorySession,
    entry: Entry,
    record: UserRecord,
    config: MappingConfig,
    is_ad: bool,
) -> list[GroupRecord]:
    """Every group of the scope the user is in, directly or by nesting, primary group included.

    The same set as the batch's ``GroupGraph.groups_for`` (see the module docstring for how and
    at what cost). Empty when groups or memberships are not synced. Raises
    :class:`~adldap_auth.directory.DirectoryError` when a search fails.
    """
    s = sync_settings
    if not (s.GROUP and s.GROUP_MEMBERSHIP):
        return []
    if s.GROUP_MEMBERSHIP_MODE == "filter":
        return _filter_groups(session, record, config, is_ad)
    resolution = s.LOGIN_GROUP_RESOLUTION
    if is_ad and resolution in ("auto", "in_chain") and config.member_attribute == "member":
        if resolution == "auto":
            found = _token_groups(session, entry, record, config)
            if found is not None:
                return found
        return _in_chain_groups(session, entry, record, config)
    if resolution == "auto" and config.member_attribute == "member":
        found = _stored_nesting_groups(session, record, config)
        if found is not None:
            return found
    graph = group_graph(session, config)
    guids = graph.groups_for(record.member_key, record.primary_group_sid)
    return [group for group in graph.records() if group.guid in guids]


def _stored_nesting_groups(
    session: DirectorySession, record: UserRecord, config: MappingConfig
) -> list[GroupRecord] | None:
    """The user's direct groups, read live (one search), and the groups above them as the last
    batch run stored them (:mod:`adldap_auth.stored_groups`).

    None when that cannot answer: no batch run stored the nesting, or a direct group (or the
    primary group) is not in it (created since the last batch run, or skipped by it).
    """
    stored = stored_groups()
    if not stored:
        return None
    s = sync_settings
    filterstr = and_filter(s.GROUP_FILTER, f"(member={escape_filter_chars(record.dn)})")
    attributes = _group_attributes_without_members(config)
    found = _read_groups(session, Scope(s.GROUP_SEARCH, filterstr), attributes, config)
    direct = {group.guid: group for _, group in found}
    start = set(direct)
    if record.primary_group_sid:
        start.add(stored.guid_of_sid(record.primary_group_sid) or "")
    if not all(guid in stored for guid in start):
        logger.debug("login of %s: a group is not in the stored nesting", record.dn)
        return None
    above = stored.ancestors(start) - direct.keys()
    return [*direct.values(), *(stored.record(guid) for guid in sorted(above))]


def _primary_group_clauses(record: UserRecord) -> list[str]:
    if not record.primary_group_sid:
        return []
    sid = escape_filter_chars(record.primary_group_sid)
    return [f"(objectSid={sid})", f"(member:{IN_CHAIN}:=<SID={sid}>)"]


def _group_attributes_without_members(config: MappingConfig) -> list[str]:
    """What the store needs of a group; member values (possibly thousands) are not read."""
    return [a for a in group_attribute_list(config) if a != config.member_attribute]


def _read_groups(
    session: DirectorySession,
    scope: Scope,
    attributes: list[str],
    config: MappingConfig,
    ranged: Iterable[str] = (),
) -> list[tuple[Entry, GroupRecord]]:
    """Map the groups of a search; an entry the mapper refuses is left out, as by the batch."""
    found = []
    for entry in read_entries(session, scope, attributes, ranged=ranged):
        try:
            found.append((entry, map_group(entry, config)))
        except SkipEntry as skip:
            logger.debug("group %s skipped: %s", entry.dn, skip)
    return found


def _token_groups(
    session: DirectorySession, entry: Entry, record: UserRecord, config: MappingConfig
) -> list[GroupRecord] | None:
    """The fast path on AD: ``tokenGroups``, then the in-scope groups by SID and direct DN.

    None when it cannot answer for sure: ``tokenGroups`` not readable by the bind account, or
    a group found has a parent under the group base that was not found (a distribution group,
    which ``tokenGroups`` leaves out, or a group the filter excludes); the caller then asks
    the IN_CHAIN search.
    """
    s = sync_settings
    key = _token_key()
    if _token_groups_unreadable.get(key, 0.0) > time.monotonic():
        return None
    token = session.read_entry(record.dn, ["tokenGroups"])
    raw_sids = token.attrs.get("tokengroups", []) if token is not None else []
    if not raw_sids:  # every account has at least its primary group: not readable
        logger.info(
            "tokenGroups of %s is not readable by the bind account; logins use the "
            "IN_CHAIN search for the next %s seconds",
            record.dn,
            TOKEN_GROUPS_RETRY,
        )
        _token_groups_unreadable[key] = time.monotonic() + TOKEN_GROUPS_RETRY
        return None
    sids = sorted({_sid_text(raw) for raw in raw_sids} - {None})
    direct = _values(entry, "memberof")
    clauses = [f"(objectSid={escape_filter_chars(sid)})" for sid in sids]
    clauses += [f"(distinguishedName={escape_filter_chars(dn)})" for dn in direct]
    filterstr = and_filter(s.GROUP_FILTER, "(|" + "".join(clauses) + ")")
    attributes = [*_group_attributes_without_members(config), "memberof"]
    found = _read_groups(
        session, Scope(s.GROUP_SEARCH, filterstr), attributes, config, ranged=["memberof"]
    )
    base = normalize_dn(s.GROUP_SEARCH or "")
    seen = {normalize_dn(group.dn) for _, group in found}
    for group_entry, group in found:
        for parent_dn in _values(group_entry, "memberof"):
            parent = normalize_dn(parent_dn)
            if parent not in seen and (parent == base or parent.endswith("," + base)):
                logger.debug(
                    "login of %s: group %s has a parent outside tokenGroups (%s); "
                    "asking the IN_CHAIN search",
                    record.dn,
                    group.dn,
                    parent_dn,
                )
                return None
    return _closure(found, entry, record)


#: Seconds a process remembers that tokenGroups is not readable (and skips asking for it).
TOKEN_GROUPS_RETRY = 600
_token_groups_unreadable: dict[tuple, float] = {}


def _token_key() -> tuple:
    return (tuple(sync_settings.bind_uris), sync_settings.BIND_DN)


def _sid_text(raw: bytes) -> str | None:
    try:
        return sid_to_str(raw)
    except ValueError:
        return None


def _in_chain_groups(
    session: DirectorySession, entry: Entry, record: UserRecord, config: MappingConfig
) -> list[GroupRecord]:
    """Every in-scope group above the user or its primary group, in one IN_CHAIN search."""
    s = sync_settings
    clauses = [f"(member:{IN_CHAIN}:={escape_filter_chars(record.dn)})"]
    clauses += _primary_group_clauses(record)
    filterstr = and_filter(s.GROUP_FILTER, "(|" + "".join(clauses) + ")")
    attributes = [*_group_attributes_without_members(config), "memberof"]
    found = _read_groups(
        session, Scope(s.GROUP_SEARCH, filterstr), attributes, config, ranged=["memberof"]
    )
    if "memberof" not in entry.attrs:
        # No memberOf on the user (not readable, or no direct group): the server's answer is
        # the set. With memberOf, the edges of _closure make it exactly the batch's set.
        return [group for _, group in found]
    return _closure(found, entry, record)


def _closure(
    found: list[tuple[Entry, GroupRecord]], entry: Entry, record: UserRecord
) -> list[GroupRecord]:
    """The batch's answer over the groups found: their ``memberOf`` values (and the user's)
    are the edges, so a group reached only through a group outside the scope is left out, as
    the batch's graph leaves it out."""
    by_dn = {normalize_dn(group.dn): group for _, group in found}
    keys: dict[str, list[str]] = {group.guid: [] for _, group in found}
    for group_entry, group in found:
        for parent_dn in _values(group_entry, "memberof"):
            parent = by_dn.get(normalize_dn(parent_dn))
            if parent is not None:
                keys[parent.guid].append(normalize_dn(group.dn))
    for parent_dn in _values(entry, "memberof"):
        parent = by_dn.get(normalize_dn(parent_dn))
        if parent is not None:
            keys[parent.guid].append(record.member_key)
    graph = GroupGraph(replace(group, member_keys=keys[group.guid]) for _, group in found)
    guids = graph.groups_for(record.member_key, record.primary_group_sid)
    return [group for _, group in found if group.guid in guids]


def _values(entry: Entry, name: str) -> list[str]:
    return [value.decode("utf-8", "replace") for value in entry.attrs.get(name, ())]


def _filter_groups(
    session: DirectorySession, record: UserRecord, config: MappingConfig, is_ad: bool
) -> list[GroupRecord]:
    """``LDAP_SYNC_GROUP_MEMBERSHIP_MODE = "filter"``: the seed's per-user filter."""
    s = sync_settings
    clauses = [member_filter(s.GROUP_MEMBERSHIP_FILTER, record.dn)]
    if is_ad:
        clauses += _primary_group_clauses(record)
    filterstr = and_filter(s.GROUP_FILTER, "(|" + "".join(clauses) + ")")
    attributes = _group_attributes_without_members(config)
    return [
        group
        for _, group in _read_groups(session, Scope(s.GROUP_SEARCH, filterstr), attributes, config)
    ]


_graph_cache: dict[tuple, tuple[float, GroupGraph]] = {}
_graph_lock = threading.Lock()


def _graph_key(config: MappingConfig) -> tuple:
    s = sync_settings
    return (
        tuple(s.bind_uris),
        s.GROUP_SEARCH,
        s.GROUP_FILTER,
        s.RANGE_SIZE,
        tuple(group_attribute_list(config)),
        tuple(sorted(config.group_attributes.items())),
    )


def group_graph(session: DirectorySession, config: MappingConfig) -> GroupGraph:
    """The group graph of the scope, read as the batch reads it and kept in the process for
    ``LDAP_SYNC_LOGIN_GROUP_CACHE_TIMEOUT`` seconds. Concurrent logins wait for one read."""
    timeout = sync_settings.LOGIN_GROUP_CACHE_TIMEOUT
    if not timeout:
        return _read_group_graph(session, config)
    key = _graph_key(config)
    with _graph_lock:
        cached = _graph_cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        graph = _read_group_graph(session, config)
        _graph_cache[key] = (time.monotonic() + timeout, graph)
        return graph


def _read_group_graph(session: DirectorySession, config: MappingConfig) -> GroupGraph:
    s = sync_settings
    found = _read_groups(
        session,
        Scope(s.GROUP_SEARCH, s.GROUP_FILTER),
        group_attribute_list(config),
        config,
        ranged=[config.member_attribute],
    )
    logger.debug("login: read the group graph (%d groups)", len(found))
    return GroupGraph(group for _, group in found)


def clear_group_cache() -> None:
    """Forget the cached group graphs and what was learnt about ``tokenGroups`` (done when an
    ``LDAP_SYNC_*`` setting changes)."""
    with _graph_lock:
        _graph_cache.clear()
        _token_groups_unreadable.clear()
    clear_stored_groups()


@receiver(setting_changed)
def _settings_changed(sender: Any, setting: str, **kwargs: Any) -> None:
    if setting.startswith(PREFIX):
        clear_group_cache()


# --------------------------------------------------------------------------------------------
# Writing


class _NotWritten(Exception):
    """The store skipped the user (its report says why)."""


def existing_user(record: UserRecord) -> DirectoryUser | None:
    """The identity link of the entry, with its user, if the entry was synced before."""
    found = DirectoryUser.objects.select_related("user").filter(guid=record.guid)[:1]
    return next(iter(found), None)  # a slice, not first(): guid is unique, no ORDER BY needed


def username_taken(record: UserRecord, config: MappingConfig) -> bool:
    """Whether a Django user has the entry's username (the store would adopt it)."""
    field = f"{config.username_field}__iexact"
    return get_user_model().objects.filter(**{field: record.username}).exists()


def write_user(
    record: UserRecord,
    groups: Sequence[GroupRecord],
    config: MappingConfig,
    *,
    server: str,
    link: DirectoryUser | None = None,
) -> Any | None:
    """Write one user, its profiles, photo, groups and memberships; return the Django user.

    ``link`` is the entry's identity link as :func:`existing_user` found it, when the caller
    has it: the user's memberships are then read with its groups, in one query.

    None when the store skipped the entry (a username owned by another directory entry, a
    database error that persisted over :data:`WRITE_ATTEMPTS` attempts): the reasons are
    logged as warnings by the store.
    """
    callbacks = [resolve_callback(path) for path in sync_settings.USER_CALLBACKS]
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        report = RunReport()
        store = Store(
            config,
            report,
            server=server,
            set_unusable_password=sync_settings.USER_SET_UNUSABLE_PASSWORD,
            user_callbacks=callbacks,
        )
        try:
            return _write_once(store, record, groups, link if attempt == 1 else None)
        except (IntegrityError, _NotWritten) as error:
            logger.info(
                "login of %s: write attempt %d of %d failed (%s)",
                record.username,
                attempt,
                WRITE_ATTEMPTS,
                error or "; ".join(report.problems),
            )
    logger.warning("login of %s: the user could not be written", record.username)
    return None


class _Known:
    """What the database holds for one login, read before writing (no transaction: reads only).

    ``group_ids``: guid -> Django group id of the user's groups that are linked with the same
    name, fields, DN and SID (the store would not touch them); ``stale``: the other groups,
    written by the store. ``default_ids``: LDAP_SYNC_GROUP_MEMBERSHIP_ADD_DEFAULT's groups,
    None when one is missing (the store creates or reports it). ``member_of``: the groups
    linked to a directory group or default ones that ``user_id`` is a member of, None when not
    read (no known user).
    """

    def __init__(self) -> None:
        self.group_ids: dict[str, int] = {}
        self.stale: list[GroupRecord] = []
        self.default_ids: set[int] | None = set()
        self.member_of: set[int] | None = None
        self.user_id: int | None = None


def _read_known(
    groups: Sequence[GroupRecord], default_names: Sequence[str], user_id: int | None
) -> _Known:
    """What the database holds for these groups and default groups and, given ``user_id``,
    the user's memberships of them and of every other linked group: one query."""
    known = _Known()
    membership = user_id is not None and bool(sync_settings.GROUP_MEMBERSHIP)
    default_names = list(dict.fromkeys(default_names))
    if not (groups or membership or default_names):
        return known
    fields = sorted({"name", *(name for group in groups for name in group.fields)})
    rows = _known_rows(
        [group.guid for group in groups], default_names, user_id if membership else None, fields
    )
    # (guid, group id, dn, object_sid, removed_at, member, *fields); guid None: a default group
    linked = {row[0]: row for row in rows if row[0] is not None}
    if membership:
        known.member_of = {row[1] for row in rows if row[5]}
        known.user_id = user_id
    # Two records with one name: the store decides which one gets it (and reports).
    unique_names = len({group.name for group in groups}) == len(groups)
    for group in groups:
        row = linked.get(group.guid)
        if (
            unique_names
            and row is not None
            and row[4] is None
            and row[2] == group.dn
            and row[3] == (group.object_sid or "")
            and dict(zip(fields, row[6:], strict=True)) == {**group.fields, "name": group.name}
        ):
            known.group_ids[group.guid] = row[1]
        else:
            known.stale.append(group)
    if default_names:
        name_at = 6 + fields.index("name")
        found = {row[name_at]: row[1] for row in rows if row[0] is None}
        known.default_ids = set(found.values()) if len(found) == len(default_names) else None
    return known


def _known_rows(
    guids: list[str], default_names: list[str], user_id: int | None, fields: list[str]
) -> list[tuple]:
    """One query: the directory groups with these guids and, when ``user_id`` is given, those
    the user is a member of; then the groups named ``default_names``. Each row: guid (None for
    the default groups), group id, dn, object_sid, removed_at, whether ``user_id`` is a member
    (0 without a user), then the group's ``fields``.

    Raw SQL from the models' tables and columns: the ORM spent longer compiling this query (an
    OR of two indexed lookups and a correlated EXISTS) than the database spent on the whole
    login's statements.
    """
    connection = connections[router.db_for_read(DirectoryGroup)]
    quote = connection.ops.quote_name

    def column(model: Any, name: str) -> str:
        return quote(model._meta.get_field(name).column)

    m2m = get_user_model()._meta.get_field("groups")
    through = quote(m2m.remote_field.through._meta.db_table)
    m_user, m_group = quote(m2m.m2m_column_name()), quote(m2m.m2m_reverse_name())
    links, group_table = quote(DirectoryGroup._meta.db_table), quote(Group._meta.db_table)
    group_pk, link_group = quote(Group._meta.pk.column), column(DirectoryGroup, "group")
    member, member_params = "0", []
    if user_id is not None:
        member = (
            f"CASE WHEN EXISTS (SELECT 1 FROM {through} m WHERE m.{m_user} = %s "
            f"AND m.{m_group} = g.{group_pk}) THEN 1 ELSE 0 END"
        )
        member_params = [user_id]
    values = ", ".join(f"g.{column(Group, name)}" for name in fields)
    parts: list[str] = []
    params: list[Any] = []
    terms, term_params = [], []
    if guids:
        marks = ", ".join(["%s"] * len(guids))
        terms.append(f"d.{column(DirectoryGroup, 'guid')} IN ({marks})")
        term_params += guids
    if user_id is not None:
        terms.append(
            f"d.{link_group} IN (SELECT m.{m_group} FROM {through} m WHERE m.{m_user} = %s)"
        )
        term_params.append(user_id)
    if terms:
        guid, dn, sid, removed = (
            f"d.{column(DirectoryGroup, name)}"
            for name in ("guid", "dn", "object_sid", "removed_at")
        )
        parts.append(
            f"SELECT {guid}, g.{group_pk}, {dn}, {sid}, {removed}, {member}, {values} "
            f"FROM {links} d INNER JOIN {group_table} g ON g.{group_pk} = d.{link_group} "
            f"WHERE {' OR '.join(terms)}"
        )
        params += member_params + term_params
    if default_names:
        marks = ", ".join(["%s"] * len(default_names))
        parts.append(
            f"SELECT NULL, g.{group_pk}, NULL, NULL, NULL, {member}, {values} "
            f"FROM {group_table} g WHERE g.{column(Group, 'name')} IN ({marks})"
        )
        params += member_params + default_names
    with connection.cursor() as cursor:
        cursor.execute(" UNION ALL ".join(parts), params)
        return cursor.fetchall()


def _write_once(
    store: Store,
    record: UserRecord,
    groups: Sequence[GroupRecord],
    link: DirectoryUser | None = None,
) -> Any:
    """One attempt. Reads what is there first; what is already as the directory says (the
    common login of an unchanged user) is neither written nor wrapped in a transaction."""
    s = sync_settings
    default_names = default_group_names(s.GROUP_MEMBERSHIP_ADD_DEFAULT)
    known = _read_known(groups, default_names, link.user_id if link is not None else None)
    group_ids = dict(known.group_ids)
    if known.stale:
        group_ids.update(_sync_groups(store, known.stale))
    default_ids = known.default_ids
    if default_ids is None:
        with transaction.atomic():
            default_ids = set(
                store.ensure_plain_groups(default_names, s.GROUP_MEMBERSHIP_CREATE_IF_NOT_EXISTS)
                .values()
            )  # fmt: skip
    outcomes = store.sync_users([record])  # in its own transaction
    if not outcomes or outcomes[0].user is None:
        raise _NotWritten("; ".join(store.report.problems) or "skipped by the store")
    user = outcomes[0].user
    if s.GROUP_MEMBERSHIP:
        wanted = {group_ids[g.guid] for g in groups if g.guid in group_ids} | default_ids
        member_of = known.member_of
        exact = not known.stale and known.default_ids is not None and user.pk == known.user_id
        if member_of is None or not exact:
            # Read now: the user is new, or groups were just written (adopted groups...).
            through = type(user).groups.through
            current = through.objects.filter(user_id=user.pk).values("group_id")
            member_of = set(
                DirectoryGroup.objects.filter(group_id__in=current).values_list(
                    "group_id", flat=True
                )
            )
        elif member_of == wanted:
            return user  # the memberships are already as the directory says
        with transaction.atomic():
            store.sync_memberships({user.pk: wanted}, member_of | wanted | default_ids)
    return user


def _sync_groups(store: Store, groups: Sequence[GroupRecord]) -> dict[str, int]:
    """``Store.sync_groups``; on a unique-constraint failure, one group at a time."""
    try:
        with transaction.atomic():
            return store.sync_groups(groups)
    except IntegrityError as error:
        logger.info("login: groups written concurrently (%s); writing them one by one", error)
    ids: dict[str, int] = {}
    for group in groups:
        try:
            with transaction.atomic():
                ids.update(store.sync_groups([group]))
        except (IntegrityError, DatabaseError) as error:
            logger.warning("login: group %s not written: %s", group.dn, error)
    return ids
