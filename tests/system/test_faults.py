"""Never wrong, never destructive: real faults against real servers, and the removal guards.

Each fault is made for real: the server is stopped (slapd, Samba) or frozen (SIGSTOP) between two
pages of a search, a port refuses connections or accepts them and never answers, the server's
size limit is smaller than the scope, the database refuses a row (a constraint or a trigger),
the process is killed with SIGKILL in the middle of a batch. After each one the test checks the
same things: the run is recorded as failed with its cause (or as partial, for one bad row);
nobody was removed; the database is consistent (every batch whole or absent, no photo file
without a row); and the next run completes and ends in the directory's state.

The faults are triggered from inside a run through ``LDAP_SYNC_USER_CALLBACKS``
(:func:`inject_fault`), which the store calls after each batch has committed: the user search is
then suspended between two pages (``LDAP_SYNC_BIND_PAGESIZE`` = ``LDAP_SYNC_WRITE_BATCH_SIZE``).

The last sections test the removal guards: ``LDAP_SYNC_REMOVAL_THRESHOLD`` (a count or a
percentage; ``--force-removals`` for one run), the refusal of an empty result, and
``LDAP_SYNC_REMOVAL_GRACE`` (deactivate first, delete after the grace period, restore a user
who comes back).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import ldap
import pytest
from django.contrib.auth import get_user_model
from django.core.files.storage import FileSystemStorage
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from adldap_auth.models import DirectoryUser, SyncMarker, SyncRun
from adldap_auth.sync import SyncOptions, run_sync
from tests.helpers import samba_settings, slapd_settings
from tests.lab import ldif
from tests.lab.spec import DirectorySpec, GroupSpec, UserSpec, jpeg
from tests.site import wait_for

pytestmark = pytest.mark.django_db

User = get_user_model()

#: Users per page and per batch: a run of 12 users reads 3 pages and writes 3 batches.
PAGE = 4


# -- a directory, its expected state, and consistency ----------------------------------------


def company(count: int = 12) -> DirectorySpec:
    """``u00``... with a photo each, in two teams nested in "All"."""
    users = [
        UserSpec(
            f"u{i:02d}", "User", f"Number {i:02d}", mail=f"u{i:02d}@example.test",
            department="Ops", title="Staff", photo=jpeg(100 + i),
        )  # fmt: skip
        for i in range(count)
    ]
    half = count // 2
    groups = [
        GroupSpec("Team A", members=[u.key for u in users[:half]]),
        GroupSpec("Team B", members=[u.key for u in users[half:]]),
        GroupSpec("All", members=["group:Team A", "group:Team B"]),
    ]
    return DirectorySpec(users=users, groups=groups)


def edited(spec: DirectorySpec, drop=(), **changes: dict) -> DirectorySpec:
    """A copy of ``spec`` without the users in ``drop``, with field changes per user key."""
    users = [
        dataclasses.replace(u, **changes.get(u.key, {})) for u in spec.users if u.key not in drop
    ]
    groups = [
        dataclasses.replace(g, members=[m for m in g.members if m not in drop])
        for g in spec.groups
    ]
    return DirectorySpec(users=users, groups=groups)


def fault_settings(server, **extra) -> dict:
    values = {
        "LDAP_SYNC_BIND_PAGESIZE": PAGE,
        "LDAP_SYNC_WRITE_BATCH_SIZE": PAGE,
        "LDAP_SYNC_NETWORK_TIMEOUT": 1,
        "LDAP_SYNC_OPERATION_TIMEOUT": 5,
        **extra,
    }
    return slapd_settings(server, **values)


def state() -> dict[str, dict]:
    """Every synced user: fields, activity, removal, profile, photo bytes, groups."""
    from tests.testapp.models import Employee

    result = {}
    profiles = {p.user_id: p for p in Employee.objects.all()}
    for user in User.objects.prefetch_related("groups").select_related("directory_link").filter(
        directory_link__isnull=False
    ):
        profile = profiles.get(user.pk)
        photo = None
        if profile and profile.jpegphoto:
            with profile.jpegphoto.open("rb") as handle:
                photo = handle.read()
        result[user.username] = {
            "last_name": user.last_name,
            "email": user.email,
            "is_active": user.is_active,
            "removal": user.directory_link.removal_reason,
            "title": profile.title if profile else None,
            "photo": photo,
            "groups": {g.name for g in user.groups.all()},
        }
    return result


def expected(spec: DirectorySpec, keys=None) -> dict[str, dict]:
    """The state a complete run over ``spec`` leaves, for ``keys`` (default: every user)."""
    closure = spec.expected_groups()
    return {
        u.key: {
            "last_name": u.sn,
            "email": u.mail or "",
            "is_active": True,
            "removal": "",
            "title": u.title or "",
            "photo": u.photo,
            "groups": closure[u.key],
        }
        for u in spec.users
        if keys is None or u.key in keys
    }


def assert_consistent(media_root: Path) -> None:
    """Every batch whole or absent: each synced user has its profile and the photo file its
    row names; no photo file exists that no row names."""
    from tests.testapp.models import Employee

    linked = set(DirectoryUser.objects.values_list("user_id", flat=True))
    profiles = {p.user_id: p for p in Employee.objects.all()}
    assert linked <= set(profiles), "a synced user without its profile"
    named = {p.jpegphoto.name for p in profiles.values() if p.jpegphoto}
    for name in named:
        assert (media_root / name).is_file(), f"a row names the missing file {name}"
    on_disk = {
        str(path.relative_to(media_root)) for path in media_root.rglob("*") if path.is_file()
    }
    assert on_disk == named, f"files that no row names: {sorted(on_disk - named)}"


# -- faults injected from inside a run -----------------------------------------------------------

#: Faults to run, once each, after the next batch has committed (see :func:`inject_fault`).
FAULTS: list[Callable[[], None]] = []


def inject_fault(user, attributes, created, updated) -> None:
    """A ``LDAP_SYNC_USER_CALLBACKS`` hook: after a batch commits, run the pending fault."""
    while FAULTS:
        FAULTS.pop(0)()


@pytest.fixture
def faults():
    FAULTS.clear()
    yield FAULTS
    FAULTS.clear()


INJECT = {"LDAP_SYNC_USER_CALLBACKS": ["tests.system.test_faults.inject_fault"]}


def new_title(spec: DirectorySpec, key: str, title: str) -> DirectorySpec:
    return edited(spec, **{key: {"title": title}})


# -- the server dies in the middle of a paged search --------------------------------------------


@pytest.mark.django_db(transaction=True)  # callbacks and signals fire on commit
def test_slapd_stopped_between_pages_removes_nobody_and_the_next_run_completes(
    make_slapd, media, faults
):
    spec = company()
    server = make_slapd(spec=spec)
    with override_settings(**fault_settings(server)):
        assert run_sync(SyncOptions(mode="full")).status == "success"
        marker = SyncMarker.objects.values().get()
        # u11 leaves the company; u00 (first page) and u08 (last page) get new titles.
        changed = edited(spec, drop=["u11"], u00={"title": "Chief"}, u08={"title": "Lead"})
        server.apply(spec, changed)

        faults.append(server.stop)  # after the first batch: the next page finds no server
        with override_settings(**INJECT):
            failed = run_sync(SyncOptions(mode="full"))

        assert failed.status == "failed" and failed.error_kind == "IncompleteRead"
        assert "stopped early" in failed.error and "Can't contact LDAP server" in failed.error
        record = SyncRun.objects.get(pk=failed.run_id)
        assert (record.status, record.error) == ("failed", failed.error)
        assert record.finished_at is not None
        now = state()
        assert now["u11"]["is_active"] and now["u11"]["removal"] == ""  # nobody removed
        assert "users_removed" not in failed.counts
        assert now["u00"]["title"] == "Chief"  # the batch read before the fault is applied
        assert now["u08"]["title"] == "Staff"  # the page never read is not
        assert SyncMarker.objects.values().get() == marker  # the marker did not move
        assert_consistent(media)

        server.start()
        again = run_sync(SyncOptions(mode="full"))
    assert again.status == "success", again.error
    assert again.counts["users_removed"] == 1
    final = state()
    assert final["u11"]["is_active"] is False and final["u11"]["removal"] == "missing"
    del final["u11"]
    assert final == expected(changed)
    assert_consistent(media)


def freeze(pid: int) -> None:
    """SIGSTOP ``pid`` and wait until every thread of it is stopped: ``kill`` returns before
    the signal has reached a busy process's threads, which on a loaded machine could still
    answer the run's next request."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    tasks = Path(f"/proc/{pid}/task")
    while time.monotonic() < deadline:
        states = [(task / "stat").read_text().rsplit(")", 1)[1].split()[0] for task in tasks.iterdir()]
        if all(state in "tT" for state in states):
            return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} did not stop")


