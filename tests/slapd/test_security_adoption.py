"""Security: what the directory may take over in Django, against a real slapd.

- **Local users** (issue 14, finding 1): a Django user who is a superuser, staff, or has a usable
  password is never adopted by the directory entry of its username, by a batch run or at login,
  unless ``LDAP_SYNC_ADOPT_USERS`` names it or ``manage.py ldaplink`` links it. A refusal is
  reported and leaves the account exactly as it was, and an unlinked account is never removed.
- **Local groups** (finding 2): a Django group the sync did not create (with permissions or not)
  is never adopted by name unless ``LDAP_SYNC_ADOPT_GROUPS`` names it; ``GROUP_REMOVAL_ACTION =
  "DELETE"`` never deletes it.
- **Re-created accounts** (finding 11): a username whose Django user is linked to an entry that
  no longer exists moves to the new entry (batch: after the whole scope was read; login: after
  asking the directory), reported; while the old entry exists, it is refused with the remedy.
- **Usernames differing only in case** (finding 12): reported with both names, no raw
  ``IntegrityError``.
- **Two directory groups with one name** (issue 13, point 7): the group linked to the Django group
  keeps it and its members; the newcomer is reported and skipped.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from typing import Any

import ldap
import ldap.modlist
import pytest
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings

from adldap_auth.models import DirectoryGroup, DirectoryUser
from adldap_auth.sync import SyncOptions, SyncResult, run_sync
from tests.backend_helpers import login_settings
from tests.helpers import slapd_settings
from tests.lab import ldif
from tests.lab.spec import LAB_PASSWORD, DirectorySpec, GroupSpec, UserSpec

pytestmark = pytest.mark.django_db

User = get_user_model()
LOCAL_PASSWORD = "local-Passw0rd!"


def spec() -> DirectorySpec:
    """root and alice (who exist in Django too in some tests), bob, and two groups."""
    users = [
        UserSpec(key, key.title(), "Person", mail=f"{key}@directory.test", password=LAB_PASSWORD)
        for key in ("root", "alice", "bob")
    ]
    groups = [
        GroupSpec("Staff", members=["bob", "root"]),
        GroupSpec("Team", members=["alice", "bob"]),
    ]
    return DirectorySpec(users=users, groups=groups)


def without(old: DirectorySpec, *keys: str) -> DirectorySpec:
    """``old`` without these users (nor their memberships)."""
    users = [u for u in old.users if u.key not in keys]
    groups = [
        dataclasses.replace(g, members=[m for m in g.members if m not in keys]) for g in old.groups
    ]
    return DirectorySpec(users=users, groups=groups)


def full_run(**settings: Any) -> SyncResult:
    """A full run with these settings; it must not fail."""
    with override_settings(**settings):
        result = run_sync(SyncOptions(mode="full"))
    assert result.status != "failed", result.error
    return result


def count(result: SyncResult, name: str) -> int:
    """A counter of a run (those that stayed at zero are absent)."""
    return result.counts.get(name, 0)


def row(user: Any) -> dict[str, Any]:
    """Everything the user table holds of one user, and its groups."""
    values = User.objects.values().get(pk=user.pk)
    values["groups"] = sorted(User.objects.get(pk=user.pk).groups.values_list("name", flat=True))
    return values


LOCAL_KINDS = {
    "superuser": dict(is_superuser=True, is_staff=True, password=LOCAL_PASSWORD),
    "staff": dict(is_staff=True, password=None),
    "usable password": dict(password=LOCAL_PASSWORD),
}


def make_local(username: str, kind: str) -> Any:
    """A local account of one of the :data:`LOCAL_KINDS`, with a local e-mail address."""
    options = dict(LOCAL_KINDS[kind])
    password = options.pop("password")
    return User.objects.create_user(username, "break-glass@local.test", password, **options)


# -- finding 1: local users ------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(LOCAL_KINDS))
def test_a_batch_run_never_adopts_a_local_privileged_user_and_never_removes_it(make_slapd, kind):
    server = make_slapd(spec=spec())
    root = make_local("root", kind)
    root.groups.add(Group.objects.create(name="Break glass"))
    plain = User.objects.create_user("alice")  # unusable password, no flag: adopted as before
    before = row(root)
    settings = slapd_settings(server)

    result = full_run(**settings)

    assert result.status == "partial"
    assert count(result, "users_adoption_refused") == 1
    [problem] = [p for p in result.problems if "'root'" in p]
    assert problem.startswith(f"user {server.user_dn('root')} skipped: Django user 'root' ")
    assert "LDAP_SYNC_ADOPT_USERS" in problem and "manage.py ldaplink root" in problem
    assert row(root) == before  # e-mail, flags, password, groups: exactly as it was
    assert not DirectoryUser.objects.filter(user=root).exists()
    assert DirectoryUser.objects.get(user=plain).dn == server.user_dn("alice")
    assert User.objects.get(pk=plain.pk).email == "alice@directory.test"

    server.apply(server.spec, without(server.spec, "root"))  # the entry goes: root stays
    again = full_run(**settings)
    assert count(again, "users_removed") == 0
    assert row(root) == before


def test_a_refused_user_is_adopted_once_the_site_names_it(make_slapd):
    server = make_slapd(spec=spec())
    root = make_local("root", "superuser")
    settings = slapd_settings(server)
    assert full_run(**settings).counts.get("users_adoption_refused", 0) == 1
    assert not DirectoryUser.objects.filter(user=root).exists()

    result = full_run(**settings, LDAP_SYNC_ADOPT_USERS=["ROOT"])  # case-insensitive

    assert count(result, "users_adopted") == 1 and not count(result, "users_adoption_refused")
    root.refresh_from_db()
    assert root.email == "root@directory.test" and root.is_superuser  # the site's choice
    assert DirectoryUser.objects.get(user=root).dn == server.user_dn("root")
    assert set(root.groups.values_list("name", flat=True)) == {"Staff"}


def test_patterns_in_adopt_users(make_slapd):
    server = make_slapd(spec=spec())
    root = make_local("root", "staff")
    alice = make_local("alice", "usable password")
    result = full_run(**slapd_settings(server), LDAP_SYNC_ADOPT_USERS=["a*"])
    assert count(result, "users_adopted") == 1 and count(result, "users_adoption_refused") == 1
    assert DirectoryUser.objects.filter(user=alice).exists()
    assert not DirectoryUser.objects.filter(user=root).exists()


def test_a_login_never_adopts_a_local_superuser(make_slapd, caplog):
    server = make_slapd(spec=spec())
    root = make_local("root", "superuser")
    before = row(root)
    caplog.set_level(logging.WARNING, logger="adldap_auth")
    with override_settings(**login_settings(slapd_settings(server))):
        # The directory's password: the directory backend refuses, ModelBackend does not know it.
        assert authenticate(username="root", password=LAB_PASSWORD) is None
        # The local password still works (ModelBackend), and the account is untouched.
        local = authenticate(username="root", password=LOCAL_PASSWORD)
    assert local is not None and local.pk == root.pk
    assert row(root) == {**before, "last_login": row(root)["last_login"]}
    assert not DirectoryUser.objects.exists()
    refused = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "adldap_auth.login"
    ]
    assert len(refused) == 1, refused
    assert refused[0].startswith("directory login of root refused: ")
    assert "Django user 'root' is a superuser and is staff and has a usable password" in refused[0]


def test_ldaplink_links_a_local_superuser_on_purpose(make_slapd):
    server = make_slapd(spec=spec())
    root = make_local("root", "superuser")
    out = io.StringIO()
    with override_settings(**slapd_settings(server)):
        call_command("ldaplink", "Root", stdout=out)
        User.objects.create_user("nobody")
        with pytest.raises(CommandError, match="no directory entry of the user scope"):
            call_command("ldaplink", "nobody")
        with pytest.raises(CommandError, match="no Django user is named 'ghost'"):
            call_command("ldaplink", "ghost")
    assert out.getvalue().strip() == (
        f"linked Django user 'root' to {server.user_dn('root')}; note: it is a superuser and "
        "is staff and has a usable password, which the directory now controls"
    )
    root.refresh_from_db()
    assert root.email == "root@directory.test"
    assert set(root.groups.values_list("name", flat=True)) == {"Staff"}
    result = full_run(**slapd_settings(server))
    assert result.status == "success" and not count(result, "users_adopted")
    assert DirectoryUser.objects.get(user=root).dn == server.user_dn("root")


# -- finding 2: local groups -----------------------------------------------------------------


def test_a_local_group_is_never_adopted_by_name_nor_deleted(make_slapd):
    server = make_slapd(spec=spec())
    permission = Permission.objects.get(codename="add_user")
    staff = Group.objects.create(name="Staff")
    staff.permissions.add(permission)
    team = Group.objects.create(name="Team")  # made in the admin, no permission
    admin_pick = User.objects.create_user("helper")
    admin_pick.groups.add(staff, team)
    settings = slapd_settings(server, LDAP_SYNC_GROUP_REMOVAL_ACTION="DELETE")

    result = full_run(**settings)

    assert count(result, "groups_adoption_refused") == 2
    assert (
        f"group {server.group_dn('Staff')} skipped: Django group 'Staff' was not created by "
        "the sync and holds 1 permissions; it is adopted only when LDAP_SYNC_ADOPT_GROUPS "
        "names it (or rename one of the two)" in result.problems
    )
    assert (
        f"group {server.group_dn('Team')} skipped: Django group 'Team' was not created by "
        "the sync; it is adopted only when LDAP_SYNC_ADOPT_GROUPS names it (or rename one of "
        "the two)" in result.problems
    )
    assert not DirectoryGroup.objects.exists()
    for group in (staff, team):
        assert list(group.user_set.values_list("username", flat=True)) == ["helper"]
    assert list(staff.permissions.all()) == [permission]

    empty = DirectorySpec(users=server.spec.users, groups=[])
    server.apply(server.spec, empty)  # the directory groups go: DELETE leaves local groups alone
    full_run(**settings)
    assert set(Group.objects.values_list("name", flat=True)) == {"Staff", "Team"}
    assert list(Group.objects.get(name="Staff").permissions.all()) == [permission]


def test_a_local_group_is_adopted_when_the_site_names_it(make_slapd):
    server = make_slapd(spec=spec())
    staff = Group.objects.create(name="Staff")
    staff.permissions.add(Permission.objects.get(codename="add_user"))
    Group.objects.create(name="Team")
    settings = slapd_settings(server)
    assert full_run(**settings).counts.get("groups_adoption_refused", 0) == 2

    result = full_run(**settings, LDAP_SYNC_ADOPT_GROUPS=["Sta*"])

    assert count(result, "groups_adopted") == 1 and count(result, "groups_adoption_refused") == 1
    assert DirectoryGroup.objects.get(group=staff).dn == server.group_dn("Staff")
    assert set(staff.user_set.values_list("username", flat=True)) == {"bob", "root"}


def test_a_login_never_adopts_a_local_group(make_slapd):
    server = make_slapd(spec=spec())
    staff = Group.objects.create(name="Staff")
    staff.permissions.add(Permission.objects.get(codename="add_user"))
    with override_settings(**login_settings(slapd_settings(server))):
        bob = authenticate(username="bob", password=LAB_PASSWORD)
    assert bob is not None
    assert set(bob.groups.values_list("name", flat=True)) == {"Team"}
    assert not staff.user_set.exists() and not DirectoryGroup.objects.filter(group=staff).exists()
    assert not bob.has_perm("auth.add_user")


# -- finding 11: re-created accounts ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["full", "incremental"])
def test_a_recreated_account_keeps_its_django_user(make_slapd, mode):
    server = make_slapd(spec=spec())
    settings = slapd_settings(server)
    full_run(**settings)
    bob = User.objects.get(username="bob")
    old_guid = DirectoryUser.objects.get(user=bob).guid
    original = server.spec
    server.apply(original, without(original, "bob"))
    server.apply(server.spec, original)  # bob again: a new entry with a new entryUUID

    with override_settings(**settings):
        result = run_sync(SyncOptions(mode=mode))

    assert result.mode == mode and result.status == "success", result.problems
    assert count(result, "users_relinked") == 1 and not count(result, "users_removed")
    assert result.problems == [
        f"user {server.user_dn('bob')}: Django user 'bob' relinked to this entry; its former "
        f"entry {server.user_dn('bob')} is gone"
    ]
    link = DirectoryUser.objects.get(user=bob)
    assert link.guid != old_guid and link.removed_at is None
    bob.refresh_from_db()
    assert bob.is_active
    assert set(bob.groups.values_list("name", flat=True)) == {"Staff", "Team"}
    assert User.objects.filter(username="bob").count() == 1


def test_a_recreated_account_removed_meanwhile_is_relinked_and_restored(make_slapd):
    server = make_slapd(spec=spec())
    settings = slapd_settings(server)
    full_run(**settings)
    original = server.spec
    server.apply(original, without(original, "bob"))
    assert full_run(**settings).counts.get("users_removed", 0) == 1
    assert not User.objects.get(username="bob").is_active
    server.apply(server.spec, original)

    with override_settings(**settings):
        dry = run_sync(SyncOptions(mode="full", dry_run=True))
        assert not User.objects.get(username="bob").is_active  # a dry run writes nothing
        result = run_sync(SyncOptions(mode="full"))

    assert "relink user 'bob' (former entry " + server.user_dn("bob") + " gone)" in dry.changes
    assert count(result, "users_relinked") == 1 and count(result, "users_restored") == 1
    bob = User.objects.get(username="bob")
    assert bob.is_active and DirectoryUser.objects.get(user=bob).removed_at is None
    assert set(bob.groups.values_list("name", flat=True)) == {"Staff", "Team"}


def recreate(server, key: str, *, keep_old_in: str | None = None) -> None:
    """Delete ``key``'s entry (or move it to the OU ``keep_old_in`` under the base, outside the
    user scope) and add a new entry with the same attributes (a new entryUUID)."""
    conn = server.admin_connection()
    dn = server.user_dn(key)
    if keep_old_in is None:
        conn.delete_s(dn)
    else:
        archive = f"ou={keep_old_in},{ldif.BASE_DN}"
        conn.add_s(
            archive, [("objectClass", [b"organizationalUnit"]), ("ou", [keep_old_in.encode()])]
        )
        conn.rename_s(dn, dn.split(",")[0], newsuperior=archive)
    attrs = ldif.user_attrs(server.spec.user(key))
    conn.add_s(dn, ldap.modlist.addModlist(attrs))
    conn.unbind_s()


def test_a_login_relinks_a_recreated_account_whose_old_entry_is_gone(make_slapd, caplog):
    server = make_slapd(spec=spec())
    settings = login_settings(slapd_settings(server))
    with override_settings(**settings):
        bob = authenticate(username="bob", password=LAB_PASSWORD)
        old_guid = DirectoryUser.objects.get(user=bob).guid
        recreate(server, "bob")
        caplog.set_level(logging.WARNING, logger="adldap_auth")
        again = authenticate(username="bob", password=LAB_PASSWORD)
    assert again is not None and again.pk == bob.pk
    link = DirectoryUser.objects.get(user=bob)
    assert link.guid != old_guid and link.dn == server.user_dn("bob")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        f"user {server.user_dn('bob')}: Django user 'bob' relinked to this entry; its former "
        f"entry {server.user_dn('bob')} is gone"
    ) in warnings


def test_a_recreated_account_whose_old_entry_still_exists_is_refused_with_the_remedy(
    make_slapd, caplog
):
    server = make_slapd(spec=spec())
    settings = login_settings(slapd_settings(server))
    with override_settings(**settings):
        bob = authenticate(username="bob", password=LAB_PASSWORD)
        old_guid = DirectoryUser.objects.get(user=bob).guid
        recreate(server, "bob", keep_old_in="Archive")  # outside the user scope, still there
        caplog.set_level(logging.WARNING, logger="adldap_auth")
        assert authenticate(username="bob", password=LAB_PASSWORD) is None
        refused = [r.getMessage() for r in caplog.records if r.name == "adldap_auth.login"]
        assert refused == [
            f"directory login of bob refused: user {server.user_dn('bob')} skipped: Django user "
            f"'bob' is linked to another directory entry ({server.user_dn('bob')}), which still "
            "exists; rename one of the two entries, or run 'manage.py ldaplink bob --relink' to "
            "move the user to this entry"
        ]
        assert DirectoryUser.objects.get(user=bob).guid == old_guid

        with pytest.raises(CommandError, match=r"add --relink to move it"):
            call_command("ldaplink", "bob", stdout=io.StringIO())
        call_command("ldaplink", "bob", "--relink", stdout=io.StringIO())
        assert DirectoryUser.objects.get(user=bob).guid != old_guid
        assert authenticate(username="bob", password=LAB_PASSWORD).pk == bob.pk


# -- finding 12: usernames differing only in case --------------------------------------------


@pytest.mark.skipif(
    connection.vendor == "mysql",
    reason="MariaDB's case-insensitive collation refuses two usernames differing only in case; "
    "tests/slapd/test_case_insensitive_names.py covers adoption there",
)
def test_local_usernames_differing_only_in_case_are_reported_not_crashed(make_slapd, caplog):
    server = make_slapd(spec=spec())
    lower = User.objects.create_user("alice", first_name="Lower")
    upper = User.objects.create_user("Alice", first_name="Upper")
    before = [row(lower), row(upper)]
    settings = slapd_settings(server)

    result = full_run(**settings)

    assert result.status == "partial"
    assert result.problems == [
        f"user {server.user_dn('alice')} skipped: Django users 'Alice' and 'alice' differ only "
        "in case, so the sync cannot tell which one is 'alice'; rename or merge them"
    ]
    assert [row(lower), row(upper)] == before
    assert not DirectoryUser.objects.filter(user__in=[lower, upper]).exists()

    caplog.set_level(logging.WARNING, logger="adldap_auth.login")
    with override_settings(**login_settings(settings)):
        assert authenticate(username="alice", password=LAB_PASSWORD) is None
    assert any("'Alice' and 'alice' differ only in case" in r.getMessage() for r in caplog.records)


# -- issue 13, point 7: two directory groups with one name ----------------------------------


def test_a_group_renamed_onto_an_established_name_does_not_take_it(make_slapd):
    """Read first (an older entry), ``Legacy`` is renamed ``Staff``: the established ``Staff``
    keeps its Django group and members; ``Legacy`` keeps its own until one is renamed. A new
    ``Staff`` elsewhere is skipped."""
    groups = [
        GroupSpec("Legacy", ou="Extra", members=["alice"]),
        GroupSpec("Staff", members=["bob", "root"]),
    ]
    server = make_slapd(spec=DirectorySpec(users=spec().users, groups=groups))
    settings = slapd_settings(server, LDAP_SYNC_GROUP_SEARCH=ldif.GROUPS_DN)
    full_run(**settings)
    conn = server.admin_connection()
    conn.rename_s(server.group_dn("Legacy"), "cn=Staff", delold=1)
    legacy_dn = f"cn=Staff,ou=Extra,{ldif.GROUPS_DN}"
    newcomer_dn = f"cn=Staff,ou=New,{ldif.GROUPS_DN}"
    conn.add_s(
        f"ou=New,{ldif.GROUPS_DN}", [("objectClass", [b"organizationalUnit"]), ("ou", [b"New"])]
    )
    conn.add_s(newcomer_dn, [("objectClass", [b"groupOfNames"]), ("cn", [b"Staff"]),
                             ("member", [server.user_dn("alice").encode()])])  # fmt: skip
    conn.unbind_s()

    result = full_run(**settings)

    staff = Group.objects.get(name="Staff")
    assert DirectoryGroup.objects.get(group=staff).dn == server.group_dn("Staff")
    assert set(staff.user_set.values_list("username", flat=True)) == {"bob", "root"}
    legacy = Group.objects.get(name="Legacy")
    assert DirectoryGroup.objects.get(group=legacy).dn == legacy_dn
    assert set(legacy.user_set.values_list("username", flat=True)) == {"alice"}
    assert sorted(result.problems) == sorted([
        f"group {legacy_dn} not renamed to 'Staff': directory group "
        f"{server.group_dn('Staff')} has that name and keeps the Django group; rename one of "
        "them in the directory",
        f"group {newcomer_dn} skipped: directory group {server.group_dn('Staff')} has the same "
        "name 'Staff' and keeps the Django group; rename one of them in the directory",
    ])  # fmt: skip

    with override_settings(**login_settings(settings)):  # a login agrees with the run
        alice = authenticate(username="alice", password=LAB_PASSWORD)
    assert set(alice.groups.values_list("name", flat=True)) == {"Legacy"}
