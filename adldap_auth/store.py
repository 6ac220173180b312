"""Writing mapped records to the database: diff first, then bulk writes, one transaction a batch.

The store knows nothing of LDAP. It receives :class:`~adldap_auth.mapping.UserRecord` and
:class:`~adldap_auth.mapping.GroupRecord` objects, compares them with what the database holds,
and writes only what differs, so a run over an unchanged directory issues no write at all.

A batch that fails on a database constraint is rolled back and retried entry by entry, each in
its own savepoint, so one bad row is reported and skipped while the rest of the batch lands.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import UNUSABLE_PASSWORD_PREFIX
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.db import DatabaseError, IntegrityError, connections, router, transaction
from django.db.models import Count
from django.db.models.functions import Lower
from django.utils import timezone

from . import signals
from .conf import sync_settings
from .dbwrite import lock_conflict, retry_locked, write_transaction
from .mapping import (
    PHOTO_MAX_SCANS,
    GroupRecord,
    MappingConfig,
    Photo,
    PhotoError,
    UserRecord,
    photo_digest,
    photo_filename,
    validate_photo,
)
from .models import DirectoryGroup, DirectoryUser
from .sessions import end_sessions

logger = logging.getLogger("adldap_auth.sync")
T = TypeVar("T")

#: How many problems a run keeps in its record (all are logged).
MAX_PROBLEMS = 200
#: How long a rejected photo is remembered (see :meth:`Store._checked_photo`).
REJECTED_PHOTO_MEMO_SECONDS = 7 * 24 * 3600
#: Groups written in one transaction by :meth:`Store.sync_groups`.
GROUP_BATCH_SIZE = 1000


@dataclass
class RunReport:
    """Counts, problems and (optionally) the list of planned/made changes of one run."""

    counts: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    changes: list[str] | None = None  # collected only when asked (dry runs, tests)
    #: users not written because another writer held the database (:func:`lock_conflict`):
    #: the login path waits and tries again
    lock_conflicts: int = 0

    def problem(self, message: str, *args: Any) -> None:
        text = message % args if args else message
        logger.warning("%s", text)
        self.counts["errors"] += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    def snapshot(self) -> tuple[Counter, int, int]:
        changes = len(self.changes) if self.changes is not None else 0
        return Counter(self.counts), changes, len(self.problems)

    def restore(self, saved: tuple[Counter, int, int]) -> None:
        """Forget what a rolled-back attempt counted and reported: its retry reports it again
        (errors and problem lines are counted once)."""
        counts, changes, problems = saved
        self.counts = Counter(counts)
        if self.changes is not None:
            del self.changes[changes:]
        del self.problems[problems:]

    def warning(self, message: str, *args: Any) -> None:
        """A problem that did not stop an entry from syncing (truncated value, bad photo)."""
        text = message % args if args else message
        logger.warning("%s", text)
        self.counts["warnings"] += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    def change(self, text: str) -> None:
        if self.changes is not None:
            self.changes.append(text)


@dataclass
class UserOutcome:
    """What happened to one user record in a batch."""

    record: UserRecord
    user: Any | None = None  # the Django user (None when skipped or not created in a dry run)
    created: bool = False
    updated: bool = False


def adoption_obstacles(user: Any) -> list[str]:
    """Why the directory must not take over an existing Django user by username: it is a
    superuser, staff, or can log in with a local password (an empty password field cannot)."""
    reasons = []
    if getattr(user, "is_superuser", False):
        reasons.append("is a superuser")
    if getattr(user, "is_staff", False):
        reasons.append("is staff")
    if user.password and user.has_usable_password():
        reasons.append("has a usable password")
    return reasons


#: Insert-or-ignore in the SQL of the databases whose own statement beats ``bulk_create``.
_INSERT_OR_IGNORE = {"sqlite": "INSERT OR IGNORE INTO", "mysql": "INSERT IGNORE INTO"}


@dataclass(frozen=True)
class MembershipTable:
    """The user model's user-groups table (the through model of its ``groups`` field) and the
    attribute names of its two columns: ``user_id``/``group_id`` for ``auth.User``, but
    ``person_id`` for ``AUTH_USER_MODEL = "accounts.Person"``. Membership queries name the
    columns through it, never as ``user_id``."""

    model: Any
    user: str  # "user_id", "person_id"...
    group: str  # "group_id"

    @classmethod
    def of(cls, user_model: Any) -> MembershipTable:
        m2m = user_model._meta.get_field("groups")
        through = m2m.remote_field.through
        user = through._meta.get_field(m2m.m2m_field_name()).attname
        group = through._meta.get_field(m2m.m2m_reverse_field_name()).attname
        return cls(through, user, group)


def unusable_password() -> str:
    """What ``make_password(None)`` returns ("!" and 40 random characters of its alphabet),
    from one ``secrets`` call instead of 40: a first run of 100,000 users spent seconds in it."""
    return UNUSABLE_PASSWORD_PREFIX + secrets.token_hex(20)


class Store:
    """Applies records to the database for one run (batch sync) or one login.

    ``dry_run`` computes and reports every change but writes nothing.
    """

    def __init__(
        self,
        config: MappingConfig,
        report: RunReport,
        *,
        server: str = "",
        dry_run: bool = False,
        set_unusable_password: bool = True,
        user_callbacks: Sequence[Callable] = (),
        now: datetime | None = None,
        adopt_users: Iterable[str] = (),
        entry_gone: Callable[[DirectoryUser], bool] | None = None,
        defer_relinks: bool = False,
        defer_membership_removals: bool = False,
        before_membership_write: Callable[[], None] | None = None,
        lock_first: bool = True,
    ):
        self.config = config
        self.report = report
        self.server = server
        self.dry_run = dry_run
        self.set_unusable_password = set_unusable_password
        self.user_callbacks = list(user_callbacks)
        self.now = now or timezone.now()
        self.User = get_user_model()
        self.username_field = config.username_field
        self.profile_models = [(spec, apps.get_model(spec.label)) for spec in config.profiles]
        #: username (lower-case) -> guid of the entry that claimed it in this run
        self._claimed_usernames: dict[str, str] = {}
        #: (storage, name) of the photo files written in the current batch's transaction
        self._written_files: list[tuple[Any, str]] = []
        #: dry runs: placeholder id (negative) -> name of a user or group the run would create
        self._placeholders: dict[int, str] = {}
        #: usernames (lower-case) adopted whatever the adoption rules (``manage.py ldaplink``)
        self.adopt_users = {name.lower() for name in adopt_users}
        #: asked whether the entry of a link is gone from the directory, before a new entry
        #: with the same username takes its user over (see :meth:`_relink_decision`)
        self.entry_gone = entry_gone
        #: batch runs: such entries wait for the end of the read (:meth:`sync_deferred_users`)
        self.defer_relinks = defer_relinks
        self.deferred_relinks: list[UserRecord] = []
        #: guids of the directory groups skipped by a decision of this run (adoption refused,
        #: name held by another group): not tried again, so reported once
        self._skipped_groups: set[str] = set()
        #: batch runs: memberships found gone are only collected (row ids of the user-groups
        #: table) until the whole scope was read and the removal threshold checked
        #: (:meth:`apply_membership_removals`); a login applies them at once.
        self.defer_membership_removals = defer_membership_removals
        self.pending_membership_removals: list[int] = []
        #: memberships of managed groups held before the first membership write of the run
        self.managed_memberships = 0
        self._managed_counted = False
        #: batch runs: called once, before the first membership write (committed first, or
        #: with it), to say the stored nesting no longer describes Django's memberships
        self.before_membership_write = before_membership_write
        #: transactions take SQLite's write lock first (:meth:`_transaction`); a login sets
        #: False for its first attempt, which often writes nothing (an unchanged user)
        self.lock_first = lock_first

    def _placeholder_id(self, name: str) -> int:
        """Dry runs: a negative id standing for a user or group the run would create, so that
        the memberships of new users and groups are planned like the others."""
        self._placeholders[-len(self._placeholders) - 1] = name
        return -len(self._placeholders)

    def _transaction(self) -> AbstractContextManager[None]:
        """A write transaction: on SQLite it waits its turn for the write lock rather than
        failing when a login (or a run) writes (:func:`~adldap_auth.dbwrite.write_transaction`).
        A dry run writes nothing, so it takes no write lock; nor does a store made with
        ``lock_first=False``, whose transactions may fail at once on SQLite's lock instead."""
        if self.dry_run or not self.lock_first:
            return transaction.atomic()
        return write_transaction()

    # -- groups ------------------------------------------------------------------------------

    def sync_groups(self, records: Iterable[GroupRecord]) -> dict[str, int]:
        """Create, rename and link groups; return guid -> Django group id for every record
        (in a dry run, a negative placeholder for a group the run would create)."""
        records = list(records)
        links = {
            link.guid: link
            for link in DirectoryGroup.objects.select_related("group")
            .filter(guid__in=[r.guid for r in records])
        }
        by_name = self._groups_by_lower_name([r.name for r in records if r.guid not in links])
        ids: dict[str, int] = {}
        holders = self._name_holders(records, links)
        for start in range(0, len(records), GROUP_BATCH_SIZE):
            # One transaction a batch, one savepoint a group: a commit per group costs a disk
            # sync each (10,000 groups: seconds), a single transaction would hold SQLite's
            # write lock for the whole loop.
            chunk = records[start : start + GROUP_BATCH_SIZE]
            skipped = set(self._skipped_groups)

            def write(chunk: list[GroupRecord] = chunk) -> None:
                with self._transaction():
                    self._sync_group_chunk(chunk, links, by_name, holders, ids)

            def before_retry(chunk: list[GroupRecord] = chunk, skipped: set = skipped) -> None:
                self._skipped_groups = set(skipped)
                for record in chunk:  # ids of groups the rollback may have undone
                    ids.pop(record.guid, None)
                self._reread_groups(chunk, links, by_name)

            self._retry_locked(write, "sync of groups", before_retry)
        return ids

    def _sync_group_chunk(
        self,
        chunk: list[GroupRecord],
        links: dict[str, DirectoryGroup],
        by_name: dict[str, list[Group]],
        holders: dict[str, GroupRecord],
        ids: dict[str, int],
    ) -> None:
        """The groups of one transaction of :meth:`sync_groups`, one savepoint each."""
        for record in chunk:
            if record.guid in self._skipped_groups:
                continue
            holder = holders.get(record.name.lower(), record)
            if holder is not record:
                record = self._name_taken(record, holder, links.get(record.guid))
                if record is None:
                    continue
            try:
                group_id = self._sync_group(record, links.get(record.guid), by_name)
            except IntegrityError:
                # Another writer (a login, a second run) created or linked it meanwhile.
                group_id = self._sync_group_after_race(record)
            if group_id is not None:
                ids[record.guid] = group_id

    def _reread_groups(
        self,
        chunk: list[GroupRecord],
        links: dict[str, DirectoryGroup],
        by_name: dict[str, list[Group]],
    ) -> None:
        """Before a rolled-back transaction of :meth:`sync_groups` is done again: its groups'
        links and Django groups as the database now holds them (the objects in memory carry
        the rolled-back changes, and other writers may have written since)."""
        guids = [record.guid for record in chunk]
        for guid in guids:
            links.pop(guid, None)
        links.update(
            (link.guid, link)
            for link in DirectoryGroup.objects.select_related("group").filter(guid__in=guids)
        )
        names = [record.name for record in chunk if record.guid not in links]
        for name in names:
            by_name.pop(name.lower(), None)
        by_name.update(self._groups_by_lower_name(names))

    def _retry_locked(
        self, write: Callable[[], T], what: str, before_retry: Callable[[], None] | None = None
    ) -> T:
        """``write()``, one write transaction of a batch run, done again after a growing pause
        while it meets a lock conflict (on SQLite: logins holding the write lock beyond the
        busy timeout), so that a run survives contention. Only when that transaction is the
        outermost one, so that the retry redoes all the rolled-back work (inside a caller's
        transaction the error is raised: :func:`~adldap_auth.dbwrite.retry_locked`). Before a
        retry, the report forgets what the attempt counted and ``before_retry`` reads again
        what the attempt relied on. A login's store (``lock_first=False``) and dry runs call
        ``write`` once."""
        if self.dry_run or not self.lock_first:
            return write()
        saved = self.report.snapshot()
        attempts = 0

        def attempt() -> T:
            nonlocal attempts
            if attempts:
                self.report.restore(saved)
                if before_retry is not None:
                    before_retry()
            attempts += 1
            return write()

        return retry_locked(attempt, what, using=router.db_for_write(Group))

    @staticmethod
    def _groups_by_lower_name(names: Iterable[str]) -> dict[str, list[Group]]:
        """Django groups by lower-case name. Group names are compared case-insensitively, as
        the directory and MariaDB's default collation compare them (``Team`` and ``team`` are
        one name there), so a directory gives the same groups on every database; a list, as
        SQLite and PostgreSQL may hold two groups differing only in case."""
        lowered = {name.lower() for name in names}
        if not lowered:
            return {}
        query = (
            Group.objects.select_related("directory_link")
            .annotate(_lower_name=Lower("name"))
            .filter(_lower_name__in=lowered)
        )
        found: dict[str, list[Group]] = {}
        for group in query.order_by("name"):
            found.setdefault(group.name.lower(), []).append(group)
        return found

    @staticmethod
    def _name_holders(
        records: list[GroupRecord], links: dict[str, DirectoryGroup]
    ) -> dict[str, GroupRecord]:
        """Names (lower-case) shared by several directory groups, also when they differ only
        in case -> the one that gets the Django group of that name: the one linked to it
        already, else the first read (which holds it from then on). A newcomer never takes an
        established group's name, nor so its members."""
        named: dict[str, list[GroupRecord]] = {}
        for record in records:
            named.setdefault(record.name.lower(), []).append(record)
        holders = {}
        for name, same in named.items():
            if len(same) > 1:
                linked = [
                    r for r in same if r.guid in links and links[r.guid].group.name.lower() == name
                ]
                holders[name] = (linked or same)[0]
        return holders

    def _name_taken(
        self, record: GroupRecord, holder: GroupRecord, link: DirectoryGroup | None
    ) -> GroupRecord | None:
        """A directory group named like ``holder``, which keeps the Django group of that name.
        Reported; a new one is skipped, a linked one keeps its Django group's present name
        (and its members), until one of the two is renamed in the directory."""
        if link is None:
            self.report.problem(
                "group %s skipped: directory group %s has the same name %r%s and keeps the "
                "Django group; rename one of them in the directory",
                record.dn,
                holder.dn,
                holder.name,
                "" if holder.name == record.name else " (names differ only in case)",
            )
            self.report.counts["groups_skipped"] += 1
            self._skipped_groups.add(record.guid)
            return None
        self.report.problem(
            "group %s not renamed to %r: directory group %s has that name and keeps the "
            "Django group; rename one of them in the directory",
            record.dn,
            record.name,
            holder.dn,
        )
        name = link.group.name
        return dataclasses.replace(record, name=name, fields={**record.fields, "name": name})

    def _sync_group_after_race(self, record: GroupRecord) -> int | None:
        link = (
            DirectoryGroup.objects.select_related("group")
            .filter(guid=record.guid)
            .first()
        )
        by_name = self._groups_by_lower_name([record.name])
        try:
            return self._sync_group(record, link, by_name)
        except IntegrityError as error:
            self.report.problem("group %s not written: %s", record.dn, error)
            return None

    def _sync_group(
        self, record: GroupRecord, link: DirectoryGroup | None, by_name: dict[str, list[Group]]
    ) -> int | None:
        fields = dict(record.fields)
        fields["name"] = record.name
        if link is not None:
            return self._update_group(record, link, fields)
        found = by_name.get(record.name.lower(), [])
        if len(found) > 1:
            self.report.problem(
                "group %s skipped: Django groups %s differ only in case, so the sync cannot tell "
                "which one is %r; rename or merge them",
                record.dn,
                " and ".join(repr(group.name) for group in found),
                record.name,
            )
            self._skipped_groups.add(record.guid)
            return None
        group = found[0] if found else None
        other_link = getattr(group, "directory_link", None) if group is not None else None
        if other_link is not None and other_link.guid == record.guid:
            # Linked to this very entry since ``links`` was read (a login, a second run: the
            # two reads of sync_groups are not one snapshot): the entry's group, as if found.
            other_link.group = group
            return self._update_group(record, other_link, fields)
        if other_link is not None:
            self.report.problem(
                "group %s skipped: Django group %r is linked to another directory entry (%s)",
                record.dn,
                group.name,
                other_link.dn,
            )
            self._skipped_groups.add(record.guid)
            return None
        if group is not None and not self._may_adopt_group(record, group):
            self._skipped_groups.add(record.guid)
            return None
        created = group is None
        self.report.counts["groups_created" if created else "groups_adopted"] += 1
        self.report.change(f"{'create' if created else 'adopt'} group {record.name!r}")
        if self.dry_run:
            return group.pk if group else self._placeholder_id(record.name)
        with self._transaction():
            if group is None:
                group = Group.objects.create(**fields)
            else:  # adopted: from now on, as the directory names it ("TEAM" becomes "Team")
                changed = [name for name, value in fields.items() if getattr(group, name) != value]
                for name in changed:
                    setattr(group, name, fields[name])
                if changed:
                    group.save(update_fields=changed)
            link = DirectoryGroup(
                group=group,
                guid=record.guid,
                dn=record.dn,
                object_sid=record.object_sid or "",
                last_changed=self.now,
            )
            link.save(force_insert=True)
        self._send(signals.group_synced, group=group, created=created)
        return group.pk

    def _may_adopt_group(self, record: GroupRecord, group: Group) -> bool:
        """Whether a directory group may take over the unlinked Django group of its name:
        only when LDAP_SYNC_ADOPT_GROUPS names it. Such a group was made by an admin or an
        earlier tool, and adopting it would hand its permissions and members to the
        directory. A refusal is reported; the Django group is left exactly as it was."""
        if sync_settings.may_adopt_group(group.name):
            return True
        permissions = group.permissions.count()
        self.report.problem(
            "group %s skipped: Django group %r was not created by the sync%s; it is adopted "
            "only when LDAP_SYNC_ADOPT_GROUPS names it (or rename one of the two)",
            record.dn,
            group.name,
            f" and holds {permissions} permissions" if permissions else "",
        )
        self.report.counts["groups_adoption_refused"] += 1
        return False

    def _update_group(self, record: GroupRecord, link: DirectoryGroup, fields: dict) -> int:
        group = link.group
        changed = [f for f, v in fields.items() if getattr(group, f) != v]
        link_changed = (
            link.dn != record.dn
            or link.removed_at is not None
            or link.object_sid != (record.object_sid or "")
        )
        if (
            "name" in changed
            and Group.objects.filter(name__iexact=record.name).exclude(pk=group.pk).exists()
        ):
            self.report.problem(
                "group %s not renamed to %r: a Django group has that name", record.dn, record.name
            )
            changed = [f for f in changed if f != "name"]
        if not (changed or link_changed):
            return group.pk
        self.report.counts["groups_updated"] += 1
        self.report.change(f"update group {record.name!r}")
        if self.dry_run:
            return group.pk
        with self._transaction():
            for name in changed:
                setattr(group, name, fields[name])
            if changed:
                group.save(update_fields=changed)
            link.dn, link.removed_at = record.dn, None
            link.object_sid = record.object_sid or ""
            link.last_changed = self.now
            link.save(update_fields=["dn", "removed_at", "object_sid", "last_changed"])
        self._send(signals.group_synced, group=group, created=False)
        return group.pk

    def ensure_plain_groups(self, names: Iterable[str], create: bool) -> dict[str, int]:
        """Django groups by name (for LDAP_SYNC_GROUP_MEMBERSHIP_ADD_DEFAULT), created if asked."""
        names = list(dict.fromkeys(names))
        found = dict(Group.objects.filter(name__in=names).values_list("name", "pk"))
        others = self._groups_by_lower_name(name for name in names if name not in found)
        for name in names:
            if name not in found and len(others.get(name.lower(), [])) == 1:
                found[name] = others[name.lower()][0].pk  # the one group of another case
            if name in found:
                continue
            if not create:
                self.report.problem("default group %r does not exist and is not created", name)
                continue
            if self.dry_run:
                self.report.counts["groups_created"] += 1
                self.report.change(f"create group {name!r}")
                continue
            found[name] = self._retry_locked(
                lambda name=name: self._create_plain_group(name), "creation of a default group"
            )
        return found

    def _create_plain_group(self, name: str) -> int:
        """Create the Django group ``name`` and return its id; or, when another writer (a
        login, a run) created it since it was looked up, the id of that group, read again:
        its insert wins and ours fails on the unique name, in a savepoint of its own so that
        the caller's transaction goes on."""
        try:
            with self._transaction():
                group_id = Group.objects.create(name=name).pk
        except IntegrityError:
            same = self._groups_by_lower_name([name]).get(name.lower(), [])
            exact = [group for group in same if group.name == name] or same
            if len(exact) != 1:
                raise  # not a group of this name created meanwhile
            return exact[0].pk
        self.report.counts["groups_created"] += 1
        self.report.change(f"create group {name!r}")
        return group_id

    # -- users -------------------------------------------------------------------------------

    def sync_users(self, records: Sequence[UserRecord]) -> list[UserOutcome]:
        """Create, update, adopt and link a batch of users, with their profiles and photos.

        Disabled entries are updated if already known but never created. Returns one outcome
        per record that was not skipped.
        """
        return self._sync_users(self._drop_duplicate_usernames(records))

    def _sync_users(self, records: list[UserRecord], raced: bool = False) -> list[UserOutcome]:
        """:meth:`sync_users`. A batch that fails is done again one user at a time, each from
        a new read; a user whose insert another writer's (a login's) beat between that read
        and the insert (``IntegrityError``) is read and written once more (``raced``)."""
        saved = self.report.snapshot()
        self._written_files = []
        try:
            with self._transaction():
                outcomes = self._sync_user_batch(records)
        except (IntegrityError, DatabaseError) as error:
            self.report.restore(saved)  # the rolled-back batch changed nothing
            self._delete_written_files()  # ...and leaves no file that no row names
            if len(records) == 1 and isinstance(error, IntegrityError) and not raced:
                return self._sync_users(records, raced=True)
            if len(records) == 1:
                self.report.problem("user %s not written: %s", records[0].dn, error)
                self.report.lock_conflicts += lock_conflict(error)
                return []
            logger.warning("batch of %d users failed (%s); retrying one by one", len(records), error)
            outcomes = []
            for record in records:
                outcomes.extend(self._sync_users([record]))
            return outcomes
        self._after_commit(outcomes)
        return outcomes

    def _drop_duplicate_usernames(self, records: Sequence[UserRecord]) -> list[UserRecord]:
        kept = []
        for record in records:
            key = record.username.lower()
            owner = self._claimed_usernames.setdefault(key, record.guid)
            if owner != record.guid:
                self.report.problem(
                    "user %s skipped: username %r is already used by another directory entry",
                    record.dn,
                    record.username,
                )
                self.report.counts["users_skipped"] += 1
                continue
            kept.append(record)
        return kept

    def _sync_user_batch(self, records: Sequence[UserRecord]) -> list[UserOutcome]:
        links = {
            link.guid: link
            for link in DirectoryUser.objects.select_related("user").filter(
                guid__in=[r.guid for r in records]
            )
        }
        unlinked = [r for r in records if r.guid not in links]
        candidates = self._users_by_lower_username([r.username for r in unlinked])
        other_links = self._links_of_users([u for found in candidates.values() for u in found])
        self._take_late_links(links, {r.guid for r in unlinked}, candidates, other_links)
        outcomes: list[UserOutcome] = []
        to_create: list[tuple[UserRecord, Any]] = []
        to_update: dict[str, list[Any]] = {}
        links_to_update: list[DirectoryUser] = []
        relinked: list[DirectoryUser] = []
        for record in records:
            link = links.get(record.guid)
            if link is not None:
                user = link.user
            else:
                found = candidates.get(record.username.lower(), [])
                match = self._match_unlinked(record, found, other_links)
                if match is None:  # skipped (reported) or deferred
                    continue
                user, link = match
                if link is not None:  # relinked: from now on, as if linked to this entry
                    links[record.guid] = link
                    relinked.append(link)
            if user is None:
                if record.disabled:
                    self.report.counts["users_skipped_disabled"] += 1
                    continue
                user = self.User(**record.fields)
                if self.set_unusable_password:
                    user.password = unusable_password()
                to_create.append((record, user))
                outcomes.append(UserOutcome(record, user, created=True))
                self.report.change(f"create user {record.username!r}")
                continue
            changed = [f for f, v in record.fields.items() if getattr(user, f) != v]
            restore = link is not None and link.removed_at is not None and not record.disabled
            if restore and not user.is_active:
                changed.append("is_active")
            for name in changed:
                setattr(user, name, True if name == "is_active" else record.fields[name])
            if changed:
                to_update.setdefault(",".join(sorted(changed)), []).append(user)
                self.report.change(f"update user {record.username!r}: {', '.join(sorted(changed))}")
            if restore:
                self.report.counts["users_restored"] += 1
                self.report.change(f"restore user {record.username!r}")
            if link is None:
                self.report.counts["users_adopted"] += 1
                self.report.change(f"adopt user {record.username!r}")
            elif self._link_changed(link, record) or restore or changed:
                self._refresh_link(link, record, restore)
                links_to_update.append(link)
            outcomes.append(UserOutcome(record, user, created=False, updated=bool(changed)))

        self.report.counts["users_created"] += len(to_create)
        self.report.counts["users_updated"] += sum(1 for o in outcomes if o.updated)
        if self.dry_run:
            for outcome in outcomes:
                if outcome.created:
                    # A placeholder id, so that the plan includes the new user's memberships.
                    outcome.user.pk = self._placeholder_id(outcome.record.username)
            self._sync_profiles(outcomes, links)
            return outcomes

        if to_create:
            self.User.objects.bulk_create([user for _, user in to_create])
            self._fetch_missing_pks([user for _, user in to_create])
        for field_key, users in to_update.items():
            self.User.objects.bulk_update(users, field_key.split(","))
        for link in relinked:
            link.save(update_fields=["guid"])
        if links_to_update:
            DirectoryUser.objects.bulk_update(
                links_to_update,
                ["dn", "server", "object_sid", "last_changed", "removed_at", "removal_reason"],
            )
        # New links are inserted last, once _sync_profiles has set their photo digests: an
        # insert, not an insert and an update (bulk_update is slow: CASE WHEN per row).
        new_links = [
            self._new_link(outcome.user, outcome.record)
            for outcome in outcomes
            if outcome.record.guid not in links
        ]
        links.update((new_link.guid, new_link) for new_link in new_links)
        self._sync_profiles(outcomes, links)
        if new_links:
            DirectoryUser.objects.bulk_create(new_links)
        return outcomes

    def _users_by_lower_username(self, usernames: list[str]) -> dict[str, list[Any]]:
        """Django users by lower-case username: a list, as two local users may differ only in
        case (``user040`` and ``User040``)."""
        if not usernames:
            return {}
        lowered = [name.lower() for name in usernames]
        query = self.User.objects.annotate(_lower_name=Lower(self.username_field)).filter(
            _lower_name__in=lowered
        )
        found: dict[str, list[Any]] = {}
        for user in query.order_by(self.username_field):
            found.setdefault(getattr(user, self.username_field).lower(), []).append(user)
        return found

    @staticmethod
    def _take_late_links(
        links: dict[str, DirectoryUser],
        unlinked_guids: set[str],
        candidates: dict[str, list[Any]],
        other_links: dict[Any, DirectoryUser],
    ) -> None:
        """Add to ``links`` the links of entries without one that another writer (a login, a
        run) committed between the read of ``links`` and that of the users by username: the
        two reads are not one snapshot (READ COMMITTED, Django's level on PostgreSQL and
        MariaDB), so an entry may find its own link on the Django user of its username. It
        is the entry's link, as if read first; taken for another entry's, the entry would be
        refused as a re-created account."""
        for found in candidates.values():
            for user in found:
                link = other_links.get(user.pk)
                if link is not None and link.guid in unlinked_guids and link.guid not in links:
                    link.user = user
                    links[link.guid] = link

    @staticmethod
    def _links_of_users(users: Iterable[Any]) -> dict[Any, DirectoryUser]:
        """The links of the candidate users already linked to another entry, by user id: one
        query a batch."""
        ids = [user.pk for user in users]
        if not ids:
            return {}
        return {link.user_id: link for link in DirectoryUser.objects.filter(user_id__in=ids)}

    # -- adoption: an entry without a link meets a Django user of its username ----------------

    def _match_unlinked(
        self, record: UserRecord, found: list[Any], other_links: dict[Any, DirectoryUser]
    ) -> tuple[Any, DirectoryUser | None] | None:
        """The Django user an entry without a link takes: ``(None, None)`` a new one,
        ``(user, None)`` an existing one (adopted), ``(user, link)`` a user whose ``link`` now
        names this entry (relinked). None when the entry is skipped (reported) or deferred."""
        if not found:
            return None, None
        if len(found) > 1:
            names = " and ".join(repr(getattr(user, self.username_field)) for user in found)
            self.report.problem(
                "user %s skipped: Django users %s differ only in case, so the sync cannot tell "
                "which one is %r; rename or merge them",
                record.dn,
                names,
                record.username,
            )
            self.report.counts["users_skipped"] += 1
            return None
        user = found[0]
        old_link = other_links.get(user.pk)
        if old_link is not None:
            return self._relink_decision(record, user, old_link)
        if not self._may_adopt(record, user):
            return None
        return user, None

    def _may_adopt(self, record: UserRecord, user: Any) -> bool:
        """Whether a directory entry may take over an existing Django user: never a superuser,
        a staff user or a user with a usable password (a local account), unless
        LDAP_SYNC_ADOPT_USERS names it or ``manage.py ldaplink`` links it. A refusal is reported
        and leaves the user exactly as it was."""
        name = getattr(user, self.username_field)
        reasons = adoption_obstacles(user)
        if not reasons or name.lower() in self.adopt_users or sync_settings.may_adopt_user(name):
            return True
        self.report.problem(
            "user %s skipped: Django user %r %s, so the directory does not take it over; name "
            "it in LDAP_SYNC_ADOPT_USERS or run 'manage.py ldaplink %s' to link it on purpose",
            record.dn,
            name,
            " and ".join(reasons),
            name,
        )
        self.report.counts["users_adoption_refused"] += 1
        return False

    def _relink_decision(
        self, record: UserRecord, user: Any, old_link: DirectoryUser
    ) -> tuple[Any, DirectoryUser] | None:
        """The entry's username belongs to a Django user linked to another entry: typically an
        account deleted and re-created in the directory (a new objectGUID/entryUUID). The user
        moves to the new entry when the old entry is gone (``entry_gone``) and the adoption
        rules allow it; batch runs decide once their read is complete (deferred)."""
        if self.entry_gone is None and self.defer_relinks:
            self.deferred_relinks.append(record)
            return None
        name = getattr(user, self.username_field)
        if self.entry_gone is None or not self.entry_gone(old_link):
            self.report.problem(
                "user %s skipped: Django user %r is linked to another directory entry (%s)%s; "
                "rename one of the two entries, or run 'manage.py ldaplink %s --relink' to move "
                "the user to this entry",
                record.dn,
                name,
                old_link.dn,
                ", which still exists" if self.entry_gone is not None else "",
                name,
            )
            self.report.counts["users_skipped"] += 1
            return None
        if not self._may_adopt(record, user):
            return None
        self.report.warning(
            "user %s: Django user %r relinked to this entry; its former entry %s is gone",
            record.dn,
            name,
            old_link.dn,
        )
        self.report.counts["users_relinked"] += 1
        self.report.change(f"relink user {record.username!r} (former entry {old_link.dn} gone)")
        old_link.guid = record.guid
        return user, old_link

    def sync_deferred_users(self, present_guids: Collection[str]) -> list[UserOutcome]:
        """Batch runs, once every entry of the scope was read (``present_guids``): the entries
        deferred by :meth:`_relink_decision`. A user linked to an entry no longer in the scope
        moves to the new entry; otherwise the new entry is skipped and reported."""
        records = list({record.guid: record for record in self.deferred_relinks}.values())
        self.deferred_relinks = []
        if not records:
            return []
        saved = self.entry_gone, self.defer_relinks
        self.entry_gone, self.defer_relinks = (lambda link: link.guid not in present_guids), False
        try:
            return self.sync_users(records)
        finally:
            self.entry_gone, self.defer_relinks = saved

    def _fetch_missing_pks(self, users: list[Any]) -> None:
        """Backends that cannot return ids from a bulk insert: look them up by username."""
        missing = [user for user in users if user.pk is None]
        if not missing:
            return
        names = [getattr(user, self.username_field) for user in missing]
        ids = dict(
            self.User.objects.filter(**{f"{self.username_field}__in": names}).values_list(
                self.username_field, "pk"
            )
        )
        for user in missing:
            user.pk = ids[getattr(user, self.username_field)]

    def _link_changed(self, link: DirectoryUser, record: UserRecord) -> bool:
        return (
            link.dn != record.dn
            or link.server != self.server
            or link.object_sid != (record.object_sid or "")
        )

    def _refresh_link(self, link: DirectoryUser, record: UserRecord, restore: bool) -> None:
        link.dn = record.dn
        link.server = self.server
        link.object_sid = record.object_sid or ""
        link.last_changed = self.now
        if restore:
            link.removed_at = None
            link.removal_reason = ""

    def _new_link(self, user: Any, record: UserRecord) -> DirectoryUser:
        return DirectoryUser(
            user=user,
            guid=record.guid,
            dn=record.dn,
            server=self.server,
            object_sid=record.object_sid or "",
            last_changed=self.now,
        )

    # -- profiles and photos -----------------------------------------------------------------

    def _sync_profiles(self, outcomes: list[UserOutcome], links: dict[str, DirectoryUser]) -> None:
        """Create or update each profile row with its photos. A dry run only reports.

        Photo files are written before the rows, so that each row is written once: a new row is
        inserted naming its file, a changed one updated once for its text and file fields.
        """
        for spec, model in self.profile_models:
            profiles, dirty = self._diff_profiles(spec, model, outcomes)
            if spec.file_fields:
                self._sync_photos(spec, profiles, dirty, outcomes, links)
            if not self.dry_run:
                self._write_profiles(model, profiles, dirty)

    def _diff_profiles(
        self, spec, model, outcomes: list[UserOutcome]
    ) -> tuple[dict[str, Any], dict[str, set[str]]]:
        """Each record's profile (a new one unsaved), and the changed fields of existing rows,
        both by record guid. Only users older than this batch can have a row to look up."""
        known = [o.user for o in outcomes if o.user is not None and not o.created]
        by_user = {p.user_id: p for p in model.objects.filter(user__in=known)} if known else {}
        profiles: dict[str, Any] = {}
        dirty: dict[str, set[str]] = {}
        for outcome in outcomes:
            values = outcome.record.profiles.get(spec.label, {})
            user = outcome.user
            profile = by_user.get(user.pk) if user is not None else None
            if profile is None:
                profile = model(user=user, **values) if user is not None else model(**values)
                self.report.counts["profiles_created"] += 1
            else:
                changed = [f for f, v in values.items() if getattr(profile, f) != v]
                for name in changed:
                    setattr(profile, name, values[name])
                if changed:
                    dirty[outcome.record.guid] = set(changed)
                    self.report.counts["profiles_updated"] += 1
                    outcome.updated = True
                    self.report.change(
                        f"update profile of {outcome.record.username!r}: {', '.join(changed)}"
                    )
            profiles[outcome.record.guid] = profile
        return profiles, dirty

    @staticmethod
    def _write_profiles(model, profiles: dict[str, Any], dirty: dict[str, set[str]]) -> None:
        """Insert the new rows; update the changed ones, one ``bulk_update`` per set of fields."""
        created = [profile for profile in profiles.values() if profile._state.adding]
        if created:
            model.objects.bulk_create(created)
        by_fields: dict[tuple[str, ...], list[Any]] = {}
        for guid, fields in dirty.items():
            by_fields.setdefault(tuple(sorted(fields)), []).append(profiles[guid])
        for fields, rows in by_fields.items():
            model.objects.bulk_update(rows, fields)

    def _sync_photos(
        self, spec, profiles: dict, dirty: dict, outcomes: list[UserOutcome], links
    ) -> None:
        """Write a photo only when its digest changed; delete the replaced file after commit.

        Only the files are written here, and the digests of links that exist already (one
        ``bulk_update``): the profile rows and new links are written afterwards naming them.
        """
        saved_links: dict[int, DirectoryUser] = {}
        for outcome in outcomes:
            guid = outcome.record.guid
            profile, link = profiles[guid], links.get(guid)
            for field_name, data in outcome.record.photos.get(spec.label, {}).items():
                if not self._sync_photo(spec.label, outcome, profile, link, field_name, data):
                    continue
                if not profile._state.adding:
                    dirty.setdefault(guid, set()).add(field_name)
                if not link._state.adding:
                    saved_links[id(link)] = link
        if saved_links:
            DirectoryUser.objects.bulk_update(list(saved_links.values()), ["photo_digests"])

    def _sync_photo(
        self, label: str, outcome: UserOutcome, profile, link, field_name: str, data
    ) -> bool:
        """Set one photo field (file written) and its digest in the link, in memory, if the
        photo changed; True when the profile row and the link need saving.

        The link keeps the digest of the directory's bytes, compared before anything is
        decoded: an unchanged photo costs a hash, never a decode (batch runs and logins).
        Only a changed one is checked and re-encoded (:meth:`_checked_photo`).
        """
        key = f"{label}.{field_name}"
        digest = photo_digest(data) if data is not None else ""
        file = getattr(profile, field_name)
        digests = link.photo_digests if link is not None else {}
        if digests.get(key, "") == digest and bool(file) == (data is not None):
            return False
        photo = None
        if data is not None:
            photo = self._checked_photo(outcome.record, field_name, data, digest)
            if photo is None:
                return False  # rejected: the field and its digest stay as they are
        written = photo is not None
        self.report.counts["photos_written" if written else "photos_removed"] += 1
        self.report.change(f"{'write' if written else 'remove'} photo of {outcome.record.username!r}")
        outcome.updated = True
        if self.dry_run:
            return False
        old_name = file.name if file else None
        if photo is not None:
            if not self._save_photo(outcome.record, profile, field_name, photo):
                return False
        else:
            setattr(profile, field_name, None)
        if old_name:
            storage = file.storage
            transaction.on_commit(lambda n=old_name, s=storage: s.delete(n))
        link.photo_digests = {**link.photo_digests, key: digest}
        return True

    def _checked_photo(
        self, record: UserRecord, field_name: str, data: bytes, digest: str
    ) -> Photo | None:
        """The changed photo, checked and re-encoded by :func:`validate_photo`, or None when
        it is rejected (a warning of the run, or of the login).

        A rejection is remembered in Django's cache by the digest of the bytes and the limits,
        so the same bytes are not decoded again by the next runs and logins (the warning is
        repeated; a change of the photo or of a limit makes a new check).
        """
        config = self.config
        memo = (
            f"adldap_auth:photo-rejected:{digest}:{config.photo_max_bytes}:"
            f"{config.photo_max_pixels}:{PHOTO_MAX_SCANS}"
        )
        reason = cache.get(memo)
        if reason is None:
            try:
                return validate_photo(data, config.photo_max_bytes, config.photo_max_pixels)
            except PhotoError as error:
                reason = str(error)
                cache.set(memo, reason, REJECTED_PHOTO_MEMO_SECONDS)
        self.report.warning(
            "user %s: attribute %s rejected (%s); %s left unchanged",
            record.dn,
            field_name,
            reason,
            field_name,
        )
        return None

    def _save_photo(self, record: UserRecord, profile, field_name: str, photo: Photo) -> bool:
        """Write the re-encoded photo, named with its format's extension, and name it in the
        profile field (not saved). A failed write (disk full, permissions) is reported and
        skips this photo only."""
        file = getattr(profile, field_name)
        old_name = file.name if file else None
        name = photo_filename(
            self.config.photo_name_template, record.username, self.now, photo.format
        )
        try:
            file.save(name, ContentFile(photo.data), save=False)
        except OSError as error:
            self.report.problem("photo of %s not written: %s", record.dn, error)
            setattr(profile, field_name, old_name)
            return False
        self._written_files.append((file.storage, file.name))
        return True

    def _delete_written_files(self) -> None:
        written, self._written_files = self._written_files, []
        for storage, name in written:
            try:
                storage.delete(name)
            except OSError as error:
                logger.warning("photo %s of a rolled-back batch not deleted: %s", name, error)

    def _after_commit(self, outcomes: list[UserOutcome]) -> None:
        """The site's user callbacks and ``user_synced``, for each created or changed user,
        once its rows are committed (:meth:`_on_commit`)."""
        if self.dry_run:
            return
        changed = [outcome for outcome in outcomes if outcome.created or outcome.updated]
        if changed:
            self._on_commit(lambda: self._notify(changed))

    def _notify(self, outcomes: list[UserOutcome]) -> None:
        for outcome in outcomes:
            for callback in self.user_callbacks:
                try:
                    callback(outcome.user, outcome.record.attributes, outcome.created, outcome.updated)
                except Exception as error:  # a site's callback must not stop the run
                    self.report.problem(
                        "user callback %r failed for %s: %s", callback, outcome.record.dn, error
                    )
            self._send_now(
                signals.user_synced,
                user=outcome.user,
                created=outcome.created,
                attributes=outcome.record.attributes,
            )

    def _on_commit(self, func: Callable[[], None]) -> None:
        """Run ``func`` once the current transaction commits: at once when none is open (a
        batch run writes in transactions of its own), at the commit of the caller's (a login
        under ``ATOMIC_REQUESTS``, a site's ``transaction.atomic()``), and never when that one
        rolls back, so that callbacks and receivers only see rows that exist."""
        transaction.on_commit(func, using=router.db_for_write(self.User))

    def _send(self, signal, **kwargs: Any) -> None:
        """Send one of :mod:`adldap_auth.signals` once the rows it names are committed."""
        self._on_commit(lambda: self._send_now(signal, **kwargs))

    def _send_now(self, signal, **kwargs: Any) -> None:
        """Send ``signal`` to isolated receivers: a receiver that raises is logged and counted
        as a problem of the run, never stops it."""
        for failure in signals.send(signal, Store, **kwargs):
            self.report.problem("%s", failure)

    # -- memberships -------------------------------------------------------------------------

    def sync_memberships(self, desired: dict[int, set[int]], managed_group_ids: set[int]) -> None:
        """Make each listed user's memberships of *managed* groups equal ``desired[user_id]``.

        Memberships of groups the directory does not manage (given by an admin in Django) are
        never touched. With ``defer_membership_removals`` the removals are only collected.
        """
        if not desired:
            return
        table = MembershipTable.of(self.User)
        through = table.model
        if self.defer_membership_removals and not self._managed_counted:
            self._managed_counted = True
            self.managed_memberships = sum(
                count
                for group_id, count in through.objects.values_list(table.group)
                .annotate(count=Count("pk"))
                .order_by()
                if group_id in managed_group_ids
            )
        current: dict[int, dict[int, int]] = {user_id: {} for user_id in desired}
        for row_id, user_id, group_id in through.objects.filter(
            **{f"{table.user}__in": list(desired)}
        ).values_list("pk", table.user, table.group):
            if group_id in managed_group_ids:
                current[user_id][group_id] = row_id
        to_add: list[tuple[int, int]] = []  # (user id, group id)
        to_remove = []
        for user_id, wanted in desired.items():
            have = current[user_id]
            to_add.extend((user_id, group_id) for group_id in wanted - have.keys())
            to_remove.extend(row_id for group_id, row_id in have.items() if group_id not in wanted)
        self.report.counts["memberships_added"] += len(to_add)
        if self.report.changes is not None:
            self._report_membership_changes(to_add, to_remove, current)
        if self.defer_membership_removals:
            self.pending_membership_removals.extend(to_remove)
            to_remove = []
        self.report.counts["memberships_removed"] += len(to_remove)
        if self.dry_run or not (to_add or to_remove):
            return

        def write() -> None:  # the same again after a lock conflict: inserts skip what exists
            self._membership_write()
            with self._transaction():
                if to_add:
                    self._insert_memberships(to_add)
                if to_remove:
                    through.objects.filter(pk__in=to_remove).delete()

        self._retry_locked(write, "write of memberships")

    def apply_membership_removals(self) -> None:
        """Remove the memberships that :meth:`sync_memberships` collected, in one transaction
        (rows that a login removed meanwhile are simply not found)."""
        pending, self.pending_membership_removals = self.pending_membership_removals, []
        self.report.counts["memberships_removed"] += len(pending)
        if self.dry_run or not pending:
            return
        through = MembershipTable.of(self.User).model

        def write() -> None:  # the same again after a lock conflict: deleted rows are not found
            self._membership_write()
            with self._transaction():
                for start in range(0, len(pending), 500):  # SQLite's bound-parameter limit
                    through.objects.filter(pk__in=pending[start : start + 500]).delete()

        self._retry_locked(write, "removal of memberships")

    def _membership_write(self) -> None:
        """Call ``before_membership_write`` once, before this store's first membership write:
        until it succeeds (a lock conflict makes the write, this call included, start again)."""
        hook = self.before_membership_write
        if hook is not None:
            hook()
            self.before_membership_write = None

    def _report_membership_changes(self, to_add, to_remove: list[int], current) -> None:
        """Change lines with names (only when changes are collected: dry runs, -v 2)."""
        removing = set(to_remove)
        pairs = [("add", user_id, group_id) for user_id, group_id in to_add]
        pairs += [
            ("remove", user_id, group_id)
            for user_id, groups in current.items()
            for group_id, row_id in groups.items()
            if row_id in removing
        ]
        users = dict(
            self.User.objects.filter(pk__in={u for _, u, _ in pairs}).values_list(
                "pk", self.username_field
            )
        )
        groups = dict(Group.objects.filter(pk__in={g for _, _, g in pairs}).values_list("pk", "name"))
        for verb, user_id, group_id in pairs:
            planned = self._placeholders
            user = users.get(user_id, planned.get(user_id, user_id))
            group = groups.get(group_id, planned.get(group_id, group_id))
            self.report.change(f"{verb} membership {user!r} in {group!r}")

    def _insert_memberships(self, pairs: list[tuple[int, int]]) -> None:
        """Insert ``(user id, group id)`` rows of the user-groups table, skipping the rows that
        exist already (a login may have added one meanwhile).

        On SQLite and MySQL/MariaDB one ``executemany`` of the database's own insert-or-ignore
        statement: no model instance per row, which is most of the cost of a first run's
        hundreds of thousands of memberships (at 10k users, 244k rows: the cold run's CPU time
        nearly doubled with ``bulk_create``). Elsewhere (PostgreSQL, where it is as fast, and
        any other backend) Django's public ``bulk_create(..., ignore_conflicts=True)``."""
        table = MembershipTable.of(self.User)
        connection = connections[router.db_for_write(table.model)]
        verb = _INSERT_OR_IGNORE.get(connection.vendor)
        if verb is None:
            rows = [table.model(**{table.user: u, table.group: g}) for u, g in pairs]
            table.model.objects.bulk_create(rows, ignore_conflicts=True)
            return
        quote = connection.ops.quote_name
        columns = [table.model._meta.get_field(name).column for name in (table.user, table.group)]
        sql = (
            f"{verb} {quote(table.model._meta.db_table)} "
            f"({quote(columns[0])}, {quote(columns[1])}) VALUES (%s, %s)"
        )
        with connection.cursor() as cursor:
            cursor.executemany(sql, pairs)

    # -- removals ----------------------------------------------------------------------------

    def removal_candidates(self, present_guids: set[str]) -> list[DirectoryUser]:
        """Linked, not yet removed users whose entry was not found in the run's scope."""
        active = DirectoryUser.objects.filter(removed_at__isnull=True)
        missing = [pk for pk, guid in active.values_list("pk", "guid") if guid not in present_guids]
        if not missing:
            return []
        return list(DirectoryUser.objects.select_related("user").filter(pk__in=missing))

    def forget_gone_disabled_users(self, present_guids: set[str], managed_group_ids: set[int]) -> None:
        """Users removed because their entry was disabled, whose entry is now gone: they lose
        their managed memberships like any user gone from the directory (no callback runs
        again: they were removed already)."""
        disabled = DirectoryUser.objects.filter(
            removed_at__isnull=False, removal_reason=DirectoryUser.REASON_DISABLED
        )
        gone = [pk for pk, guid in disabled.values_list("pk", "guid") if guid not in present_guids]
        for link in DirectoryUser.objects.select_related("user").filter(pk__in=gone):
            username = getattr(link.user, self.username_field)
            self.report.change(f"forget user {username!r} (gone from the directory)")
            if self.dry_run:
                if managed_group_ids:
                    self._drop_memberships(link.user_id, username, managed_group_ids)
                continue
            with self._transaction():
                if managed_group_ids:
                    self._drop_memberships(link.user_id, username, managed_group_ids)
                link.removal_reason = DirectoryUser.REASON_MISSING
                link.save(update_fields=["removal_reason"])

    def remove_users(
        self,
        links: Iterable[DirectoryUser],
        callbacks: Sequence[Callable],
        reason: str,
        managed_group_ids: set[int] | None = None,
    ) -> None:
        """Apply the removal callbacks (deactivate, delete...) to users, one transaction each,
        then end the removed users' sessions (:func:`adldap_auth.sessions.end_sessions`).

        ``managed_group_ids`` (entries gone from the directory): their memberships of these
        groups go too, since no directory entry lists them any more; a disabled entry keeps
        what the directory still lists.
        """
        removed_pks: list[Any] = []
        for link in links:
            username = getattr(link.user, self.username_field)
            if username.lower() in self.config.exempt_usernames:
                continue
            self.report.counts["users_removed"] += 1
            self.report.change(f"remove user {username!r} ({reason})")
            if self.dry_run:
                if managed_group_ids:
                    self._drop_memberships(link.user_id, username, managed_group_ids)
                continue
            user_pk = link.user_id  # kept: a delete callback clears user.pk
            try:
                with self._transaction():
                    if managed_group_ids:
                        self._drop_memberships(user_pk, username, managed_group_ids)
                    link.removed_at = self.now
                    link.removal_reason = reason
                    link.save(update_fields=["removed_at", "removal_reason"])
                    user = link.user
                    for callback in callbacks:
                        callback(user)
            except Exception as error:
                self.report.problem("removal of %s failed: %s", link.dn, error)
                continue
            removed_pks.append(user_pk)
            self._send(signals.user_removed, user=user, reason=reason)
        if removed_pks:
            try:
                end_sessions(removed_pks)
            except Exception as error:  # the removals stand; get_user() still refuses them
                self.report.problem("ending the sessions of removed users failed: %s", error)

    def _drop_memberships(self, user_pk: Any, username: str, group_ids: set[int]) -> None:
        """Remove (or, in a dry run, plan) a user's memberships of these groups."""
        table = MembershipTable.of(self.User)
        rows = table.model.objects.filter(**{table.user: user_pk, f"{table.group}__in": group_ids})
        if self.report.changes is not None:
            for name in Group.objects.filter(pk__in=rows.values(table.group)).values_list(
                "name", flat=True
            ):
                self.report.change(f"remove membership {username!r} in {name!r}")
        if not self.dry_run:
            self._membership_write()
        count = rows.count() if self.dry_run else rows.delete()[0]
        self.report.counts["memberships_removed"] += count

    def delete_removed_users(
        self, links: Iterable[DirectoryUser], callbacks: Sequence[Callable]
    ) -> None:
        """LDAP_SYNC_REMOVAL_GRACE is over for these removed users: apply ``callbacks`` (the
        delete callback), one transaction each. Counted as ``users_deleted``."""
        for link in links:
            username = getattr(link.user, self.username_field)
            if username.lower() in self.config.exempt_usernames:
                continue
            self.report.counts["users_deleted"] += 1
            self.report.change(f"delete user {username!r} (removed at {link.removed_at:%Y-%m-%d %H:%M})")
            if self.dry_run:
                continue
            try:
                with self._transaction():
                    for callback in callbacks:
                        callback(link.user)
            except Exception as error:
                self.report.problem("deletion of %s failed: %s", link.dn, error)

    def remove_groups(
        self, present_guids: set[str], action: str, grace: timedelta | None = None
    ) -> None:
        """Groups gone from the directory: kept (retired: link marked removed, memberships
        removed by the sync) or deleted, by LDAP_SYNC_GROUP_REMOVAL_ACTION.

        With ``grace`` (LDAP_SYNC_REMOVAL_GRACE), "DELETE" retires first as well, and deletes
        a group retired longer ago than ``grace`` and still gone (``groups_deleted``); one
        that comes back meanwhile is linked again, with its permissions.
        """
        delete_now = action == "DELETE" and grace is None
        if action == "DELETE" and grace is not None:
            self._delete_retired_groups(present_guids, grace)
        active = DirectoryGroup.objects.filter(removed_at__isnull=True)
        gone = [pk for pk, guid in active.values_list("pk", "guid") if guid not in present_guids]
        if not gone:
            return
        for link in DirectoryGroup.objects.select_related("group").filter(
            pk__in=gone
        ):
            self.report.counts["groups_removed"] += 1
            self.report.change(f"{'delete' if delete_now else 'retire'} group {link.group.name!r}")
            if self.dry_run:
                continue
            if delete_now:
                link.group.delete()
            else:
                link.removed_at = self.now
                link.save(update_fields=["removed_at"])

    def _delete_retired_groups(self, present_guids: set[str], grace: timedelta) -> None:
        """Delete the groups retired longer ago than ``grace`` that are still gone."""
        expired = DirectoryGroup.objects.select_related("group").filter(
            removed_at__isnull=False, removed_at__lte=self.now - grace
        )
        for link in expired:
            if link.guid in present_guids:
                continue
            self.report.counts["groups_deleted"] += 1
            self.report.change(
                f"delete group {link.group.name!r} (retired at {link.removed_at:%Y-%m-%d %H:%M})"
            )
            if not self.dry_run:
                link.group.delete()