# Timing-sensitive on a machine loaded by parallel suites (the Django x Python matrix runs
# four): it runs in every database pass of `make test`, not in the matrix.
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)  # callbacks and signals fire on commit
def test_slapd_frozen_between_pages_times_out_and_removes_nobody(make_slapd, media, faults):
    spec = company()
    server = make_slapd(spec=spec)
    settings = fault_settings(server, LDAP_SYNC_OPERATION_TIMEOUT=1)
    with override_settings(**settings):
        assert run_sync(SyncOptions(mode="full")).ok
        changed = edited(spec, drop=["u11"], u00={"title": "Chief"})
        server.apply(spec, changed)
        pid = server._proc.pid
        faults.append(lambda: freeze(pid))  # alive, but never answers
        try:
            with override_settings(**INJECT):
                started = time.monotonic()
                failed = run_sync(SyncOptions(mode="full"))
                elapsed = time.monotonic() - started
        finally:
            os.kill(pid, signal.SIGCONT)
        assert failed.status == "failed" and failed.error_kind == "IncompleteRead"
        assert "stopped early: TIMEOUT" in failed.error
        # Bounded by LDAP_SYNC_OPERATION_TIMEOUT (1 s), not by the frozen server: a hang would
        # last forever. The margin absorbs a loaded machine; speed is the benchmarks' job.
        assert elapsed < 30
        assert state()["u11"]["is_active"]
        assert_consistent(media)
        again = run_sync(SyncOptions(mode="full"))
    assert again.status == "success"
    assert state()["u11"]["removal"] == "missing"


