"""Writing mapped records to the database: diff first, then bulk writes, one transaction a batch.

The store knows nothing of LDAP. It receives :class:`~adldap_auth.mapping.UserRecord` and
:class:`~adldap_auth.mapping.GroupRecord` objects, compares them with what the database holds,
and writes only what differs, so a run over an unchanged directory issues no write at all.

A batch that fails on a database constraint is rolled back and retried entry by entry, each in
its own savepoint, so one bad row is reported and skipped while the rest of the batch lands.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import UNUSABLE_PASSWORD_PREFIX
from django.contrib.auth.models import Group
from django.core.files.base import ContentFile
from django.db import DatabaseError, IntegrityError, connections, router, transaction
from django.db.models.constants import OnConflict
from django.db.models.functions import Lower
from django.utils import timezone

from . import signals
from .groups import Nesting
from .mapping import GroupRecord, MappingConfig, UserRecord, photo_digest, photo_filename
from .models import DirectoryGroup, DirectoryUser

logger = logging.getLogger("adldap_auth.sync")

#: How many problems a run keeps in its record (all are logged).
MAX_PROBLEMS = 200
#: Groups written in one transaction by :meth:`Store.sync_groups`.
GROUP_BATCH_SIZE = 1000


@dataclass
class RunReport:
    """Counts, problems and (optionally) the list of planned/made changes of one run."""

    counts: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    changes: list[str] | None = None  # collected only when asked (dry runs, tests)

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
        #: guid -> the group's nesting, for the current :meth:`sync_groups` call
        self._nesting: Mapping[str, Nesting] = {}
        #: links of the current group batch whose nesting alone changed (see _write_nesting)
        self._nesting_only: list[DirectoryGroup] = []

    # -- groups ------------------------------------------------------------------------------

    def sync_groups(
        self, records: Iterable[GroupRecord], nesting: Mapping[str, Nesting] | None = None
    ) -> dict[str, int]:
        """Create, rename and link groups; return guid -> Django group id for every record.

        ``nesting`` (batch runs, which read every group's members): each group's member list
        and parents, stored when they changed.
        """
        records = list(records)
        self._nesting = nesting or {}
        links = {
            link.guid: link
            for link in DirectoryGroup.objects.select_related("group")
            .defer("member_keys")
            .filter(guid__in=[r.guid for r in records])
        }
        by_name = {
            group.name: group
            for group in Group.objects.select_related("directory_link").filter(
                name__in=[r.name for r in records if r.guid not in links]
            )
        }
        ids: dict[str, int] = {}
        seen_names: set[str] = set()
        for start in range(0, len(records), GROUP_BATCH_SIZE):
            # One transaction a batch, one savepoint a group: a commit per group costs a disk
            # sync each (10,000 groups: seconds), a single transaction would hold SQLite's
            # write lock for the whole loop.
            with transaction.atomic():
                self._nesting_only = []
                for record in records[start : start + GROUP_BATCH_SIZE]:
                    if record.name in seen_names:
                        self.report.problem(
                            "group %s skipped: another directory group is also named %r",
                            record.dn,
                            record.name,
                        )
                        continue
                    seen_names.add(record.name)
                    try:
                        group_id = self._sync_group(record, links.get(record.guid), by_name)
                    except IntegrityError:
                        # Another writer (a login, a second run) created or linked it meanwhile.
                        group_id = self._sync_group_after_race(record)
                    if group_id is not None:
                        ids[record.guid] = group_id
                self._write_nesting(self._nesting_only)
        return ids

    def _sync_group_after_race(self, record: GroupRecord) -> int | None:
        link = (
            DirectoryGroup.objects.select_related("group")
            .defer("member_keys")
            .filter(guid=record.guid)
            .first()
        )
        by_name = {
            g.name: g
            for g in Group.objects.select_related("directory_link").filter(name=record.name)
        }
        try:
            return self._sync_group(record, link, by_name)
        except IntegrityError as error:
            self.report.problem("group %s not written: %s", record.dn, error)
            return None

    def _sync_group(
        self, record: GroupRecord, link: DirectoryGroup | None, by_name: dict[str, Group]
    ) -> int | None:
        fields = dict(record.fields)
        fields["name"] = record.name
        if link is not None:
            return self._update_group(record, link, fields)
        group = by_name.get(record.name)
        other_link = getattr(group, "directory_link", None) if group is not None else None
        if other_link is not None:
            self.report.problem(
                "group %s skipped: Django group %r is linked to another directory entry (%s)",
                record.dn,
                record.name,
                other_link.dn,
            )
            return None
        created = group is None
        self.report.counts["groups_created" if created else "groups_adopted"] += 1
        self.report.change(f"{'create' if created else 'adopt'} group {record.name!r}")
        if self.dry_run:
            return group.pk if group else None
        with transaction.atomic():
            if group is None:
                group = Group.objects.create(**fields)
            link = DirectoryGroup(
                group=group,
                guid=record.guid,
                dn=record.dn,
                object_sid=record.object_sid or "",
                last_changed=self.now,
            )
            self._set_nesting(link, self._nesting.get(record.guid))
            link.save(force_insert=True)
        signals.group_synced.send(Store, group=group, created=created)
        return group.pk

    def _update_group(self, record: GroupRecord, link: DirectoryGroup, fields: dict) -> int:
        group = link.group
        changed = [f for f, v in fields.items() if getattr(group, f) != v]
        link_changed = (
            link.dn != record.dn
            or link.removed_at is not None
            or link.object_sid != (record.object_sid or "")
        )
        if "name" in changed and Group.objects.filter(name=record.name).exclude(pk=group.pk).exists():
            self.report.problem(
                "group %s not renamed to %r: a Django group has that name", record.dn, record.name
            )
            changed = [f for f in changed if f != "name"]
        nesting = self._nesting.get(record.guid)
        if not (changed or link_changed):
            if self._nesting_changed(link, nesting) and not self.dry_run:
                self._set_nesting(link, nesting)
                self._nesting_only.append(link)  # written with the batch's others, at once
            return group.pk
        self.report.counts["groups_updated"] += 1
        self.report.change(f"update group {record.name!r}")
        if self.dry_run:
            return group.pk
        with transaction.atomic():
            for name in changed:
                setattr(group, name, fields[name])
            if changed:
                group.save(update_fields=changed)
            link.dn, link.removed_at = record.dn, None
            link.object_sid = record.object_sid or ""
            link.last_changed = self.now
            fields = ["dn", "removed_at", "object_sid", "last_changed"]
            if self._nesting_changed(link, nesting):
                self._set_nesting(link, nesting)
                fields += ["member_keys", "member_digest", "parent_guids"]
            link.save(update_fields=fields)
        signals.group_synced.send(Store, group=group, created=False)
        return group.pk

    @staticmethod
    def _nesting_changed(link: DirectoryGroup, nesting: Nesting | None) -> bool:
        return nesting is not None and (
            link.member_digest != nesting.digest or link.parent_guids != nesting.parent_guids
        )

    def _write_nesting(self, links: list[DirectoryGroup]) -> None:
        """Store the nesting of groups where nothing else changed: one ``executemany``, not a
        save per group (an incremental run after 1% of the memberships changed rewrites the
        member lists of about 40% of the groups)."""
        if not links:
            return
        connection = connections[router.db_for_write(DirectoryGroup)]
        opts = DirectoryGroup._meta
        fields = [opts.get_field(name) for name in ("member_keys", "member_digest", "parent_guids")]
        quote = connection.ops.quote_name
        assignments = ", ".join(f"{quote(f.column)} = %s" for f in fields)
        sql = f"UPDATE {quote(opts.db_table)} SET {assignments} WHERE {quote(opts.pk.column)} = %s"
        rows = [
            [f.get_db_prep_save(getattr(link, f.attname), connection) for f in fields] + [link.pk]
            for link in links
        ]
        with connection.cursor() as cursor:
            cursor.executemany(sql, rows)

    @staticmethod
    def _set_nesting(link: DirectoryGroup, nesting: Nesting | None) -> None:
        if nesting is not None:
            link.member_keys = nesting.member_keys
            link.member_digest = nesting.digest
            link.parent_guids = nesting.parent_guids

    def ensure_plain_groups(self, names: Iterable[str], create: bool) -> dict[str, int]:
        """Django groups by name (for LDAP_SYNC_GROUP_MEMBERSHIP_ADD_DEFAULT), created if asked."""
        names = list(dict.fromkeys(names))
        found = dict(Group.objects.filter(name__in=names).values_list("name", "pk"))
        for name in names:
            if name in found:
                continue
            if not create:
                self.report.problem("default group %r does not exist and is not created", name)
                continue
            self.report.counts["groups_created"] += 1
            self.report.change(f"create group {name!r}")
            if not self.dry_run:
                found[name] = Group.objects.create(name=name).pk
        return found

    # -- users -------------------------------------------------------------------------------

    def sync_users(self, records: Sequence[UserRecord]) -> list[UserOutcome]:
        """Create, update, adopt and link a batch of users, with their profiles and photos.

        Disabled entries are updated if already known but never created. Returns one outcome
        per record that was not skipped.
        """
        records = self._drop_duplicate_usernames(records)
        saved = self.report.snapshot()
        self._written_files = []
        try:
            with transaction.atomic():
                outcomes = self._sync_user_batch(records)
        except (IntegrityError, DatabaseError) as error:
            self.report.restore(saved)  # the rolled-back batch changed nothing
            self._delete_written_files()  # ...and leaves no file that no row names
            if len(records) == 1:
                self.report.problem("user %s not written: %s", records[0].dn, error)
                return []
            logger.warning("batch of %d users failed (%s); retrying one by one", len(records), error)
            outcomes = []
            for record in records:
                outcomes.extend(self.sync_users([record]))
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
        adoptable = self._users_by_lower_username([r.username for r in unlinked])
        linked_elsewhere = self._linked_user_ids(adoptable.values())
        outcomes: list[UserOutcome] = []
        to_create: list[tuple[UserRecord, Any]] = []
        to_update: dict[str, list[Any]] = {}
        links_to_update: list[DirectoryUser] = []
        for record in records:
            link = links.get(record.guid)
            user = link.user if link else adoptable.get(record.username.lower())
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
            if link is None and user.pk in linked_elsewhere:
                self.report.problem(
                    "user %s skipped: Django user %r is linked to another directory entry",
                    record.dn,
                    getattr(user, self.username_field),
                )
                self.report.counts["users_skipped"] += 1
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
                    outcome.user = None
            self._sync_profiles(outcomes, links)
            return outcomes

        if to_create:
            self.User.objects.bulk_create([user for _, user in to_create])
            self._fetch_missing_pks([user for _, user in to_create])
        for field_key, users in to_update.items():
            self.User.objects.bulk_update(users, field_key.split(","))
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

    def _users_by_lower_username(self, usernames: list[str]) -> dict[str, Any]:
        if not usernames:
            return {}
        lowered = [name.lower() for name in usernames]
        query = self.User.objects.annotate(_lower_name=Lower(self.username_field)).filter(
            _lower_name__in=lowered
        )
        return {getattr(user, self.username_field).lower(): user for user in query}

    @staticmethod
    def _linked_user_ids(users: Iterable[Any]) -> set[Any]:
        """Ids of the adoptable users already linked to another entry: one query a batch."""
        ids = [user.pk for user in users]
        if not ids:
            return set()
        return set(DirectoryUser.objects.filter(user_id__in=ids).values_list("user_id", flat=True))

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
        photo changed; True when the profile row and the link need saving."""
        key = f"{label}.{field_name}"
        digest = photo_digest(data) if data else ""
        file = getattr(profile, field_name)
        digests = link.photo_digests if link is not None else {}
        if digests.get(key, "") == digest and bool(file) == bool(data):
            return False
        self.report.counts["photos_written" if data else "photos_removed"] += 1
        self.report.change(f"{'write' if data else 'remove'} photo of {outcome.record.username!r}")
        outcome.updated = True
        if self.dry_run:
            return False
        old_name = file.name if file else None
        if data:
            if not self._save_photo(outcome.record, profile, field_name, data):
                return False
        else:
            setattr(profile, field_name, None)
        if old_name:
            storage = file.storage
            transaction.on_commit(lambda n=old_name, s=storage: s.delete(n))
        link.photo_digests = {**link.photo_digests, key: digest}
        return True

    def _save_photo(self, record: UserRecord, profile, field_name: str, data: bytes) -> bool:
        """Write the file and name it in the profile field (not saved). A failed write (disk
        full, permissions) is reported and skips this photo only."""
        file = getattr(profile, field_name)
        old_name = file.name if file else None
        name = photo_filename(self.config.photo_name_template, record.username, self.now)
        try:
            file.save(name, ContentFile(data), save=False)
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
        if self.dry_run:
            return
        for outcome in outcomes:
            if not (outcome.created or outcome.updated):
                continue
            for callback in self.user_callbacks:
                try:
                    callback(outcome.user, outcome.record.attributes, outcome.created, outcome.updated)
                except Exception as error:  # a site's callback must not stop the run
                    self.report.problem(
                        "user callback %r failed for %s: %s", callback, outcome.record.dn, error
                    )
            signals.user_synced.send(
                Store, user=outcome.user, created=outcome.created, attributes=outcome.record.attributes
            )

    # -- memberships -------------------------------------------------------------------------

    def sync_memberships(self, desired: dict[int, set[int]], managed_group_ids: set[int]) -> None:
        """Make each listed user's memberships of *managed* groups equal ``desired[user_id]``.

        Memberships of groups the directory does not manage (given by an admin in Django) are
        never touched.
        """
        if not desired:
            return
        through = self.User.groups.through
        current: dict[int, dict[int, int]] = {user_id: {} for user_id in desired}
        for row_id, user_id, group_id in through.objects.filter(
            user_id__in=list(desired)
        ).values_list("pk", "user_id", "group_id"):
            if group_id in managed_group_ids:
                current[user_id][group_id] = row_id
        to_add: list[tuple[int, int]] = []  # (user id, group id)
        to_remove = []
        for user_id, wanted in desired.items():
            have = current[user_id]
            to_add.extend((user_id, group_id) for group_id in wanted - have.keys())
            to_remove.extend(row_id for group_id, row_id in have.items() if group_id not in wanted)
        self.report.counts["memberships_added"] += len(to_add)
        self.report.counts["memberships_removed"] += len(to_remove)
        if self.report.changes is not None:
            self._report_membership_changes(to_add, to_remove, current)
        if self.dry_run:
            return
        with transaction.atomic():
            if to_add:
                self._insert_memberships(to_add)
            if to_remove:
                through.objects.filter(pk__in=to_remove).delete()

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
            user, group = users.get(user_id, user_id), groups.get(group_id, group_id)
            self.report.change(f"{verb} membership {user!r} in {group!r}")

    def _insert_memberships(self, pairs: list[tuple[int, int]]) -> None:
        """Insert ``(user id, group id)`` rows of the user-groups table, skipping the rows that
        exist already (a login may have added one meanwhile), like ``bulk_create(...,
        ignore_conflicts=True)`` but without a model instance per row, which is most of the
        cost of a first run's hundreds of thousands of memberships: one ``executemany``."""
        m2m = self.User._meta.get_field("groups")
        through = m2m.remote_field.through
        connection = connections[router.db_for_write(through)]
        if not connection.features.supports_ignore_conflicts:
            objects = [through(**{m2m.m2m_column_name(): u, m2m.m2m_reverse_name(): g})
                       for u, g in pairs]  # fmt: skip
            through.objects.bulk_create(objects, ignore_conflicts=True)  # raises, as it did
            return
        ops, quote = connection.ops, connection.ops.quote_name
        sql = (
            f"{ops.insert_statement(on_conflict=OnConflict.IGNORE)} "
            f"{quote(through._meta.db_table)} "
            f"({quote(m2m.m2m_column_name())}, {quote(m2m.m2m_reverse_name())}) VALUES (%s, %s) "
            + ops.on_conflict_suffix_sql([], OnConflict.IGNORE, None, None)
        ).strip()
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

    def remove_users(
        self, links: Iterable[DirectoryUser], callbacks: Sequence[Callable], reason: str
    ) -> None:
        """Apply the removal callbacks (deactivate, delete...) to users, one transaction each."""
        for link in links:
            username = getattr(link.user, self.username_field)
            if username.lower() in self.config.exempt_usernames:
                continue
            self.report.counts["users_removed"] += 1
            self.report.change(f"remove user {username!r} ({reason})")
            if self.dry_run:
                continue
            try:
                with transaction.atomic():
                    link.removed_at = self.now
                    link.removal_reason = reason
                    link.save(update_fields=["removed_at", "removal_reason"])
                    user = link.user
                    for callback in callbacks:
                        callback(user)
            except Exception as error:
                self.report.problem("removal of %s failed: %s", link.dn, error)
                continue
            signals.user_removed.send(Store, user=user, reason=reason)

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
                with transaction.atomic():
                    for callback in callbacks:
                        callback(link.user)
            except Exception as error:
                self.report.problem("deletion of %s failed: %s", link.dn, error)

    def remove_groups(self, present_guids: set[str], action: str) -> None:
        """Groups gone from the directory: kept (unlinked memberships removed) or deleted."""
        active = DirectoryGroup.objects.filter(removed_at__isnull=True)
        gone = [pk for pk, guid in active.values_list("pk", "guid") if guid not in present_guids]
        if not gone:
            return
        for link in DirectoryGroup.objects.select_related("group").defer("member_keys").filter(
            pk__in=gone
        ):
            self.report.counts["groups_removed"] += 1
            self.report.change(f"{'delete' if action == 'DELETE' else 'retire'} group {link.group.name!r}")
            if self.dry_run:
                continue
            if action == "DELETE":
                link.group.delete()
            else:
                link.removed_at = self.now
                link.save(update_fields=["removed_at"])
