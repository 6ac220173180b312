"""Memberships exactly as the directory resolves them, whatever the group scope.

The layout that broke earlier versions (AGDLP): people in department OUs, department groups in
their own OU (outside the group scope), application groups in ``OU=Apps`` (the group scope),
nesting across both, an application group inside a department-side group, and on AD the
primary group ``Domain Users`` (in ``CN=Users``) inside the built-in ``Users``. For every user
in scope, Django's groups must equal:

- on Samba AD, the groups of the user's own ``tokenGroups`` (the DC's answer) under the bind
  base, limited to the group scope when ``CREATE_IF_NOT_EXISTS`` is False;
- on OpenLDAP, an independent closure of the spec (:meth:`DirectorySpec.expected_groups`);

after a full run, after a login alone, and after an incremental run following changes in and
out of the group scope. A dry run plans exactly what the real run then does.
"""

from __future__ import annotations

import dataclasses
import random
import time

import ldap
import pytest
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import Group
from django.test import override_settings

from adldap_auth.directory.decoding import sid_to_str
from adldap_auth.models import DirectoryGroup
from adldap_auth.sync import SyncOptions, run_sync
from tests.backend_helpers import login_settings
from tests.helpers import samba_settings, slapd_settings
from tests.lab import samba as samba_lab
from tests.lab.generator import mutate, synthetic
from tests.lab.spec import LAB_PASSWORD, DirectorySpec, GroupSpec, UserSpec

pytestmark = pytest.mark.django_db

User = get_user_model()
APPS, DEPARTMENTS = "Apps", "Departments"


def agdlp(prefix: str = "") -> DirectorySpec:
    """Accounts -> department groups (outside the scope) -> application groups (inside).

    ``prefix`` goes in front of user keys (account names are unique domain-wide on AD, where
    the lab's own users already exist)."""
    people = [
        UserSpec("carol", "Carol", "Cruz", ou="Sales", password=LAB_PASSWORD),
        UserSpec("jdoe", "John", "Doe", ou="IT", password=LAB_PASSWORD),
        UserSpec("alice", "Alice", "Archer", ou="Engineering", password=LAB_PASSWORD),
        UserSpec("zoe", "Zoe", "Zeller", ou="Sales"),
        UserSpec("o'neil", "Pat", "O'Neil", ou="Sales"),
        UserSpec("dave", "Dave", "Dunn", ou="Sales", disabled=True),
        UserSpec("ivan", "Ivan", "Ito", ou="IT"),
        UserSpec("nina", "Nina", "Noor", ou="Engineering"),
    ]
    for user in people:
        user.mail = f"{user.key.replace(chr(39), '')}@example.test"
    people = [
        dataclasses.replace(u, key=prefix + u.key, cn=f"{u.given_name} {u.sn}") for u in people
    ]

    def m(*keys: str) -> list[str]:
        return [key if key.startswith("group:") else prefix + key for key in keys]

    groups = [
        GroupSpec("Dept-Sales", ou=DEPARTMENTS, members=m("carol", "zoe", "o'neil", "dave")),
        GroupSpec("Dept-IT", ou=DEPARTMENTS, members=m("jdoe", "ivan")),
        GroupSpec("Dept-Engineering", ou=DEPARTMENTS, members=m("alice", "nina")),
        GroupSpec("Region-EU", ou=DEPARTMENTS, members=["group:Dept-Sales", "group:Dept-IT"]),
        # an application group inside a department-side group, which is inside another app
        GroupSpec("All-Readers", ou=DEPARTMENTS, members=["group:App-Wiki"]),
        GroupSpec("App-CRM-Users", ou=APPS, members=["group:Dept-Sales"]),
        GroupSpec("App-Tickets", ou=APPS, members=m("group:Region-EU", "nina")),
        GroupSpec("App-Wiki", ou=APPS, members=m("group:Dept-Engineering", "jdoe")),
        GroupSpec("App-Portal", ou=APPS, members=["group:All-Readers"]),
        GroupSpec("App-Empty", ou=APPS, members=[]),
    ]
    return DirectorySpec(users=people, groups=groups)