def lab_users_settings(dc, **extra) -> dict:
    """The named lab people only (not the 1,600 bulk users), a page of 2 at a time."""
    values = {
        "LDAP_SYNC_USER_FILTER": (
            "(&(objectCategory=person)(objectClass=user)(!(department=Bulk)))"
        ),
        "LDAP_SYNC_GROUP_SEARCH": dc.lab_dn,
        "LDAP_SYNC_BIND_PAGESIZE": 2,
        "LDAP_SYNC_WRITE_BATCH_SIZE": 2,
        **extra,
    }
    return samba_settings(dc, **values)


def ghost() -> Any:
    """A synced user whose entry is gone from the directory: a removal candidate."""
    user = User.objects.create_user("ghost", last_name="Gone")
    DirectoryUser.objects.create(
        user=user, guid=str(uuid.uuid4()), dn="CN=Ghost,OU=Lab,DC=example,DC=test"
    )
    return user


@pytest.mark.samba
@pytest.mark.django_db(transaction=True)  # callbacks and signals fire on commit
def test_samba_stopped_between_pages_removes_nobody_and_the_next_run_completes(
    samba_clean, media, faults
):
    dc = samba_clean
    gone = ghost()
    faults.append(dc.stop)
    with override_settings(**lab_users_settings(dc, **INJECT)):
        try:
            failed = run_sync(SyncOptions(mode="full"))
        finally:
            dc.start()
        assert failed.status == "failed" and failed.error_kind == "IncompleteRead", failed.error
        assert "stopped early" in failed.error
        assert SyncRun.objects.get(pk=failed.run_id).status == "failed"
        gone.refresh_from_db()
        assert gone.is_active  # nobody removed
        written = DirectoryUser.objects.exclude(user=gone).count()
        assert 1 <= written <= 2  # the first batch (a disabled entry is not created)
        again = run_sync(SyncOptions(mode="full"))
    assert again.status == "success", again.error
    gone.refresh_from_db()
    assert not gone.is_active and gone.directory_link.removal_reason == "missing"
    enabled = {u.key for u in dc.spec.users if u.department != "Bulk" and not u.disabled}
    synced = set(DirectoryUser.objects.exclude(user=gone).values_list("user__username", flat=True))
    assert synced == enabled


# -- failover: refused, silent ------------------------------------------------------------------


def refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_first_uri_that_refuses_connections_fails_over_at_once(make_slapd):
    server = make_slapd(spec=company(4))
    uris = [f"ldap://127.0.0.1:{refused_port()}", server.uri]
    with override_settings(**fault_settings(server, LDAP_SYNC_BIND_URI=uris)):
        started = time.monotonic()
        result = run_sync(SyncOptions(mode="full"))
    assert result.status == "success" and result.server == server.uri
    # At once: well under LDAP_SYNC_NETWORK_TIMEOUT (5 s), which a wait for the refused URI costs.
    assert time.monotonic() - started < 4
    assert SyncRun.objects.get().server == server.uri


@pytest.mark.parametrize("tls", ["none", "ldaps", "starttls"])
def test_a_first_uri_that_accepts_tcp_and_never_answers_fails_over_within_the_timeout(
    make_slapd, tls
):
    """The socket listens and is never read: TCP connects, the bind (or the TLS handshake,
    or the StartTLS request) gets no answer. LDAP_SYNC_NETWORK_TIMEOUT bounds each, not the
    much longer LDAP_SYNC_OPERATION_TIMEOUT."""
    server = make_slapd(spec=company(4), tls=tls != "none")
    settings = slapd_settings(server, **server.sync_settings(tls=tls))
    good = settings["LDAP_SYNC_BIND_URI"]
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        scheme = "ldaps" if tls == "ldaps" else "ldap"
        dead = f"{scheme}://127.0.0.1:{silent.getsockname()[1]}"
        settings.update(
            LDAP_SYNC_BIND_URI=[dead, good],
            LDAP_SYNC_NETWORK_TIMEOUT=1,
            LDAP_SYNC_OPERATION_TIMEOUT=30,
        )
        with override_settings(**settings):
            started = time.monotonic()
            result = run_sync(SyncOptions(mode="full"))
            elapsed = time.monotonic() - started
    assert result.status == "success", result.error
    assert result.server == good
    assert 1 <= elapsed < 1 + 2


