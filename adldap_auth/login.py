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

import logging
import os
import socket
import unicodedata
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import ldap
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.core.signals import setting_changed
from django.db import DatabaseError, IntegrityError, connections, router
from django.dispatch import receiver
from ldap.filter import escape_filter_chars

from .callbacks import resolve_callback
from .conf import PREFIX, default_group_names, sync_settings
from .dbwrite import LockBackoff, lock_conflict, write_transaction
from .directory import DirectoryError, Entry
from .directory.connection import DirectorySession
from .directory.readers import Scope, and_filter, member_filter, read_entries
from .mapping import (
    GroupRecord,
    MappingConfig,
    UserRecord,
    build_mapping_config,
    entry_guid,
    user_attribute_list,
)
from .membership import direct_group_guids, live_graph, membership_scope
from .models import DirectoryGroup, DirectoryUser
from .nesting import VERSION_KEY, forget_loaded, stored_graph
from .store import MembershipTable, RunReport, Store

logger = logging.getLogger("adldap_auth.login")

__all__ = [
    "IN_CHAIN",
    "WRITE_ATTEMPTS",
    "DirectoryAttrs",
    "clear_group_cache",
    "connected_uri",
    "is_ad_entry",
    "is_exempt",
    "login_user_attributes",
    "normalize_login_name",
    "user_groups",
    "user_search_filter",
    "username_attribute",
    "write_user",
]

#: Characters refused anywhere in a typed login name (Unicode categories): controls (tab,
#: newline, NUL...), invisible format characters (zero-width spaces, bidi overrides) and
#: line/paragraph separators. The mapper refuses the same ones in directory usernames
#: (:func:`adldap_auth.mapping.map_user`), so no account is locked out by this rule.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
#: LDAP_MATCHING_RULE_IN_CHAIN: transitive ``member`` matching on Active Directory.
IN_CHAIN = "1.2.840.113556.1.4.1941"
#: How many times a login re-reads the database after losing a race with another writer.
WRITE_ATTEMPTS = 3
#: Attributes read on top of the mapper's: both usual identity attributes (to recognise AD
#: from the entry, without a rootDSE read).
DETECTION_ATTRIBUTES = ("objectguid", "entryuuid", "objectsid")


# --------------------------------------------------------------------------------------------
# Login names and the user search


def normalize_login_name(username: str) -> str:
    """The name a user typed, made searchable: plain spaces (U+0020) stripped,
    ``DOMAIN\\user`` -> ``user``.

    ``user@domain`` is returned unchanged (see :func:`user_search_filter`). Gives "" (the
    login is refused) for a name with a control, format or line/paragraph separator character
    anywhere (NUL, tab, newline, a zero-width space...), checked *before* any stripping, and
    for other white space (a no-break space...) left at either end once plain spaces are
    stripped. No directory username has the former (the mapper refuses them); the directory's
    matching rules (RFC 4518) drop or fold both, so ``alice\\t`` would otherwise find alice;
    and Samba compares filter values only up to a NUL.
    """
    if any(unicodedata.category(char) in _REFUSED_CATEGORIES for char in username):
        return ""
    name = username.strip(" ")
    if "\\" in name:
        name = name.partition("\\")[2].strip(" ")
    if name != name.strip():
        return ""
    return name


