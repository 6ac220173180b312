"""Profiles and photos in a batch run: each new profile row and identity link written once.

A cold run writes each user's photo file before the rows that name it, so the new profile row
and the new identity link are inserted with the file name and the photo digest: no UPDATE (a
``bulk_update`` is a CASE WHEN per row, and was a good part of a cold run's time). Later runs
write only what changed: a new, replaced or removed photo, the replaced file deleted.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.files.storage import FileSystemStorage
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from adldap_auth.mapping import photo_digest
from adldap_auth.models import DirectoryUser
from adldap_auth.store import Store
from adldap_auth.sync import SyncOptions, run_sync
from tests.helpers import slapd_settings
from tests.lab.spec import DirectorySpec, GroupSpec, UserSpec, jpeg

pytestmark = pytest.mark.django_db

User = get_user_model()

#: Users per page and per batch: 6 users are written in 2 batches.
PAGE = 4
KEY = "testapp.Employee.jpegphoto"


def staff() -> DirectorySpec:
    """``p0``...``p5``; ``p4`` and ``p5`` have no photo."""
    users = [
        UserSpec(f"p{i}", "Person", f"Number {i}", title="Staff",
                 photo=jpeg(200 + i) if i < 4 else None)
        for i in range(6)
    ]  # fmt: skip
    return DirectorySpec(users=users, groups=[GroupSpec("Staff", members=[u.key for u in users])])


def edited(spec: DirectorySpec, **changes: dict) -> DirectorySpec:
    users = [dataclasses.replace(u, **changes.get(u.key, {})) for u in spec.users]
    return DirectorySpec(users=users, groups=spec.groups)


@pytest.fixture
def batch_sql(monkeypatch) -> list[str]:
    """The SQL of every user batch (:meth:`Store.sync_users`) of the runs that follow."""
    statements: list[str] = []
    original = Store.sync_users

    def sync_users(self, records):
        with CaptureQueriesContext(connection) as context:
            outcomes = original(self, records)
        statements.extend(query["sql"] for query in context.captured_queries)
        return outcomes

    monkeypatch.setattr(Store, "sync_users", sync_users)
    return statements


def sync(server) -> object:
    settings = slapd_settings(server, LDAP_SYNC_BIND_PAGESIZE=PAGE, LDAP_SYNC_WRITE_BATCH_SIZE=PAGE)
    with override_settings(**settings):
        return run_sync(SyncOptions(mode="full"))


def writes(statements: list[str], verb: str, table: str = "") -> list[str]:
    return [s for s in statements if re.match(rf"\s*{verb}\b", s, re.I) and table in s]


def photos(spec: DirectorySpec, media: Path) -> dict[str, tuple[bytes | None, dict]]:
    """username -> (the bytes of the file the profile names, the link's photo digests); and
    checks that no file is left that no row names."""
    from tests.testapp.models import Employee

    result = {}
    named = set()
    for user in User.objects.select_related("directory_link", "employee"):
        profile = user.employee
        data = None
        if profile.jpegphoto:
            named.add(profile.jpegphoto.name)
            data = (media / profile.jpegphoto.name).read_bytes()
        result[user.username] = (data, user.directory_link.photo_digests)
    on_disk = {str(p.relative_to(media)) for p in media.rglob("*") if p.is_file()}
    assert on_disk == named, "a photo file that no row names, or a row naming no file"
    assert Employee.objects.count() == len(spec.users)
    return result


def expected(spec: DirectorySpec) -> dict[str, tuple[bytes | None, dict]]:
    return {u.key: (u.photo, {KEY: photo_digest(u.photo)} if u.photo else {}) for u in spec.users}


def test_a_cold_run_inserts_each_profile_and_link_once_naming_its_photo(
    make_slapd, media, batch_sql
):
    spec = staff()
    server = make_slapd(spec=spec)

    with override_settings(**slapd_settings(server)):
        dry = run_sync(SyncOptions(mode="full", dry_run=True))
    assert dry.ok and dry.counts["photos_written"] == 4 and dry.counts["profiles_created"] == 6
    assert not User.objects.exists() and not any(media.iterdir())
    assert not writes(batch_sql, "INSERT") and not writes(batch_sql, "UPDATE")

    batch_sql.clear()
    result = sync(server)
    assert result.status == "success", result.problems
    assert result.counts["photos_written"] == 4 and result.counts["profiles_created"] == 6
    assert photos(spec, media) == expected(spec)
    assert writes(batch_sql, "UPDATE") == []  # each row inserted whole
    assert len(writes(batch_sql, "INSERT", "testapp_employee")) == 2  # one a batch
    assert len(writes(batch_sql, "INSERT", DirectoryUser._meta.db_table)) == 2
    # a user created by the batch has no profile to look up
    assert not [s for s in batch_sql if s.startswith("SELECT") and "testapp_employee" in s]

    batch_sql.clear()
    again = sync(server)
    assert again.status == "success" and "photos_written" not in again.counts
    assert not [s for verb in ("INSERT", "UPDATE", "DELETE") for s in writes(batch_sql, verb)]


def test_photo_changes_write_only_what_changed_and_delete_replaced_files(
    make_slapd, media, batch_sql, django_capture_on_commit_callbacks
):
    spec = staff()
    server = make_slapd(spec=spec)
    assert sync(server).status == "success"
    before = photos(spec, media)

    changed = edited(
        spec,
        p0={"photo": jpeg(300)},  # replaced
        p1={"photo": None},  # removed
        p2={"photo": jpeg(302), "title": "Boss"},  # replaced, and a text field
        p4={"photo": jpeg(304)},  # added
    )
    server.apply(spec, changed)
    batch_sql.clear()
    with django_capture_on_commit_callbacks(execute=True):  # the test's transaction
        result = sync(server)
    assert result.status == "success", result.problems
    assert result.counts["photos_written"] == 3 and result.counts["photos_removed"] == 1
    assert result.counts["profiles_updated"] == 1
    after = photos(changed, media)  # the replaced and removed files are gone
    assert after == {**expected(changed), "p1": (None, {KEY: ""})}
    assert after["p3"] == before["p3"] and after["p5"] == before["p5"]
    assert User.objects.get(username="p2").employee.title == "Boss"
    assert not writes(batch_sql, "INSERT")
    link_updates = writes(batch_sql, "UPDATE", DirectoryUser._meta.db_table)
    assert len(link_updates) == 2  # the photo digests, one statement a batch


def test_a_photo_that_cannot_be_written_is_skipped_and_the_rest_lands(
    make_slapd, media, monkeypatch
):
    spec = staff()
    server = make_slapd(spec=spec)
    save = FileSystemStorage._save

    def failing_save(self, name, content):
        if Path(name).name.startswith("p1_"):
            raise OSError(28, "No space left on device")
        return save(self, name, content)

    monkeypatch.setattr(FileSystemStorage, "_save", failing_save)
    result = sync(server)
    assert result.status == "partial"
    [problem] = result.problems
    assert problem.startswith(f"photo of {server.user_dn('p1')} not written: ")
    want = expected(spec)
    want["p1"] = (None, {})  # no file, no digest: the next run writes it
    assert photos(spec, media) == want

    monkeypatch.setattr(FileSystemStorage, "_save", save)
    again = sync(server)
    assert again.status == "success" and again.counts["photos_written"] == 1
    assert photos(spec, media) == expected(spec)
