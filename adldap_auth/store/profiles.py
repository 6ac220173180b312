"""Profiles and photos: each user's profile rows diffed and bulk-written, and photos written
only when their digest changed, checked and re-encoded first, files removed after commit."""

from __future__ import annotations

import logging
from typing import Any

from django.core.cache import cache
from django.core.files.base import ContentFile
from django.db import transaction

from ..mapping import (
    PHOTO_MAX_SCANS,
    Photo,
    PhotoError,
    UserRecord,
    photo_digest,
    photo_filename,
    validate_photo,
)
from ..models import DirectoryUser
from .users import UserOutcome

logger = logging.getLogger("adldap_auth.sync")

#: How long a rejected photo is remembered (see :meth:`Store._checked_photo`).
REJECTED_PHOTO_MEMO_SECONDS = 7 * 24 * 3600


class ProfilesMixin:
    """The profile and photo methods of :class:`~adldap_auth.store.Store`, whose state and shared
    helpers are in ``core``."""

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
        self.report.change(
            f"{'write' if written else 'remove'} photo of {outcome.record.username!r}"
        )
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