def test_when_every_uri_is_silent_or_refused_the_run_fails_within_the_timeouts(make_slapd):
    server = make_slapd(spec=company(4))
    with override_settings(**fault_settings(server)):
        assert run_sync(SyncOptions(mode="full")).ok
    before = state()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uris = [f"ldap://127.0.0.1:{silent.getsockname()[1]}", f"ldap://127.0.0.1:{refused_port()}"]
        with override_settings(**fault_settings(server, LDAP_SYNC_BIND_URI=uris)):
            started = time.monotonic()
            result = run_sync(SyncOptions(mode="full"))
    assert time.monotonic() - started < 1 + 2
    assert result.status == "failed" and result.error_kind == "DirectoryUnavailable"
    assert result.error.startswith("no directory server answered: ")
    assert "TIMEOUT" in result.error and "Can't contact LDAP server" in result.error
    assert state() == before


# -- size limits and referrals --------------------------------------------------------------------


def set_limit(server, value: str) -> None:
    """Set the database's olcSizeLimit (slapd-config(5) ``size.*`` limits)."""
    conn = server.admin_connection()
    try:
        conn.modify_s(
            "olcDatabase={1}mdb,cn=config",
            [(ldap.MOD_REPLACE, "olcSizeLimit", [value.encode()])],
        )
    finally:
        conn.unbind_s()


def test_a_size_limit_on_unpaged_searches_does_not_shorten_a_paged_run(make_slapd, media):
    """Like Active Directory's MaxPageSize: the paged search reads past the limit, even with
    pages larger than it, and the run is complete (its removals happen)."""
    spec = company()
    server = make_slapd(spec=spec, sizelimit=3)
    conn = server.reader_connection()
    with pytest.raises(ldap.SIZELIMIT_EXCEEDED):  # the limit is real
        conn.search_s(ldif.PEOPLE_DN, ldap.SCOPE_SUBTREE, "(objectClass=inetOrgPerson)", ["uid"])
    with override_settings(**fault_settings(server, LDAP_SYNC_BIND_PAGESIZE=50)):
        assert run_sync(SyncOptions(mode="full")).status == "success"
        changed = edited(spec, drop=["u11"])
        server.apply(spec, changed)
        result = run_sync(SyncOptions(mode="full"))
    assert result.status == "success" and result.counts["users_removed"] == 1
    assert {k: v for k, v in state().items() if k != "u11"} == expected(changed)


@pytest.mark.parametrize(
    ("limit", "cause", "batches_written"),
    [
        # paged searches capped too (size.prtotal follows size.hard): the user search ends
        # after 6 entries, in its second page
        ("size.soft=6 size.hard=6", "Size limit exceeded", 1),
        # paging refused altogether: the group search, the first one, fails at once
        ("size.soft=6 size.hard=6 size.prtotal=disabled", "pagedResults control not allowed", 0),
    ],
    ids=["paged-searches-capped", "paging-refused"],
)
def test_a_size_limit_smaller_than_the_scope_fails_the_run_and_removes_nobody(
    make_slapd, media, limit, cause, batches_written
):
    spec = company()
    server = make_slapd(spec=spec)
    with override_settings(**fault_settings(server)):
        assert run_sync(SyncOptions(mode="full")).ok
        changed = edited(spec, drop=["u11"], u00={"title": "Chief"}, u05={"title": "Lead"})
        server.apply(spec, changed)
        set_limit(server, limit)
        failed = run_sync(SyncOptions(mode="full"))
        assert failed.status == "failed" and failed.error_kind == "IncompleteRead"
        assert cause in failed.error
        now = state()
        assert now["u11"]["is_active"] and "users_removed" not in failed.counts
        assert now["u00"]["title"] == ("Chief" if batches_written else "Staff")
        assert now["u05"]["title"] == "Staff"  # the second batch was never complete
        assert_consistent(media)
        set_limit(server, "unlimited")
        again = run_sync(SyncOptions(mode="full"))
    assert again.status == "success"
    assert state()["u11"]["removal"] == "missing"


def test_a_referral_instead_of_the_search_base_fails_the_run_and_removes_nobody(make_slapd):
    spec = company(6)
    server = make_slapd(spec=spec)
    with override_settings(**fault_settings(server)):
        assert run_sync(SyncOptions(mode="full")).ok
    server.apply(spec, edited(spec, drop=["u05"]))
    moved = f"ou=Moved,{ldif.BASE_DN}"  # the groups now live on another server
    conn = server.admin_connection()
    conn.add_s(
        moved,
        [
            ("objectClass", [b"referral", b"extensibleObject"]),
            ("ou", [b"Moved"]),
            ("ref", [f"ldap://other.example.test/{moved}".encode()]),
        ],
    )
    with override_settings(**fault_settings(server, LDAP_SYNC_GROUP_SEARCH=moved)):
        failed = run_sync(SyncOptions(mode="full"))
    assert failed.status == "failed" and failed.error_kind == "IncompleteRead"
    assert "Referral" in failed.error and "other.example.test" in failed.error
    assert state()["u05"]["is_active"]


