"""A login linking groups while a batch run syncs them: both must end with the same groups.

``Store.sync_groups`` reads the groups' links by guid, then the unlinked names' Django groups,
in two queries outside any transaction. A login that creates and links a group between the
two (a cold ``syncldap full`` while people log in) leaves the batch with a Django group of
that name linked to the very entry it is syncing: that group must be taken as the entry's,
not skipped as "linked to another directory entry". Skipped, the run reported an error, gave
nobody that group, and counted the login's memberships of it as removals (a cold run then
stopped at the removal threshold). The login is made at that exact point (a hook, no timing).

The same class of race for the other rows both write: users and their links (each side
linking the user between the other's two reads), default groups
(``LDAP_SYNC_GROUP_MEMBERSHIP_ADD_DEFAULT``, created by both at once), and SQLite's write lock
held by logins while the run writes groups. The concurrent writer runs in the window through a
hook: on PostgreSQL and MariaDB from another thread (its own connection, committed before the
hooked side reads on, as READ COMMITTED shows it); on SQLite in the same connection, since a
transaction there never sees another connection's commit between two of its reads.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import Group
from django.db import connection, connections
from django.test import override_settings

from adldap_auth.models import DirectoryGroup, DirectoryUser, SyncRun
from adldap_auth.store import Store
from adldap_auth.sync import SyncOptions, run_sync
from tests.backend_helpers import login_settings
from tests.helpers import django_state, slapd_settings
from tests.lab.spec import LAB_PASSWORD
from tests.samba.test_sync_full import expected_slapd_state
from tests.site import Lines, _migrated_sqlite_template
from tests.system.test_sqlite_logins import sqlite_site

T = TypeVar("T")
DEFAULT_GROUP = "Directory Users"


@pytest.mark.django_db(transaction=True)  # the login's retries run outside any transaction
def test_groups_a_login_links_between_the_batch_reads_are_the_batch_groups(slapd_lab, monkeypatch):
    original = Store._groups_by_lower_name
    logins: list[Any] = []

    def by_lower_name(names: Any) -> dict[str, list[Group]]:
        names = list(names)
        if not logins:  # the batch's first read of names: alice logs in just before it
            logins.append(None)
            logins[0] = authenticate(username="alice", password=LAB_PASSWORD)
        return original(names)

    monkeypatch.setattr(Store, "_groups_by_lower_name", staticmethod(by_lower_name))
    with override_settings(**login_settings(slapd_settings(slapd_lab))):
        result = run_sync(SyncOptions(mode="full"))
    assert logins and logins[0] is not None and logins[0].username == "alice"
    linked_by_login = set(logins[0].groups.values_list("name", flat=True))
    assert linked_by_login, "alice's login wrote her groups before the batch read their names"
    assert (result.status, result.problems) == (SyncRun.STATUS_SUCCESS, []), result.error
    # Every user holds exactly the directory's groups, those the login linked included.
    expected = expected_slapd_state(slapd_lab)
    actual = django_state()
    assert {k: actual[k]["groups"] for k in actual} == {k: s["groups"] for k, s in expected.items()}
    assert DirectoryGroup.objects.count() == Group.objects.count() == len(slapd_lab.spec.groups)


def as_another_writer(func: Callable[[], T]) -> T:
    """``func()`` as another process's writer would run it in the race window: on its own
    connection (a thread) committed before returning, except on SQLite, whose transactions
    are snapshots (there the same connection stands for what READ COMMITTED would show)."""
    if connection.vendor == "sqlite":
        return func()
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append(func())
        except BaseException as error:  # re-raised in the test's thread
            outcome.append(error)
        finally:
            connections.close_all()

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def assert_directory_state(lab: Any) -> None:
    """Every user holds exactly the directory's groups, each linked once."""
    expected = expected_slapd_state(lab)
    actual = django_state()
    assert {k: actual[k]["groups"] for k in actual} == {k: s["groups"] for k, s in expected.items()}
    assert DirectoryUser.objects.count() == get_user_model().objects.count() == len(expected)


# -- users: linked by the other side between the two reads -----------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_login_whose_user_a_batch_links_between_its_two_reads_logs_in(slapd_lab, monkeypatch):
    """The login read the links (none for alice), a run then creates and links alice, the
    login reads the users by username: alice, linked to alice's own entry. Her link, not a
    re-created account's user "linked to another entry which still exists"."""
    original = Store._users_by_lower_username
    runs: list[Any] = []

    def by_username(store: Store, usernames: list[str]) -> dict[str, list[Any]]:
        if not runs and not store.defer_relinks and "alice" in usernames:  # the login's read
            runs.append(None)
            runs[0] = as_another_writer(lambda: run_sync(SyncOptions(mode="full")))
        return original(store, usernames)

    monkeypatch.setattr(Store, "_users_by_lower_username", by_username)
    with override_settings(**login_settings(slapd_settings(slapd_lab))):
        alice = authenticate(username="alice", password=LAB_PASSWORD)
    assert runs and (runs[0].status, runs[0].problems) == (SyncRun.STATUS_SUCCESS, [])
    assert (
        alice is not None and alice.pk == DirectoryUser.objects.get(user__username="alice").user_id
    )
    assert_directory_state(slapd_lab)