def _local_part(login: str) -> str:
    return login.rpartition("@")[0].strip(" ") if "@" in login else ""


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
    """The groups Django manages that the user is in, directly or by nesting: the batch's
    answer, by the batch's graph (see the module docstring). Empty when groups or memberships
    are not synced. Raises :class:`~adldap_auth.directory.DirectoryError` when a search fails.
    """
    s = sync_settings
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
    filterstr = member_filter(sync_settings.GROUP_MEMBERSHIP_FILTER, record.dn)
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
    session: DirectorySession | None = None,
    adopt: bool = False,
    relink: bool = False,
) -> Any | None:
    """Write one user, its profiles, photo, groups and memberships; return the Django user.

    ``link`` is the entry's identity link as :func:`existing_user` found it, when the caller
    has it: the user's memberships are then read with its groups, in one query.

    Adoption (the entry has no link, a Django user has its username) follows the store's
    rules. ``session``: when that user is linked to another entry, the directory is asked
    whether that entry is gone (:func:`old_entry_gone`), and only then is the user moved to
    this entry. ``adopt`` and ``relink`` (``manage.py ldaplink``): the user is linked whatever
    the adoption rules, and moved from another entry even if that one still exists.

    None when the store skipped the entry (an adoption refused, a username owned by another
    directory entry, a database error that persisted over :data:`WRITE_ATTEMPTS` attempts):
    the reasons are logged as warnings.
    """
    callbacks = [resolve_callback(path) for path in sync_settings.USER_CALLBACKS]
    entry_gone = None
    if relink:
        entry_gone = _always
    elif session is not None:
        entry_gone = partial(old_entry_gone, session, config)
    backoff = LockBackoff()  # lock conflicts are retried for a while
    attempt = 0
    while attempt < WRITE_ATTEMPTS:
        attempt += 1
        report = RunReport()
        store = Store(
            config,
            report,
            server=server,
            set_unusable_password=sync_settings.USER_SET_UNUSABLE_PASSWORD,
            user_callbacks=callbacks,
            adopt_users=[record.username] if adopt else (),
            entry_gone=entry_gone,
            # The user's own write often writes nothing (an unchanged user): no write lock
            # taken, until a write met another writer's lock (then it waits its turn).
            lock_first=backoff.started,
        )
        try:
            first = attempt == 1 and not backoff.started
            return _write_once(store, record, groups, link if first else None)
        except (IntegrityError, _NotWritten, DatabaseError) as error:
            in_transaction = connections[router.db_for_write(DirectoryUser)].in_atomic_block
            busy = lock_conflict(error) or report.lock_conflicts > 0
            if not isinstance(error, IntegrityError | _NotWritten) and (not busy or in_transaction):
                raise  # not a race, or the caller's transaction went with it
            # Another writer (a batch run's transaction) holds the database: wait for it,
            # longer each time, for at most LOCKED_RETRY_SECONDS; not a lost race.
            if busy and not in_transaction and not backoff.expired():
                logger.info(
                    "login of %s: the database is busy (%s); trying again", record.username, error
                )
                backoff.sleep()
                attempt -= 1
                continue
            if report.counts["users_adoption_refused"] or report.counts["users_skipped"]:
                # A decision, not a race: another attempt would decide the same.
                logger.warning(
                    "directory login of %s refused: %s", record.username, "; ".join(report.problems)
                )
                return None
            logger.info(
                "login of %s: write attempt %d of %d failed (%s)",
                record.username,
                attempt,
                WRITE_ATTEMPTS,
                error or "; ".join(report.problems),
            )
    logger.warning("login of %s: the user could not be written", record.username)
    return None


def _always(link: DirectoryUser) -> bool:
    return True


def old_entry_gone(session: DirectorySession, config: MappingConfig, link: DirectoryUser) -> bool:
    """Whether the directory entry of ``link`` no longer exists, asked before a re-created
    account (its username, a new objectGUID/entryUUID) takes that Django user over: a base
    read of the link's DN, then a search of LDAP_SYNC_BIND_SEARCH for the link's id (the entry
    may have moved). False when either finds it, or when the directory cannot tell."""
    from .resync import identity_filter  # resync imports this module

    attribute = config.identity_attribute
    try:
        entry = session.read_entry(link.dn, [attribute])
        if entry is not None and entry_guid(entry, attribute) == link.guid:
            return False
        scope = Scope(sync_settings.BIND_SEARCH, identity_filter(attribute, [link.guid]))
        for _entry in read_entries(session, scope, [attribute]):
            return False
    except DirectoryError as error:
        logger.warning("login: whether entry %s still exists is unknown: %s", link.dn, error)
        return False
    return True


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
    unique_names = len({group.name.lower() for group in groups}) == len(groups)
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
        with write_transaction():
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
            table = MembershipTable.of(type(user))
            current = table.model.objects.filter(**{table.user: user.pk}).values(table.group)
            member_of = set(
                DirectoryGroup.objects.filter(group_id__in=current).values_list(
                    "group_id", flat=True
                )
            )
        elif member_of == wanted:
            return user  # the memberships are already as the directory says
        with write_transaction():
            store.sync_memberships({user.pk: wanted}, member_of | wanted | default_ids)
    return user


def _sync_groups(store: Store, groups: Sequence[GroupRecord]) -> dict[str, int]:
    """``Store.sync_groups``; on a unique-constraint failure, one group at a time."""
    try:
        with write_transaction():
            return store.sync_groups(groups)
    except IntegrityError as error:
        logger.info("login: groups written concurrently (%s); writing them one by one", error)
    ids: dict[str, int] = {}
    for group in groups:
        try:
            with write_transaction():
                ids.update(store.sync_groups([group]))
        except (IntegrityError, DatabaseError) as error:
            if lock_conflict(error):
                raise  # the whole login's write starts again (write_user)
            logger.warning("login: group %s not written: %s", group.dn, error)
    return ids
