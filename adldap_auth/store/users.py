"""Users: a batch of user records diffed against the database (by link, else by username)
and written with bulk queries, retried one by one on failure; then callbacks and signals."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.hashers import UNUSABLE_PASSWORD_PREFIX
from django.db import DatabaseError, IntegrityError
from django.db.models.functions import Lower

from .. import signals
from ..dbwrite import lock_conflict
from ..mapping import UserRecord
from ..models import DirectoryUser

logger = logging.getLogger("adldap_auth.sync")


@dataclass
class UserOutcome:
    """What happened to one user record in a batch."""

    record: UserRecord
    user: Any | None = None  # the Django user (None when skipped or not created in a dry run)
    created: bool = False
    updated: bool = False


def unusable_password() -> str:
    """What ``make_password(None)`` returns ("!" and 40 random characters of its alphabet),
    from one ``secrets`` call instead of 40 (a first run makes one per user)."""
    return UNUSABLE_PASSWORD_PREFIX + secrets.token_hex(20)


class UsersMixin:
    """The user methods of :class:`~adldap_auth.store.Store`, whose state and shared
    helpers are in ``core``."""

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
            logger.warning(
                "batch of %d users failed (%s); retrying one by one", len(records), error
            )
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
            outcomes.append(self._diff_user(record, user, link, to_update, links_to_update))

        self.report.counts["users_created"] += len(to_create)
        self.report.counts["users_updated"] += sum(1 for o in outcomes if o.updated)
        if self.dry_run:
            for outcome in outcomes:
                if outcome.created:
                    # A placeholder id, so that the plan includes the new user's memberships.
                    outcome.user.pk = self._placeholder_id(outcome.record.username)
            self._sync_profiles(outcomes, links)
            return outcomes

        self._write_user_batch(outcomes, links, to_create, to_update, relinked, links_to_update)
        return outcomes

    def _diff_user(
        self,
        record: UserRecord,
        user: Any,
        link: DirectoryUser | None,
        to_update: dict[str, list[Any]],
        links_to_update: list[DirectoryUser],
    ) -> UserOutcome:
        """An existing user of :meth:`_sync_user_batch`: its changed fields set in memory and
        queued in ``to_update`` (by set of fields), restored, adopted, or its link refreshed."""
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
        return UserOutcome(record, user, created=False, updated=bool(changed))

    def _write_user_batch(
        self,
        outcomes: list[UserOutcome],
        links: dict[str, DirectoryUser],
        to_create: list[tuple[UserRecord, Any]],
        to_update: dict[str, list[Any]],
        relinked: list[DirectoryUser],
        links_to_update: list[DirectoryUser],
    ) -> None:
        """The writes of :meth:`_sync_user_batch` (none in a dry run): new and changed users,
        their links, then profiles and photos, new links last."""
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
                [
                    "dn",
                    "server",
                    "object_sid",
                    "primary_group_sid",
                    "last_changed",
                    "removed_at",
                    "removal_reason",
                ],
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
            or link.primary_group_sid != (record.primary_group_sid or "")
        )

    def _refresh_link(self, link: DirectoryUser, record: UserRecord, restore: bool) -> None:
        link.dn = record.dn
        link.server = self.server
        link.object_sid = record.object_sid or ""
        link.primary_group_sid = record.primary_group_sid or ""
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
            primary_group_sid=record.primary_group_sid or "",
            last_changed=self.now,
        )

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
                    callback(
                        outcome.user, outcome.record.attributes, outcome.created, outcome.updated
                    )
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