@pytest.mark.django_db(transaction=True)
def test_a_batch_whose_user_a_login_links_between_its_two_reads_ends_right(slapd_lab, monkeypatch):
    """The reverse: the run read the links (none for alice), alice then logs in (her user,
    link and memberships written), the run reads the users by username and finds alice linked
    to the entry it is syncing. The run ends with success, nothing skipped or deferred to a
    failure, alice holding her groups once."""
    original = Store._users_by_lower_username
    logins: list[Any] = []

    def by_username(store: Store, usernames: list[str]) -> dict[str, list[Any]]:
        if not logins and store.defer_relinks and "alice" in usernames:  # the run's read
            logins.append(None)
            logins[0] = as_another_writer(
                lambda: authenticate(username="alice", password=LAB_PASSWORD)
            )
        return original(store, usernames)

    monkeypatch.setattr(Store, "_users_by_lower_username", by_username)
    with override_settings(**login_settings(slapd_settings(slapd_lab))):
        result = run_sync(SyncOptions(mode="full"))
    assert logins and logins[0] is not None and logins[0].username == "alice"
    assert (result.status, result.problems) == (SyncRun.STATUS_SUCCESS, []), result.error
    assert logins[0].pk == DirectoryUser.objects.get(user__username="alice").user_id
    assert_directory_state(slapd_lab)


@pytest.mark.skipif(
    connection.vendor == "sqlite", reason="SQLite: the run's write transaction locks logins out"
)
@pytest.mark.django_db(transaction=True)
def test_a_batch_whose_user_inserts_logins_beat_twice_writes_every_user(slapd_lab, monkeypatch):
    """Logins insert users between the run's read and its insert: bob beats the run's batch
    (a unique constraint fails it; it is done again one user at a time), then alice beats
    that one-user write of alice. Alice is read and written once more: no user of the run is
    left "not written"."""
    original = Store._users_by_lower_username
    logins: list[Any] = []

    def by_username(store: Store, usernames: list[str]) -> dict[str, list[Any]]:
        found = original(store, usernames)
        name = {0: "bob", 1: "alice"}.get(len(logins))
        if store.defer_relinks and name and "alice" in usernames and not found:
            logins.append(
                as_another_writer(lambda: authenticate(username=name, password=LAB_PASSWORD))
            )
        return found

    monkeypatch.setattr(Store, "_users_by_lower_username", by_username)
    with override_settings(**login_settings(slapd_settings(slapd_lab))):
        result = run_sync(SyncOptions(mode="full"))
    assert [user.username for user in logins] == ["bob", "alice"]
    assert (result.status, result.problems) == (SyncRun.STATUS_SUCCESS, []), result.error
    assert_directory_state(slapd_lab)


# -- default groups: created by both at once ---------------------------------------------------


def default_group_settings(lab: Any) -> dict[str, Any]:
    return login_settings(
        slapd_settings(
            lab,
            LDAP_SYNC_GROUP_MEMBERSHIP_ADD_DEFAULT=[DEFAULT_GROUP],
            LDAP_SYNC_GROUP_MEMBERSHIP_CREATE_IF_NOT_EXISTS=True,
        )
    )


def hook_default_group_read(monkeypatch, writer: Callable[[], Any]) -> list[Any]:
    """Run ``writer`` (as another writer) once, when the default group was first looked up by
    name and not found: after the last read, before the insert. Returns [its result]."""
    original = Store._groups_by_lower_name
    done: list[Any] = []

    def by_lower_name(names: Any) -> dict[str, list[Group]]:
        names = list(names)
        found = original(names)
        if not done and DEFAULT_GROUP in names and not found:
            done.append(None)
            done[0] = as_another_writer(writer)
        return found

    monkeypatch.setattr(Store, "_groups_by_lower_name", staticmethod(by_lower_name))
    return done


@pytest.mark.django_db(transaction=True)
def test_a_default_group_a_login_creates_while_the_batch_creates_it(slapd_lab, monkeypatch):
    logins = hook_default_group_read(
        monkeypatch, lambda: authenticate(username="alice", password=LAB_PASSWORD)
    )
    with override_settings(**default_group_settings(slapd_lab)):
        result = run_sync(SyncOptions(mode="full"))
    assert logins and logins[0] is not None, "alice's login created the default group first"
    assert (result.status, result.problems) == (SyncRun.STATUS_SUCCESS, []), result.error
    group = Group.objects.get(name=DEFAULT_GROUP)
    users = get_user_model().objects.all()
    assert users.count() > 1 and all(group in user.groups.all() for user in users)


