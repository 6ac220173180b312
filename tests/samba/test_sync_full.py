"""Full batch sync against the real lab servers: state, search counts, idempotence, dry runs."""

from __future__ import annotations

import math

import ldap
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.test import override_settings
from ldap.filter import escape_filter_chars

from adldap_auth.models import DirectoryGroup, DirectoryUser, SyncRun
from adldap_auth.sync import SyncOptions, run_sync
from tests.helpers import SearchSpy, count_writes, django_state, samba_settings, slapd_settings

pytestmark = pytest.mark.django_db

IN_CHAIN = "1.2.840.113556.1.4.1941"


def reader_connection(dc):
    conn = ldap.initialize(dc.uri)
    conn.set_option(ldap.OPT_REFERRALS, 0)
    conn.simple_bind_s(dc.reader_dn, dc.reader_password)
    return conn


def groups_above_domain_users(dc) -> set[str]:
    """Groups that contain Domain Users (e.g. BUILTIN\\Users), asked of the server itself."""
    domain_users = f"CN=Domain Users,CN=Users,{dc.base_dn}"
    conn = reader_connection(dc)
    found = conn.search_s(
        dc.base_dn,
        ldap.SCOPE_SUBTREE,
        f"(&(objectClass=group)(member:{IN_CHAIN}:={escape_filter_chars(domain_users)}))",
        ["cn"],
    )
    return {attrs["cn"][0].decode() for dn, attrs in found if dn}


def expected_samba_state(dc) -> dict[str, dict]:
    """What Django must hold after a full sync of the lab AD, computed from the spec alone
    plus the server's answer about built-in groups."""
    spec = dc.spec
    closure = spec.expected_groups()
    builtin = {"Domain Users"} | groups_above_domain_users(dc)
    state = {}
    for user in spec.users:
        if user.disabled:
            continue  # never synced before, disabled: not created (django-adldap-sync's rule)
        state[user.key] = {
            "first_name": user.given_name,
            "last_name": user.sn,
            "email": user.mail or "",
            "is_active": True,
            "department": user.department or "",
            "title": user.title or "",
            "photo": user.photo,
            "groups": closure[user.key] | builtin,
        }
    return state


@pytest.mark.samba
def test_full_sync_of_samba_ad_matches_the_lab_directory(samba_dc):
    with override_settings(**samba_settings(samba_dc)):
        result = run_sync(SyncOptions(mode="full"))
    assert result.status == SyncRun.STATUS_SUCCESS, result.error or result.problems
    expected = expected_samba_state(samba_dc)
    actual = django_state()
    assert set(actual) == set(expected)
    for key, state in expected.items():
        assert actual[key] == state, key
    # The cycle, the deep nesting and the 1,600-member group, spelled out.
    assert {"Cycle A", "Cycle B"} <= actual["bob"]["groups"]
    assert {"Rocket Team", "Engineering", "R&D", "Staff", "Everyone"} <= actual["alice"]["groups"]
    big = Group.objects.get(name="All Bulk")
    assert big.user_set.count() == 1601


@pytest.mark.samba
def test_full_sync_search_count_is_per_page_not_per_user(samba_dc):
    settings = samba_settings(samba_dc, LDAP_SYNC_BIND_PAGESIZE=200)
    with override_settings(**settings), SearchSpy().active() as spy:
        result = run_sync(SyncOptions(mode="full"))
    assert result.ok, result.error
    users = result.counts["users_seen"] + result.counts.get("users_exempt", 0)
    groups = result.counts["groups_seen"]
    range_requests = 1  # "All Bulk": member;range=0-1499, then 1500-*
    bound = math.ceil(users / 200) + math.ceil(groups / 200) + range_requests + 3
    assert users > 1600
    assert spy.count <= bound, spy.calls
    assert spy.count == result.ldap_searches


@pytest.mark.samba
def test_unchanged_rerun_writes_nothing(samba_dc):
    with override_settings(**samba_settings(samba_dc)):
        first = run_sync(SyncOptions(mode="full"))
        assert first.ok, first.error
        with count_writes() as writes:
            second = run_sync(SyncOptions(mode="full"))
    assert second.ok, second.error
    assert writes == []
    changed = {k: v for k, v in second.counts.items() if k.endswith(("created", "updated", "removed", "added"))}
    assert not any(changed.values()), changed


@pytest.mark.samba
def test_dry_run_writes_nothing_and_plans_what_the_real_run_does(samba_dc):
    with override_settings(**samba_settings(samba_dc)):
        dry = run_sync(SyncOptions(mode="full", dry_run=True))
        assert get_user_model().objects.count() == 0
        assert Group.objects.count() == 0
        real = run_sync(SyncOptions(mode="full", collect_changes=True))
    assert dry.ok and real.ok
    planned = [line for line in dry.changes if not line.startswith(("add membership", "remove "))]
    made = [line for line in real.changes if not line.startswith(("add membership", "remove "))]
    assert planned == made
    assert dry.counts["users_created"] == real.counts["users_created"] > 1600


@pytest.mark.samba
def test_command_prints_summary_and_json(samba_dc, capsys):
    import json

    with override_settings(**samba_settings(samba_dc)):
        call_command("syncldap", "full", "--json")
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "success"
    assert summary["counts"]["users_created"] > 1600
    assert samba_dc.reader_password not in json.dumps(summary)