@pytest.mark.parametrize("setting", ["LDAP_SYNC_GROUP_SEARCH", "LDAP_SYNC_USER_SEARCH"])
def test_a_search_base_that_does_not_exist_fails_the_run_and_removes_nobody(make_slapd, setting):
    """A typo in a search base is not an empty scope: the run fails before any removal (the
    group base is checked even where only the membership scope is searched)."""
    spec = company(6)
    server = make_slapd(spec=spec)
    with override_settings(**fault_settings(server)):
        assert run_sync(SyncOptions(mode="full")).ok
        before = state()
    typo = f"ou=Gropus,{ldif.BASE_DN}"
    with override_settings(**fault_settings(server, **{setting: typo})):
        failed = run_sync(SyncOptions(mode="full"))
    assert failed.status == "failed" and failed.error_kind == "IncompleteRead", failed.error
    assert "does not exist" in failed.error
    assert state() == before


# -- the database fails during a batch ------------------------------------------------------------


def test_a_rename_onto_a_local_username_rolls_back_its_batch_and_keeps_the_rest(
    make_slapd, media
):
    """A real unique-constraint violation: the directory renames u05 to the username of a
    local Django user. Its batch is rolled back and retried row by row: u05's row is
    reported and left as it was; the other rows of the batch, and the other batches, land."""
    spec = company()
    server = make_slapd(spec=spec)
    with override_settings(**fault_settings(server)):
        assert run_sync(SyncOptions(mode="full")).ok
        local = User.objects.create_user("taken", first_name="Local", password="x")
        local_before = User.objects.values().get(pk=local.pk)
        u05_before = User.objects.values().get(username="u05")
        changed = edited(spec, u04={"title": "Chief"}, u06={"title": "Lead"}, u10={"title": "Ace"})
        server.apply(spec, changed)
        conn = server.admin_connection()
        conn.rename_s(server.user_dn("u05"), "uid=taken", delold=1)  # same entryUUID

        result = run_sync(SyncOptions(mode="full"))
        assert result.status == "partial", result.error
        assert result.counts["errors"] == 1
        [problem] = result.problems
        assert problem.startswith(f"user uid=taken,{ldif.PEOPLE_DN} not written: ")
        assert "username" in problem.lower() or "unique" in problem.lower()
        assert SyncRun.objects.get(pk=result.run_id).problems == [problem]
        now = state()
        assert (now["u04"]["title"], now["u06"]["title"], now["u10"]["title"]) == (
            "Chief", "Lead", "Ace",
        )  # fmt: skip
        assert User.objects.values().get(username="u05") == u05_before  # untouched
        assert User.objects.values().get(pk=local.pk) == local_before  # untouched
        assert_consistent(media)

        again = run_sync(SyncOptions(mode="full"))  # the same problem, nothing else
        assert again.status == "partial" and again.problems == [problem]
        local.delete()
        fixed = run_sync(SyncOptions(mode="full"))
    assert fixed.status == "success"
    assert DirectoryUser.objects.get(dn__startswith="uid=taken,").user.pk == u05_before["id"]


def test_a_retried_batch_reports_each_problem_once(make_slapd):
    """A batch that is rolled back and retried row by row reports each problem once: here a
    recreated entry (a new entryUUID for the username of a linked user, relinked once the read
    is complete: deferred by the failed attempt and by its retry, done once) and the rename onto
    a local username, in the same batch."""
    spec = company(8)
    server = make_slapd(spec=spec)
    with override_settings(**fault_settings(server, LDAP_SYNC_REMOVAL_THRESHOLD=None)):
        assert run_sync(SyncOptions(mode="full")).ok
        without = edited(spec, drop=["u04"])
        server.apply(spec, without)
        server.apply(without, spec)  # u04 again, as a new entry
        User.objects.create_user("taken")
        server.admin_connection().rename_s(server.user_dn("u05"), "uid=taken", delold=1)
        result = run_sync(SyncOptions(mode="full"))
    linked, written = sorted(result.problems, key=lambda line: "taken" in line)
    assert linked == (
        f"user {server.user_dn('u04')}: Django user 'u04' relinked to this entry; its former "
        f"entry {server.user_dn('u04')} is gone"
    )
    assert written.startswith(f"user uid=taken,{ldif.PEOPLE_DN} not written: ")
    assert result.counts["errors"] == 1 and result.counts["users_relinked"] == 1