@pytest.mark.django_db(transaction=True)
def test_a_default_group_a_batch_creates_while_the_login_creates_it(slapd_lab, monkeypatch, caplog):
    runs = hook_default_group_read(monkeypatch, lambda: run_sync(SyncOptions(mode="full")))
    with override_settings(**default_group_settings(slapd_lab)), caplog.at_level(logging.INFO):
        alice = authenticate(username="alice", password=LAB_PASSWORD)
    assert runs and (runs[0].status, runs[0].problems) == (SyncRun.STATUS_SUCCESS, [])
    assert alice is not None and alice.groups.filter(name=DEFAULT_GROUP).exists()
    # The login read the run's group again: no failed write attempt, no retry.
    assert not [r.getMessage() for r in caplog.records if "write attempt" in r.getMessage()]
    assert Group.objects.filter(name=DEFAULT_GROUP).count() == 1


# -- SQLite: logins hold the write lock while the run writes groups and memberships -----------

#: A run in a site process that stops before its first group write transaction (printing
#: PAUSE groups), then before its first membership transaction (PAUSE memberships), each until
#: the test holds SQLite's write lock (file ``<$ADLDAP_HELD_DIR>/<phase>``); what it logs and
#: its outcome are printed.
LOCKED_RUN = """
import json, logging, os, sys, time
import django
django.setup()
from adldap_auth.store import Store
from adldap_auth.sync import SyncOptions, run_sync
handler = logging.StreamHandler(sys.stdout)
handler.setFormatter(logging.Formatter("LOG %(message)s"))
logging.getLogger("adldap_auth").addHandler(handler)
logging.getLogger("adldap_auth").setLevel(logging.INFO)
def pause(phase):
    held = os.path.join(os.environ["ADLDAP_HELD_DIR"], phase)
    if not os.path.exists(held):
        print("PAUSE", phase, flush=True)
        while not os.path.exists(held):
            time.sleep(0.01)
by_name, membership_write = Store._groups_by_lower_name, Store._membership_write
def groups_by_lower_name(names):
    pause("groups")
    return by_name(names)
def before_memberships(store):
    membership_write(store)
    pause("memberships")
Store._groups_by_lower_name = staticmethod(groups_by_lower_name)
Store._membership_write = before_memberships
result = run_sync(SyncOptions(mode="full"))
print("RESULT", json.dumps([result.status, result.problems, result.error]), flush=True)
"""


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's database-wide write lock")
def test_a_run_waits_out_write_locks_held_past_the_busy_timeout_while_writing_groups(
    slapd_lab, tmp_path, tmp_path_factory
):
    """Logins hold SQLite's write lock longer than the run's busy timeout (0.2 s here) as it
    is about to write groups, then memberships: each of its transactions is done again once
    the lock is free, and the run ends with success (it failed with "database is locked")."""
    site = sqlite_site(_migrated_sqlite_template(tmp_path_factory), tmp_path, timeout=0.2)
    run = site.start(
        "-c", LOCKED_RUN, settings=login_settings(slapd_settings(slapd_lab)),
        extra_env={"ADLDAP_HELD_DIR": str(tmp_path)},
    )  # fmt: skip
    lines, seen = Lines(run), [""]

    def read_until(*marks: str) -> None:
        while not any(mark in seen[-1] for mark in (*marks, "RESULT")):
            seen.append(lines.next(120))

    try:
        for phase, what in (("groups", "sync of groups"), ("memberships", "of memberships")):
            read_until(f"PAUSE {phase}")
            holder = sqlite3.connect(site.sqlite_path, timeout=30, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")  # a login's write transaction, held for long
            (tmp_path / phase).touch()
            # Held until the run's transaction has waited past its busy timeout and met the
            # lock: its retry is logged.
            read_until(f"{what}: the database is busy")
            holder.execute("COMMIT")
            holder.close()
        read_until("RESULT")
    finally:
        for phase in ("groups", "memberships"):
            (tmp_path / phase).touch()
        try:
            run.wait(60)
        except subprocess.TimeoutExpired:
            run.kill()
            raise
    busy = [line for line in seen if "busy" in line]
    assert len(busy) >= 2 and all("database is locked" in line for line in busy), seen
    status, problems, error = json.loads(seen[-1].removeprefix("RESULT "))
    assert (status, problems) == (SyncRun.STATUS_SUCCESS, []), (error, seen)
    [(groups, linked, members)] = site.query(
        "SELECT count(*), (SELECT count(*) FROM adldap_auth_directorygroup), "
        "(SELECT count(*) FROM auth_user_groups) FROM auth_group"
    )
    assert groups == linked == len(slapd_lab.spec.groups) and members > 0