def state() -> dict[str, set[str]]:
    """Every directory user in Django (active ones) with its group names."""
    return {
        user.username: {g.name for g in user.groups.all()}
        for user in User.objects.prefetch_related("groups").filter(
            directory_link__isnull=False, is_active=True
        )
    }


# -- OpenLDAP ------------------------------------------------------------------------------


def slapd_expected(spec: DirectorySpec, create: bool) -> dict[str, set[str]]:
    in_scope = {g.name for g in spec.groups if g.ou == APPS}
    closure = spec.expected_groups()
    return {
        user.key: closure[user.key] if create else closure[user.key] & in_scope
        for user in spec.users
        if not user.disabled
    }


def scoped_slapd_settings(server, create: bool, **extra):
    return login_settings(
        slapd_settings(
            server,
            LDAP_SYNC_GROUP_SEARCH=f"ou={APPS},ou=Groups,{server.base_dn}",
            LDAP_SYNC_GROUP_MEMBERSHIP_CREATE_IF_NOT_EXISTS=create,
            LDAP_SYNC_INCREMENTAL_TIME_OFFSET=0,
            LDAP_SYNC_INCREMENTAL_BETWEEN_FULL=-1,
            LDAP_SYNC_REMOVAL_THRESHOLD=None,
            **extra,
        )
    )


@pytest.mark.parametrize("create", [True, False], ids=["create", "scope-only"])
def test_openldap_full_run_and_logins_follow_nesting_outside_the_scope(make_slapd, create):
    spec = agdlp()
    server = make_slapd(spec=spec)
    expected = slapd_expected(spec, create)
    with override_settings(**scoped_slapd_settings(server, create)):
        # Logins alone, on an empty database: the login reads the graph itself.
        for key in ("carol", "jdoe", "alice"):
            assert authenticate(username=key, password=LAB_PASSWORD) is not None, key
        logged_in = state()
        assert {key: logged_in[key] for key in ("carol", "jdoe", "alice")} == {
            key: expected[key] for key in ("carol", "jdoe", "alice")
        }
        result = run_sync(SyncOptions(mode="full"))
        assert result.ok, result.error
        assert all("o'neil" in problem for problem in result.problems), result.problems
        assert state() == expected
        assert "App-CRM-Users" in expected["carol"] and "App-Portal" in expected["alice"]
        # One page each: the group scope's ids, the membership scope, the users (+ rootDSE...).
        assert result.ldap_searches <= 3 + 3, result.ldap_searches
        managed = set(DirectoryGroup.objects.values_list("group__name", flat=True))
        outside = {g.name for g in spec.groups if g.ou != APPS}
        assert bool(managed & outside) is create
        # Logins after the batch run (stored nesting) give the same answer.
        for key in ("carol", "jdoe", "alice"):
            assert authenticate(username=key, password=LAB_PASSWORD) is not None
        assert state() == expected


def scoped_synthetic(seed: int) -> DirectorySpec:
    """A synthetic directory whose groups are split between the group scope and outside."""
    spec = synthetic(users=200, groups=40, depth=4, seed=seed, cycles=1)
    rng = random.Random(seed)
    spec.groups = [
        dataclasses.replace(group, ou=APPS if rng.random() < 0.4 else DEPARTMENTS)
        for group in spec.groups
    ]
    return spec


@pytest.mark.parametrize("create", [True, False], ids=["create", "scope-only"])
# Seed 1 (another random sample, about 6 s) is ``slow``: the full passes of ``make test`` run it.
@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_openldap_incremental_after_changes_in_and_out_of_scope_equals_the_closure(
    make_slapd, seed, create
):
    server = make_slapd(spec=scoped_synthetic(seed))
    with override_settings(**scoped_slapd_settings(server, create)):
        assert run_sync(SyncOptions(mode="full")).ok
        assert state() == slapd_expected(server.spec, create)
        for step in range(2):
            time.sleep(1.1)  # modifyTimestamp has a one-second resolution
            new_spec, _ = mutate(
                server.spec, fraction_users=0.05, fraction_memberships=0.08, seed=seed * 7 + step
            )
            server.apply(server.spec, new_spec)
            result = run_sync(SyncOptions(mode="incremental"))
            assert result.mode == "incremental" and result.ok, result.error or result.mode_reason
            assert state() == slapd_expected(server.spec, create), step