def _fail_new_link(dn_prefix: str) -> tuple[str, str]:
    """SQL to create and drop a trigger that refuses the identity link of one new user: the
    last write of its batch, inserted with its photo digests once the photo files are written."""
    table = DirectoryUser._meta.db_table
    if connection.vendor == "postgresql":
        create = (
            "CREATE FUNCTION adldap_test_fail() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN RAISE EXCEPTION 'simulated database failure'; END $$; "
            f"CREATE TRIGGER adldap_test_fail BEFORE INSERT ON {table} "
            f"FOR EACH ROW WHEN (NEW.dn LIKE '{dn_prefix}%') EXECUTE FUNCTION adldap_test_fail()"
        )
        drop = f"DROP TRIGGER adldap_test_fail ON {table}; DROP FUNCTION adldap_test_fail()"
    elif connection.vendor == "mysql":
        create = (
            f"CREATE TRIGGER adldap_test_fail BEFORE INSERT ON {table} FOR EACH ROW "
            f"BEGIN IF NEW.dn LIKE '{dn_prefix}%' THEN "
            "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'simulated database failure'; "
            "END IF; END"
        )
        drop = "DROP TRIGGER adldap_test_fail"
    else:
        create = (
            f"CREATE TRIGGER adldap_test_fail BEFORE INSERT ON {table} "
            f"WHEN NEW.dn LIKE '{dn_prefix}%' "
            "BEGIN SELECT RAISE(ABORT, 'simulated database failure'); END"
        )
        drop = "DROP TRIGGER adldap_test_fail"
    return create, drop


# transaction=True: MariaDB commits the test's transaction at CREATE TRIGGER (implicit commit
# of DDL), so the rows of a plain django_db test would outlive it.
@pytest.mark.django_db(transaction=True)
def test_a_database_failure_after_the_photos_rolls_back_the_batch_and_its_files(
    make_slapd, media
):
    """The database refuses the last write of u05's batch, after its photo files were written:
    the batch is rolled back, the files it wrote are deleted, u05 is reported and absent, and
    the other rows and batches are whole. Once the database accepts it, the next run adds u05."""
    spec = company()
    server = make_slapd(spec=spec)
    create, drop = _fail_new_link("uid=u05,")
    with connection.cursor() as cursor:
        cursor.execute(create)
    with override_settings(**fault_settings(server)):
        result = run_sync(SyncOptions(mode="full"))
        assert result.status == "partial", result.error
        [problem] = result.problems  # PostgreSQL adds the trigger's CONTEXT line
        assert problem.startswith(f"user {server.user_dn('u05')} not written: ")
        assert "simulated database failure" in problem  # MariaDB: "(1644, 'simulated ...')"
        assert result.counts["errors"] == 1
        assert result.counts["users_created"] == 11
        now = state()
        assert set(now) == {u.key for u in spec.users} - {"u05"}
        assert not User.objects.filter(username="u05").exists()
        assert now == expected(spec, set(now))
        assert_consistent(media)  # no file of the rolled-back attempt is left

        with connection.cursor() as cursor:
            cursor.execute(drop)
        again = run_sync(SyncOptions(mode="full"))
    assert again.status == "success"
    assert state() == expected(spec)
    assert_consistent(media)


# -- the process is killed in the middle of a batch -----------------------------------------------


class StallingStorage(FileSystemStorage):
    """Stalls, inside the batch's transaction, when writing the photo named by
    ``$ADLDAP_STALL_ON``; creates ``$ADLDAP_STALLED_FILE`` first (for a test to kill it)."""

    def _save(self, name, content):
        marker = os.environ.get("ADLDAP_STALL_ON")
        if marker and Path(name).name.startswith(marker):
            Path(os.environ["ADLDAP_STALLED_FILE"]).write_text(str(os.getpid()))
            time.sleep(120)
        return super()._save(name, content)


def test_a_run_killed_inside_a_batch_leaves_it_absent_and_the_next_run_completes(
    site_db, make_slapd, tmp_path
):
    spec = company()
    server = make_slapd(spec=spec)
    media_root = tmp_path / "media"
    settings = fault_settings(
        server,
        MEDIA_ROOT=str(media_root),
        STORAGES={"default": {"BACKEND": "tests.system.test_faults.StallingStorage"}},
    )
    stalled = tmp_path / "stalled"
    env = {"ADLDAP_STALL_ON": "u05_", "ADLDAP_STALLED_FILE": str(stalled)}
    process = site_db.manage("syncldap", "full", settings=settings, extra_env=env)
    try:
        wait_for(lambda: stalled.exists() or process.poll() is not None, 60, "the stall")
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGKILL)  # no cleanup, no rollback by the process itself
        assert process.wait(30) == -signal.SIGKILL
    finally:
        process.kill()
        process.wait()

    # The first batch is whole; the second, killed inside its transaction, is absent.
    rows = site_db.query(
        "SELECT u.username FROM auth_user u JOIN adldap_auth_directoryuser d ON d.user_id = u.id"
    )
    assert sorted(r[0] for r in rows) == ["u00", "u01", "u02", "u03"]
    assert site_db.query("SELECT COUNT(*) FROM auth_user") == [(4,)]
    assert site_db.query("SELECT COUNT(*) FROM testapp_employee") == [(4,)]
    assert site_db.query("SELECT status FROM adldap_auth_syncrun") == [("running",)]
    # Files are written before the rows that name them, so a kill can leave a file of the
    # killed batch that no row names (here u04's, written before the stall at u05's): never
    # a row naming a missing file.
    named = {r[0] for r in site_db.query("SELECT jpegphoto FROM testapp_employee")}
    on_disk = {str(p.relative_to(media_root)) for p in media_root.rglob("*") if p.is_file()}
    assert named <= on_disk
    assert {Path(name).name.split("_")[0] for name in on_disk - named} <= {"u04"}

    done = site_db.run_manage("syncldap", "full", "--json", settings=settings)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["status"] == "success"
    runs = site_db.query("SELECT status, error FROM adldap_auth_syncrun ORDER BY id")
    assert runs[0] == ("failed", "interrupted: the process ended before the run finished")
    assert runs[1][0] == "success"
    assert site_db.query("SELECT owner FROM adldap_auth_synclock") == [("",)]
    rows = site_db.query(
        "SELECT u.username, g.name, e.jpegphoto FROM auth_user u "
        "JOIN adldap_auth_directoryuser d ON d.user_id = u.id "
        "JOIN testapp_employee e ON e.user_id = u.id "
        "LEFT JOIN auth_user_groups ug ON ug.user_id = u.id "
        "LEFT JOIN auth_group g ON g.id = ug.group_id"
    )
    groups: dict[str, set[str]] = {}
    for username, group, photo in rows:
        groups.setdefault(username, set()).add(group)
        assert (media_root / photo).read_bytes() == spec.user(username).photo
    closure = spec.expected_groups()
    assert groups == {u.key: closure[u.key] for u in spec.users}