@pytest.mark.samba
def test_rename_move_disable_enable_delete_keep_the_same_django_user(samba_clean):
    dc = samba_clean
    conn = dc.admin_connection()
    settings = samba_settings(dc, LDAP_SYNC_REMOVAL_THRESHOLD=None)
    with override_settings(**settings):
        assert run_sync(SyncOptions(mode="full")).ok
        User = get_user_model()
        alice = User.objects.get(username="alice")
        bob = User.objects.get(username="bob")
        carol = User.objects.get(username="carol")

        # rename sAMAccountName and move alice to another OU
        alice_dn = dc.user_dn("alice")
        conn.modify_s(alice_dn, [(ldap.MOD_REPLACE, "sAMAccountName", [b"alice2"])])
        conn.rename_s(alice_dn, alice_dn.split(",", 1)[0], f"OU=Sales,{dc.lab_dn}")
        # disable bob
        conn.modify_s(dc.user_dn("bob"), [(ldap.MOD_REPLACE, "userAccountControl", [b"514"])])
        # delete carol
        conn.delete_s(dc.user_dn("carol"))

        result = run_sync(SyncOptions(mode="full"))
        assert result.ok, result.error
        alice.refresh_from_db()
        bob.refresh_from_db()
        carol.refresh_from_db()
        assert alice.username == "alice2" and alice.is_active
        assert DirectoryUser.objects.get(user=alice).dn.startswith("CN=Alice Archer,OU=Sales")
        assert not bob.is_active
        assert DirectoryUser.objects.get(user=bob).removal_reason == "disabled"
        assert not carol.is_active
        assert DirectoryUser.objects.get(user=carol).removal_reason == "missing"
        assert User.objects.filter(username__in=["alice", "alice2"]).count() == 1

        # re-enable bob
        conn.modify_s(dc.user_dn("bob"), [(ldap.MOD_REPLACE, "userAccountControl", [b"512"])])
        assert run_sync(SyncOptions(mode="full")).ok
        bob.refresh_from_db()
        assert bob.is_active
        assert DirectoryUser.objects.get(user=bob).removed_at is None


def expected_slapd_state(server) -> dict[str, dict]:
    spec = server.spec
    closure = spec.expected_groups()
    return {
        user.key: {
            "first_name": user.given_name,
            "last_name": user.sn,
            "email": user.mail or "",
            "groups": closure[user.key],
            "photo": user.photo,
        }
        for user in spec.users
        if not user.disabled
    }


def test_full_sync_of_openldap_matches_the_lab_directory(slapd_lab):
    with override_settings(**slapd_settings(slapd_lab)):
        result = run_sync(SyncOptions(mode="full"))
    assert result.status == SyncRun.STATUS_SUCCESS, result.error or result.problems
    expected = expected_slapd_state(slapd_lab)
    actual = django_state()
    assert set(actual) == set(expected)
    for key, state in expected.items():
        got = {name: actual[key][name] for name in state}
        assert got == state, key
    assert DirectoryGroup.objects.count() == len(slapd_lab.spec.groups)


def test_django_only_memberships_and_local_users_are_left_alone(slapd_lab):
    User = get_user_model()
    local = User.objects.create_user("localadmin", password="x", is_superuser=True)
    with override_settings(**slapd_settings(slapd_lab)):
        assert run_sync(SyncOptions(mode="full")).ok
        alice = User.objects.get(username="alice")
        helpdesk = Group.objects.create(name="Helpdesk (Django only)")
        alice.groups.add(helpdesk)
        assert run_sync(SyncOptions(mode="full")).ok
    assert helpdesk in alice.groups.all()
    local.refresh_from_db()
    assert local.is_active
    assert not DirectoryUser.objects.filter(user=local).exists()


def test_seed_per_user_filter_mode_works_across_pages(slapd_lab):
    """The seed's one-search-per-user mode, with users spread over many pages: the per-user
    searches must not disturb the paged user search (slapd refuses interleaved cookies)."""
    settings = slapd_settings(
        slapd_lab,
        LDAP_SYNC_GROUP_MEMBERSHIP_MODE="filter",
        LDAP_SYNC_GROUP_MEMBERSHIP_FILTER="(member={distinguishedName})",  # no IN_CHAIN on slapd
        LDAP_SYNC_BIND_PAGESIZE=100,
    )
    with override_settings(**settings), SearchSpy().active() as spy:
        result = run_sync(SyncOptions(mode="full"))
    assert result.ok, result.error
    users = len(slapd_lab.spec.users)
    assert spy.count >= users  # one search per user: why it is not the default
    # The filter finds the direct groups; the groups above them count too, as in graph mode.
    closure = slapd_lab.spec.expected_groups()
    state = django_state()
    assert {key: state[key]["groups"] for key in state} == {key: closure[key] for key in state}


def test_memberships_of_a_first_run_are_inserted_a_batch_per_statement(make_slapd):
    """The store inserts new memberships a batch per statement: one ``executemany`` of
    insert-or-ignore on SQLite and MariaDB, ``bulk_create(ignore_conflicts=True)`` elsewhere; a
    few INSERTs for a first run's 600 rows, never one per row."""
    from tests.lab.spec import DirectorySpec, GroupSpec, UserSpec

    users = [UserSpec(f"user{i:03d}", "User", f"Number{i}") for i in range(300)]
    spec = DirectorySpec(
        users=users,
        groups=[
            GroupSpec("Everyone", members=[u.key for u in users]),
            GroupSpec("Even", members=[u.key for u in users[::2]]),
            GroupSpec("Odd", members=[u.key for u in users[1::2]]),
        ],
    )
    server = make_slapd(spec=spec)
    through = get_user_model().groups.through
    with override_settings(**slapd_settings(server)), count_writes() as writes:
        assert run_sync(SyncOptions(mode="full")).ok
    assert through.objects.count() == 600
    inserts = [sql for sql in writes if sql.startswith("INSERT") and through._meta.db_table in sql]
    assert 1 <= len(inserts) <= 3, len(inserts)