def test_dry_run_plans_what_the_run_does_on_a_cold_database_and_after_changes(make_slapd):
    server = make_slapd(spec=scoped_synthetic(3))
    with override_settings(**scoped_slapd_settings(server, True)):
        for step in range(2):
            plan = run_sync(SyncOptions(mode="full", dry_run=True))
            assert plan.ok
            done = run_sync(SyncOptions(mode="full", collect_changes=True))
            assert done.ok
            assert sorted(plan.changes) == sorted(done.changes), step
            assert any(line.startswith("add membership") for line in done.changes)
            new_spec, _ = mutate(
                server.spec, fraction_users=0.05, fraction_memberships=0.1, seed=step
            )
            server.apply(server.spec, new_spec)


def without_user(spec: DirectorySpec, key: str) -> DirectorySpec:
    """The spec with one user deleted (and gone from every group)."""
    return DirectorySpec(
        users=[u for u in spec.users if u.key != key],
        groups=[
            dataclasses.replace(g, members=[m for m in g.members if m != key]) for g in spec.groups
        ],
    )


def test_a_user_gone_from_the_directory_loses_its_managed_memberships(make_slapd):
    spec = agdlp()
    server = make_slapd(spec=spec)
    with override_settings(**scoped_slapd_settings(server, True)):
        assert run_sync(SyncOptions(mode="full")).ok
        zoe = User.objects.get(username="zoe")
        local = Group.objects.create(name="Local helpers")
        zoe.groups.add(local)
        server.apply(spec, without_user(spec, "zoe"))
        assert run_sync(SyncOptions(mode="full")).ok
        zoe.refresh_from_db()
        assert not zoe.is_active
        assert {g.name for g in zoe.groups.all()} == {"Local helpers"}


# -- Samba AD ------------------------------------------------------------------------------

CORP = f"OU=Corp,{samba_lab.BASE_DN}"


def corp_dn(ou: str, name: str) -> str:
    return f"CN={ldap.dn.escape_dn_chars(name)},OU={ou},{CORP}"


def load_corp(conn, spec: DirectorySpec) -> dict[str, str]:
    """The AGDLP layout under OU=Corp (the lab's own entries stay under OU=Lab)."""
    conn.add_s(CORP, [("objectClass", [b"organizationalUnit"])])
    for ou in sorted({u.ou for u in spec.users} | {g.ou for g in spec.groups}):
        conn.add_s(f"OU={ou},{CORP}", [("objectClass", [b"organizationalUnit"])])
    dns: dict[str, str] = {}
    for user in spec.users:
        dns[user.key] = corp_dn(user.ou, user.common_name)
        conn.add_s(dns[user.key], samba_lab._user_attrs(user))
    for group in spec.groups:
        dns["group:" + group.name] = corp_dn(group.ou, group.name)
        conn.add_s(dns["group:" + group.name], samba_lab._group_attrs(group))
    for group in spec.groups:
        if group.members:
            values = [dns[m].encode() for m in group.members]
            conn.modify_s(dns["group:" + group.name], [(ldap.MOD_ADD, "member", values)])
    return dns


def token_group_names(conn, user_dn: str, base: str) -> set[str]:
    """The DC's own answer: the user's tokenGroups SIDs, as group names under ``base``."""
    [(_, attrs)] = conn.search_s(user_dn, ldap.SCOPE_BASE, "(objectClass=*)", ["tokenGroups"])
    sids = [sid_to_str(raw) for raw in attrs.get("tokenGroups", [])]
    clauses = "".join(f"(objectSid={sid})" for sid in sids)
    found = conn.search_s(base, ldap.SCOPE_SUBTREE, f"(&(objectClass=group)(|{clauses}))", ["cn"])
    return {attrs["cn"][0].decode() for dn, attrs in found if dn}