# -- the removal threshold -------------------------------------------------------------------------


def sync_ok(**options) -> object:
    result = run_sync(SyncOptions(mode="full", **options))
    assert result.ok, result.error
    return result


@pytest.mark.parametrize(("threshold", "shown"), [(2, "(2)"), ("20%", "(20% of 12 synced users)")])
def test_more_removals_than_the_threshold_are_refused_until_forced_once(
    make_slapd, threshold, shown, capsys
):
    spec = company()
    server = make_slapd(spec=spec)
    with override_settings(**fault_settings(server, LDAP_SYNC_REMOVAL_THRESHOLD=threshold)):
        sync_ok()
        first_cut = edited(spec, drop=["u09", "u10", "u11"], u00={"title": "Chief"})
        server.apply(spec, first_cut)

        refused = run_sync(SyncOptions(mode="full"))
        assert refused.status == "failed" and refused.error_kind == "RemovalRefused"
        assert refused.error == (
            f"3 users would be removed, more than LDAP_SYNC_REMOVAL_THRESHOLD {shown}; nobody "
            "was removed. Check the directory, then run 'manage.py syncldap full "
            "--force-removals' to apply them."
        )
        assert SyncRun.objects.get(pk=refused.run_id).error == refused.error
        now = state()
        assert all(now[k]["is_active"] for k in ("u09", "u10", "u11"))
        assert now["u00"]["title"] == "Chief"  # creates and updates are applied

        # The command says why and exits non-zero.
        with pytest.raises(CommandError) as exited:
            call_command("syncldap", "full", "--json")
        assert exited.value.returncode == 1
        assert "would be removed" in str(exited.value)
        assert json.loads(capsys.readouterr().out)["error_kind"] == "RemovalRefused"

        call_command("syncldap", "full", "--force-removals")  # this run only
        assert [state()[k]["removal"] for k in ("u09", "u10", "u11")] == ["missing"] * 3

        server.apply(first_cut, edited(first_cut, drop=["u06", "u07", "u08"]))
        again = run_sync(SyncOptions(mode="full"))  # not forced any more
    assert again.error_kind == "RemovalRefused"
    assert all(state()[k]["is_active"] for k in ("u06", "u07", "u08"))


def test_removals_within_the_threshold_are_applied(make_slapd):
    spec = company()
    server = make_slapd(spec=spec)
    with override_settings(**fault_settings(server, LDAP_SYNC_REMOVAL_THRESHOLD="20%")):
        sync_ok()
        server.apply(spec, edited(spec, drop=["u10", "u11"]))  # 2 <= 2.4
        assert sync_ok().counts["users_removed"] == 2


@pytest.mark.parametrize("force", [False, True])
def test_an_empty_result_after_users_were_synced_is_always_refused(make_slapd, force):
    server = make_slapd(spec=company())
    with override_settings(**fault_settings(server, LDAP_SYNC_REMOVAL_THRESHOLD=None)):
        sync_ok()
        with override_settings(LDAP_SYNC_USER_FILTER="(&(objectClass=inetOrgPerson)(uid=x*))"):
            refused = run_sync(SyncOptions(mode="full", force_removals=force))
    assert refused.error_kind == "RemovalRefused"
    assert refused.error.startswith("the directory returned no users while 12 synced users exist")
    assert all(s["is_active"] for s in state().values())


def test_the_default_threshold_is_a_percentage_with_a_floor():
    """Issue 14 #4; the default at work: tests/slapd/test_security_guards.py."""
    from adldap_auth.conf import DEFAULTS

    assert DEFAULTS["REMOVAL_THRESHOLD"] == {"percent": 10, "minimum": 10}


