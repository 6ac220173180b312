"""Groups: directory groups created, renamed, adopted and linked as Django groups (names are
compared case-insensitively), and the plain default groups a membership rule names."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from django.contrib.auth.models import Group
from django.db import IntegrityError
from django.db.models.functions import Lower

from .. import signals
from ..conf import get_config
from ..mapping import GroupRecord
from ..models import DirectoryGroup

#: Groups written in one transaction by :meth:`Store.sync_groups`.
GROUP_BATCH_SIZE = 1000


class GroupsMixin:
    """The group methods of :class:`~adldap_auth.store.Store`, whose state and shared
    helpers are in ``core``."""

    def sync_groups(self, records: Iterable[GroupRecord]) -> dict[str, int]:
        """Create, rename and link groups; return guid -> Django group id for every record
        (in a dry run, a negative placeholder for a group the run would create)."""
        records = list(records)
        links = {
            link.guid: link
            for link in DirectoryGroup.objects.select_related("group").filter(
                guid__in=[r.guid for r in records]
            )
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
        link = DirectoryGroup.objects.select_related("group").filter(guid=record.guid).first()
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
        group = self._link_new_group(record, group, fields)
        self._send(signals.group_synced, group=group, created=created)
        return group.pk

    def _link_new_group(
        self, record: GroupRecord, group: Group | None, fields: dict[str, str]
    ) -> Group:
        """Create the Django group (or rename the adopted one as the directory names it:
        "TEAM" becomes "Team") and link it to the entry, in one transaction."""
        with self._transaction():
            if group is None:
                group = Group.objects.create(**fields)
            else:
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
        return group

    def _may_adopt_group(self, record: GroupRecord, group: Group) -> bool:
        """Whether a directory group may take over the unlinked Django group of its name:
        only when LDAP_SYNC_ADOPT_GROUPS names it. Such a group was made by an admin or an
        earlier tool, and adopting it would hand its permissions and members to the
        directory. A refusal is reported; the Django group is left exactly as it was."""
        if get_config().may_adopt_group(group.name):
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