def samba_expected(
    dc, dns: dict[str, str], spec: DirectorySpec, create: bool
) -> dict[str, set[str]]:
    conn = dc.reader_connection()
    base = samba_lab.BASE_DN if create else f"OU={APPS},{CORP}"
    return {
        user.key: token_group_names(conn, dns[user.key], base)
        for user in spec.users
        if not user.disabled
    }


@pytest.mark.parametrize("create", [True, False], ids=["create", "scope-only"])
def test_active_directory_memberships_equal_token_groups(samba_clean, create):
    dc = samba_clean
    spec = agdlp("c-")
    conn = dc.admin_connection()
    dns = load_corp(conn, spec)
    overrides = login_settings(
        samba_settings(
            dc,
            LDAP_SYNC_USER_SEARCH=CORP,
            LDAP_SYNC_GROUP_SEARCH=f"OU={APPS},{CORP}",
            LDAP_SYNC_GROUP_MEMBERSHIP_CREATE_IF_NOT_EXISTS=create,
            LDAP_SYNC_INCREMENTAL_BETWEEN_FULL=-1,
            LDAP_SYNC_REMOVAL_THRESHOLD=None,
        )
    )
    with override_settings(**overrides):
        expected = samba_expected(dc, dns, spec, create)
        assert "App-CRM-Users" in expected["c-carol"]
        if create:
            assert {"Domain Users", "Users", "Dept-Sales", "Region-EU"} <= expected["c-carol"]
        # A login alone, on an empty database.
        assert authenticate(username="c-carol", password=LAB_PASSWORD) is not None
        assert state()["c-carol"] == expected["c-carol"]
        result = run_sync(SyncOptions(mode="full"))
        assert result.ok, result.error or result.problems
        assert state() == expected
        # Changes in and out of the scope, then an incremental run.
        modify = conn.modify_s
        modify(
            dns["group:Region-EU"], [(ldap.MOD_DELETE, "member", [dns["group:Dept-IT"].encode()])]
        )
        modify(
            dns["group:App-Wiki"], [(ldap.MOD_ADD, "member", [dns["group:Dept-Sales"].encode()])]
        )
        modify(dns["group:Dept-Engineering"], [(ldap.MOD_ADD, "member", [dns["c-ivan"].encode()])])
        conn.delete_s(dns["group:All-Readers"])
        incremental = run_sync(SyncOptions(mode="incremental"))
        assert incremental.mode == "incremental" and incremental.ok, incremental.error
        expected = samba_expected(dc, dns, spec, create)
        assert state() == expected
        assert "App-Wiki" in expected["c-carol"] and "App-Tickets" not in expected["c-ivan"]
        # A login after the runs agrees too.
        assert authenticate(username="c-jdoe", password=LAB_PASSWORD) is not None
        assert state()["c-jdoe"] == expected["c-jdoe"]


def test_a_disabled_user_keeps_its_memberships_until_its_entry_is_gone(make_slapd):
    spec = agdlp()
    server = make_slapd(spec=spec)
    with override_settings(**scoped_slapd_settings(server, True)):
        assert run_sync(SyncOptions(mode="full")).ok
        disabled = dataclasses.replace(
            spec, users=[dataclasses.replace(u, disabled=u.key == "zoe") for u in spec.users]
        )
        server.apply(spec, disabled)
        assert run_sync(SyncOptions(mode="full")).ok
        zoe = User.objects.get(username="zoe")
        assert not zoe.is_active
        assert "App-CRM-Users" in {g.name for g in zoe.groups.all()}  # still listed
        server.apply(disabled, without_user(disabled, "zoe"))
        assert run_sync(SyncOptions(mode="full")).ok
        assert not zoe.groups.exists()