# -- the grace period ------------------------------------------------------------------------------

DEACTIVATE = "adldap_auth.callbacks.removed_user_deactivate"
DELETE = "adldap_auth.callbacks.removed_user_delete"


def backdate_removals(hours: float) -> None:
    DirectoryUser.objects.filter(removed_at__isnull=False).update(
        removed_at=timezone.now() - timedelta(hours=hours)
    )


@pytest.mark.parametrize("callbacks", [[DEACTIVATE, DELETE], [DELETE]])
def test_a_missing_user_is_deactivated_then_deleted_after_the_grace_period(make_slapd, callbacks):
    spec = company()
    server = make_slapd(spec=spec)
    settings = fault_settings(
        server, LDAP_SYNC_REMOVED_USER_CALLBACKS=callbacks, LDAP_SYNC_REMOVAL_GRACE=3600
    )
    with override_settings(**settings):
        sync_ok()
        gone = edited(spec, drop=["u11"])
        server.apply(spec, gone)
        first = sync_ok()
        assert first.counts["users_removed"] == 1 and "users_deleted" not in first.counts
        u11 = User.objects.get(username="u11")
        assert not u11.is_active and u11.directory_link.removal_reason == "missing"
        assert "users_deleted" not in sync_ok().counts  # within the grace period: kept
        backdate_removals(hours=2)
        dry = sync_ok(dry_run=True)
        assert dry.counts["users_deleted"] == 1 and User.objects.filter(username="u11").exists()
        last = sync_ok()
    assert last.counts["users_deleted"] == 1
    assert not User.objects.filter(username="u11").exists()
    assert User.objects.filter(is_active=True).count() == 11


def test_a_user_who_comes_back_within_the_grace_period_is_restored(make_slapd):
    """u11 leaves the scope (here: the filter; on AD also a move out of the base, or a delete
    undone from the recycle bin, which keeps the objectGUID) and comes back: restored."""
    spec = company()
    server = make_slapd(spec=spec)
    settings = fault_settings(
        server,
        LDAP_SYNC_USER_FILTER="(&(objectClass=inetOrgPerson)(!(title=Leaver)))",
        LDAP_SYNC_REMOVED_USER_CALLBACKS=[DELETE],
        LDAP_SYNC_REMOVAL_GRACE=timedelta(days=1),
    )
    with override_settings(**settings):
        sync_ok()
        gone = edited(spec, u11={"title": "Leaver"})
        server.apply(spec, gone)
        assert sync_ok().counts["users_removed"] == 1
        u11 = User.objects.get(username="u11")
        assert not u11.is_active
        server.apply(gone, spec)  # the same entry (same entryUUID) back in scope
        back = sync_ok()
        assert back.counts["users_restored"] == 1
        backdate_removals(hours=48)  # nobody is removed any more, so nobody is due
        assert "users_deleted" not in sync_ok().counts
    u11.refresh_from_db()
    assert u11.is_active and u11.directory_link.removed_at is None
    assert state() == expected(spec)


def test_a_disabled_user_is_deleted_after_the_grace_period_only_while_still_disabled(make_slapd):
    spec = company()
    server = make_slapd(spec=spec)
    settings = fault_settings(
        server, LDAP_SYNC_REMOVED_USER_CALLBACKS=[DELETE], LDAP_SYNC_REMOVAL_GRACE=60
    )
    with override_settings(**settings):
        sync_ok()
        disabled = edited(spec, u10={"disabled": True}, u11={"disabled": True})
        server.apply(spec, disabled)
        sync_ok()
        assert set(User.objects.filter(is_active=False).values_list("username", flat=True)) == {
            "u10", "u11",
        }  # fmt: skip
        enabled_again = edited(disabled, u10={"disabled": False})
        server.apply(disabled, enabled_again)
        backdate_removals(hours=1)
        result = sync_ok()
    assert result.counts["users_restored"] == 1 and result.counts["users_deleted"] == 1
    assert User.objects.get(username="u10").is_active
    assert not User.objects.filter(username="u11").exists()


def test_without_a_grace_period_the_delete_callback_deletes_at_once(make_slapd):
    spec = company()
    server = make_slapd(spec=spec)
    with override_settings(**fault_settings(server, LDAP_SYNC_REMOVED_USER_CALLBACKS=[DELETE])):
        sync_ok()
        server.apply(spec, edited(spec, drop=["u11"]))
        assert sync_ok().counts["users_removed"] == 1
    assert not User.objects.filter(username="u11").exists()


def test_a_grace_period_without_the_delete_callback_only_deactivates(make_slapd):
    spec = company()
    server = make_slapd(spec=spec)
    with override_settings(**fault_settings(server, LDAP_SYNC_REMOVAL_GRACE=0)):
        sync_ok()
        server.apply(spec, edited(spec, drop=["u11"]))
        sync_ok()
        backdate_removals(hours=1)
        assert "users_deleted" not in sync_ok().counts
    assert not User.objects.get(username="u11").is_active
