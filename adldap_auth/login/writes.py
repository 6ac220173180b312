"""The login's database write: one user, its groups and memberships through the store,
started again after a lost race or a lock conflict."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from django.contrib.auth import get_user_model
from django.db import DatabaseError, IntegrityError, connections, router

from ..callbacks import resolve_callback
from ..conf import default_group_names, get_config
from ..dbwrite import LockBackoff, lock_conflict, shared_backoff, write_transaction
from ..directory import DirectoryError
from ..directory.connection import DirectorySession
from ..directory.readers import Scope, read_entries
from ..mapping import GroupRecord, MappingConfig, UserRecord, entry_guid
from ..models import DirectoryGroup, DirectoryUser
from ..store import MembershipTable, RunReport, Store
from .known import read_known

logger = logging.getLogger("adldap_auth.login")

#: How many times a login re-reads the database after losing a race with another writer.
WRITE_ATTEMPTS = 3


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
    callbacks = [resolve_callback(path) for path in get_config().USER_CALLBACKS]
    entry_gone = _entry_gone(session, config, relink)
    with shared_backoff() as backoff:  # lock conflicts are retried for a while
        return _write_attempts(
            record, groups, config, server, link, adopt, callbacks, entry_gone, backoff
        )


def _write_attempts(
    record: UserRecord,
    groups: Sequence[GroupRecord],
    config: MappingConfig,
    server: str,
    link: DirectoryUser | None,
    adopt: bool,
    callbacks: list[Callable],
    entry_gone: Callable[[DirectoryUser], bool] | None,
    backoff: LockBackoff,
) -> Any | None:
    """:func:`write_user`'s attempts: again after a lost race (:data:`WRITE_ATTEMPTS` times)
    or a lock conflict (until ``backoff`` expires)."""
    attempt = 0
    while attempt < WRITE_ATTEMPTS:
        attempt += 1
        report = RunReport()
        store = _attempt_store(
            config, report, server, callbacks, record, adopt, entry_gone, backoff
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
            if _refused(record, report):
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


def _entry_gone(
    session: DirectorySession | None, config: MappingConfig, relink: bool
) -> Callable[[DirectoryUser], bool] | None:
    """The store's ``entry_gone``: always true with ``relink``, else asked to the directory
    (:func:`old_entry_gone`) when there is a session."""
    entry_gone = None
    if relink:
        entry_gone = _always
    elif session is not None:
        entry_gone = partial(old_entry_gone, session, config)
    return entry_gone


def _attempt_store(
    config: MappingConfig,
    report: RunReport,
    server: str,
    callbacks: list[Callable[..., Any]],
    record: UserRecord,
    adopt: bool,
    entry_gone: Callable[[DirectoryUser], bool] | None,
    backoff: LockBackoff,
) -> Store:
    """The store of one write attempt of :func:`write_user`."""
    return Store(
        config,
        report,
        server=server,
        set_unusable_password=get_config().USER_SET_UNUSABLE_PASSWORD,
        user_callbacks=callbacks,
        adopt_users=[record.username] if adopt else (),
        entry_gone=entry_gone,
        # The user's own write often writes nothing (an unchanged user): no write lock
        # taken, until a write met another writer's lock (then it waits its turn).
        lock_first=backoff.started,
    )


def _refused(record: UserRecord, report: RunReport) -> bool:
    """Whether the store refused the user (an adoption refused, an entry skipped); logged."""
    if report.counts["users_adoption_refused"] or report.counts["users_skipped"]:
        # A decision, not a race: another attempt would decide the same.
        logger.warning(
            "directory login of %s refused: %s", record.username, "; ".join(report.problems)
        )
        return True
    return False


def _always(link: DirectoryUser) -> bool:
    return True


def old_entry_gone(session: DirectorySession, config: MappingConfig, link: DirectoryUser) -> bool:
    """Whether the directory entry of ``link`` no longer exists, asked before a re-created
    account (its username, a new objectGUID/entryUUID) takes that Django user over: a base
    read of the link's DN, then a search of LDAP_SYNC_BIND_SEARCH for the link's id (the entry
    may have moved). False when either finds it, or when the directory cannot tell."""
    from ..resync import identity_filter  # resync imports this module

    attribute = config.identity_attribute
    try:
        entry = session.read_entry(link.dn, [attribute])
        if entry is not None and entry_guid(entry, attribute) == link.guid:
            return False
        scope = Scope(get_config().BIND_SEARCH, identity_filter(attribute, [link.guid]))
        for _entry in read_entries(session, scope, [attribute]):
            return False
    except DirectoryError as error:
        logger.warning("login: whether entry %s still exists is unknown: %s", link.dn, error)
        return False
    return True


def _write_once(
    store: Store,
    record: UserRecord,
    groups: Sequence[GroupRecord],
    link: DirectoryUser | None = None,
) -> Any:
    """One attempt. Reads what is there first; what is already as the directory says (the
    common login of an unchanged user) is neither written nor wrapped in a transaction."""
    s = get_config()
    default_names = default_group_names(s.GROUP_MEMBERSHIP_ADD_DEFAULT)
    known = read_known(groups, default_names, link.user_id if link is not None else None)
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
