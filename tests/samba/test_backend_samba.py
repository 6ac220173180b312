"""ADLDAPBackend configured by LDAP_SYNC_* against the Samba AD domain controller of the lab.

Real logins (``authenticate()``, the test client, the admin login) with the lab passwords, in
the three name forms AD accepts; agreement with ``syncldap full`` for every user of the lab;
the number of LDAP searches per login (a spy on python-ldap's ``search_ext``); disabled
accounts, wrong passwords, a dead first server, TLS, filter injection, exemptions, renames,
distribution groups, and users the batch removed that come back.
"""

from __future__ import annotations

import ldap
import pytest
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import Group
from django.test import override_settings

from adldap_auth.backends import ADLDAPBackend
from adldap_auth.login import IN_CHAIN
from adldap_auth.models import DirectoryUser
from adldap_auth.sync import SyncOptions, run_sync
from tests.backend_helpers import (
    BACKEND,
    BindSpy,
    assert_no_secret_logged,
    batch_state,
    dead_uri,
    debug_logging,
    login_path_state,
    login_settings,
)
from tests.helpers import SearchSpy, django_state, samba_settings
from tests.lab.samba import encode_password
from tests.lab.spec import LAB_PASSWORD

pytestmark = [pytest.mark.samba, pytest.mark.django_db]

User = get_user_model()

PEOPLE = ["alice", "bob", "carol", "erin", "jdoe"]
#: alice's groups in the lab: Rocket Team < Engineering < R&D < Staff < Everyone.
ALICE_NESTED = {"Rocket Team", "Engineering", "R&D", "Staff", "Everyone"}


def settings_for(dc, **more):
    sync = {k: v for k, v in more.items() if k.startswith("LDAP_SYNC_")}
    other = {k: v for k, v in more.items() if not k.startswith("LDAP_SYNC_")}
    return login_settings(samba_settings(dc, **sync), **other)


def builtin_groups(dc) -> set[str]:
    """Domain Users (everyone's primary group) and the groups above it, asked of the DC."""
    conn = dc.reader_connection()
    domain_users = f"CN=Domain Users,CN=Users,{dc.base_dn}"
    found = conn.search_s(
        dc.base_dn,
        ldap.SCOPE_SUBTREE,
        f"(&(objectClass=group)(member:{IN_CHAIN}:={ldap.filter.escape_filter_chars(domain_users)}))",
        ["cn"],
    )
    return {"Domain Users"} | {attrs["cn"][0].decode() for dn, attrs in found if dn}


# -- agreement with the batch sync -----------------------------------------------------------


def test_login_path_state_equals_full_sync_state_for_every_lab_user(samba_dc):
    spec = samba_dc.spec
    users = {u.key: u.password for u in spec.users}
    with override_settings(**settings_for(samba_dc)):
        by_login = login_path_state(users)
        by_batch = batch_state()
    assert len(by_batch) == len([u for u in spec.users if not u.disabled]) > 1600
    assert set(by_login) == set(by_batch)
    for key in by_batch:
        assert by_login[key] == by_batch[key], key
    builtin = builtin_groups(samba_dc)
    assert by_login["alice"]["groups"] == ALICE_NESTED | builtin
    assert by_login["alice"]["photo"] == spec.user("alice").photo
    assert {"Cycle A", "Cycle B"} <= by_login["bob"]["groups"]
    assert "All Bulk" in by_login["bulk0042"]["groups"]


def test_agreement_when_a_group_between_two_others_is_outside_the_scope(samba_dc):
    """Engineering is left out of the group scope (and, without CREATE_IF_NOT_EXISTS, out of
    Django): alice (Rocket Team < Engineering < R&D...) is still in R&D, Staff and Everyone
    through it, as the DC says, on both paths."""
    more = {
        "LDAP_SYNC_GROUP_FILTER": "(&(objectClass=group)(!(cn=Engineering)))",
        "LDAP_SYNC_GROUP_MEMBERSHIP_CREATE_IF_NOT_EXISTS": False,
    }
    keys = {key: LAB_PASSWORD for key in PEOPLE}
    with override_settings(**settings_for(samba_dc, **more)):
        by_login = login_path_state(keys)
        with SearchSpy().active() as spy:
            assert authenticate(username="alice", password=LAB_PASSWORD) is not None
        by_batch = batch_state()
    for key in PEOPLE:
        assert by_login[key] == by_batch[key], key
    assert spy.count == 2  # the user, the direct groups: the graph was read by the first login
    assert by_login["alice"]["groups"] == (ALICE_NESTED - {"Engineering"}) | builtin_groups(samba_dc)
    assert {"R&D", "Staff"} <= by_login["bob"]["groups"]  # bob is in Engineering directly
    assert not Group.objects.filter(name="Engineering").exists()


def test_login_after_a_batch_run_changes_nothing(samba_dc):
    with override_settings(**settings_for(samba_dc)):
        assert run_sync(SyncOptions(mode="full")).ok
        before = django_state()
        pks = dict(User.objects.values_list("username", "pk"))
        for key in PEOPLE:
            user = authenticate(username=key, password=LAB_PASSWORD)
            assert user is not None and user.pk == pks[key]
        assert django_state() == before


# -- real logins ---------------------------------------------------------------------------


@pytest.mark.parametrize("typed", ["alice", "Alice", "alice@example.test", "EXAMPLE\\alice"])
def test_authenticate_in_every_name_form_with_two_searches(samba_dc, typed):
    with override_settings(**settings_for(samba_dc)):
        assert authenticate(username="bob", password=LAB_PASSWORD) is not None  # reads the graph
        with SearchSpy().active() as spy:
            user = authenticate(username=typed, password=LAB_PASSWORD)
    assert user is not None and user.username == "alice"
    assert {g.name for g in user.groups.all()} == ALICE_NESTED | builtin_groups(samba_dc)
    assert user.employee.title == "Engineer"
    # After the bind, although alice's groups nest four deep: the user search and one search
    # of her direct groups; the groups above them come from the cached graph.
    assert spy.count == 2, spy.calls
    user_search, group_search = spy.calls
    assert user_search[0] == samba_dc.lab_dn
    assert group_search[0] == samba_dc.base_dn and "(member=" in group_search[1]


def test_user_principal_name_is_matched_as_such(samba_clean):
    """A UPN whose local part is not the sAMAccountName (john.doe@ for jdoe) logs in."""
    conn = samba_clean.admin_connection()
    conn.modify_s(
        samba_clean.user_dn("jdoe"),
        [(ldap.MOD_REPLACE, "userPrincipalName", [b"john.doe@example.test"])],
    )
    with override_settings(**settings_for(samba_clean)):
        user = authenticate(username="john.doe@example.test", password=LAB_PASSWORD)
        assert authenticate(username="john.doe@other.test", password=LAB_PASSWORD) is None
    assert user is not None and user.username == "jdoe"


def test_test_client_login_view_and_admin_login(samba_dc, client):
    staff = samba_dc.group_dn("Staff")
    more = {"AUTH_LDAP_USER_FLAGS_BY_GROUP": {"is_staff": staff}}
    with override_settings(**settings_for(samba_dc, **more)):
        assert client.login(username="EXAMPLE\\bob", password=LAB_PASSWORD)
        assert client.get("/home/").content == b"user=bob"
        client.logout()

        response = client.post("/login/", {"username": "carol", "password": LAB_PASSWORD})
        assert response.status_code == 302 and response.url == "/home/"
        client.logout()

        # The admin wants staff: alice is in Staff (through three nested groups).
        response = client.post(
            "/admin/login/?next=/admin/",
            {"username": "alice@example.test", "password": LAB_PASSWORD, "next": "/admin/"},
        )
        assert response.status_code == 302 and response.url == "/admin/"
        assert client.get("/admin/").status_code == 200
        client.logout()

        # erin is not in Staff: the admin refuses her, the plain login view accepts her.
        response = client.post(
            "/admin/login/?next=/admin/", {"username": "erin", "password": LAB_PASSWORD}
        )
        assert response.status_code == 200
        assert not response.wsgi_request.user.is_authenticated

        response = client.post("/login/", {"username": "alice", "password": "nope"})
        assert response.status_code == 200
        assert not response.wsgi_request.user.is_authenticated
    assert User.objects.get(username="alice").is_staff
    assert not User.objects.get(username="erin").is_staff


def test_disabled_account_cannot_log_in(samba_dc):
    with override_settings(**settings_for(samba_dc)):
        assert authenticate(username="dave", password=LAB_PASSWORD) is None
        assert ADLDAPBackend().populate_user("dave") is None
    assert not User.objects.filter(username="dave").exists()


def test_wrong_password_unknown_user_log_nothing_secret(samba_dc, caplog):
    debug_logging(caplog)
    with override_settings(**settings_for(samba_dc)):
        assert authenticate(username="alice", password="Wrong-Passw0rd") is None
        assert authenticate(username="nobody", password="Wrong-Passw0rd") is None
        assert authenticate(username="EXAMPLE\\alice", password="Wrong-Passw0rd") is None
    assert not User.objects.exists()
    assert_no_secret_logged(caplog, "Wrong-Passw0rd", samba_dc.reader_password)


def test_dead_first_server_fails_over(samba_dc):
    with override_settings(
        **settings_for(samba_dc, LDAP_SYNC_BIND_URI=[dead_uri(), samba_dc.uri])
    ):
        user = authenticate(username="alice", password=LAB_PASSWORD)
    assert user is not None
    assert DirectoryUser.objects.get(user=user).server == samba_dc.uri


def test_every_server_down_returns_none(samba_dc, caplog):
    debug_logging(caplog)
    with override_settings(**settings_for(samba_dc, LDAP_SYNC_BIND_URI=[dead_uri(), dead_uri()])):
        assert authenticate(username="alice", password=LAB_PASSWORD) is None
    assert_no_secret_logged(caplog, LAB_PASSWORD, samba_dc.reader_password)


@pytest.mark.parametrize("tls", ["starttls", "ldaps"])
def test_tls_verified_with_the_lab_ca(samba_dc, tls):
    more = {"LDAP_SYNC_CA_FILE": str(samba_dc.ca_file)}
    if tls == "ldaps":
        more["LDAP_SYNC_BIND_URI"] = samba_dc.ldaps_uri
    else:
        more["LDAP_SYNC_START_TLS"] = True
    with override_settings(**settings_for(samba_dc, **more)):
        assert authenticate(username="alice", password=LAB_PASSWORD) is not None


def test_tls_with_a_wrong_ca_fails_closed(samba_dc, wrong_ca_file):
    more = {"LDAP_SYNC_CA_FILE": str(wrong_ca_file), "LDAP_SYNC_BIND_URI": samba_dc.ldaps_uri}
    with override_settings(**settings_for(samba_dc, **more)):
        assert authenticate(username="alice", password=LAB_PASSWORD) is None


INJECTION = [
    "*",
    "a*",
    "*)(sAMAccountName=*",
    "alice)(|(sAMAccountName=*",
    "alice)(objectClass=*",
    "(",
    ")",
    "\\",
    "alice\x00",
    "*@example.test",
    "alice*@example.test",
    "*)(userPrincipalName=*",
    "EXAMPLE\\*",
    "EXAMPLE\\alice*",
    "al*ce",
]


@pytest.mark.parametrize("typed", INJECTION)
def test_filter_injection_never_widens_a_search(samba_dc, typed):
    reader = samba_dc.reader_connection()
    with (
        override_settings(**settings_for(samba_dc, AUTHENTICATION_BACKENDS=[BACKEND])),
        SearchSpy().active() as searches,
        BindSpy().active() as binds,
    ):
        assert authenticate(username=typed, password=LAB_PASSWORD) is None
    assert set(binds.who) <= {samba_dc.reader_dn}
    for base, filterstr, _attrs in searches.calls:
        found = reader.search_s(base, ldap.SCOPE_SUBTREE, filterstr, ["cn"])
        assert [dn for dn, _ in found if dn] == [], filterstr
    assert not User.objects.exists()


def test_exempt_administrator_is_never_authenticated_nor_touched(samba_dc):
    local = User.objects.create_superuser("administrator", "it@example.test", "local-Passw0rd")
    with (
        override_settings(**settings_for(samba_dc)),
        SearchSpy().active() as searches,
        BindSpy().active() as binds,
    ):
        # The AD Administrator's real password: refused by our backend, unknown to ModelBackend.
        for typed in ["Administrator", "administrator@example.test", "EXAMPLE\\Administrator"]:
            assert authenticate(username=typed, password=samba_dc.admin_password) is None
        assert authenticate(username="administrator", password="local-Passw0rd") == local
    assert searches.calls == [] and binds.who == []
    local.refresh_from_db()
    assert local.email == "it@example.test" and local.first_name == ""


# -- directory changes ---------------------------------------------------------------------


def test_rename_removal_and_return(samba_clean):
    """A renamed account keeps its Django user; a user the batch removed for being disabled
    logs in again once enabled; a distribution group (not in tokenGroups) counts."""
    dc = samba_clean
    conn = dc.admin_connection()
    alice_dn = dc.user_dn("alice")
    list_dn = f"CN=Newsletter,{dc.lab_dn}"
    conn.add_s(
        list_dn,
        [
            ("objectClass", [b"group"]),
            ("sAMAccountName", [b"Newsletter"]),
            ("groupType", [b"2"]),  # a global distribution group
            ("member", [alice_dn.encode()]),
        ],
    )
    with override_settings(**settings_for(dc, LDAP_SYNC_REMOVAL_THRESHOLD=None)):
        assert run_sync(SyncOptions(mode="full")).ok
        alice = User.objects.get(username="alice")
        assert "Newsletter" in {g.name for g in alice.groups.all()}

        conn.modify_s(alice_dn, [(ldap.MOD_REPLACE, "sAMAccountName", [b"alice2"])])
        user = authenticate(username="alice2", password=LAB_PASSWORD)
        assert user.pk == alice.pk and user.username == "alice2"
        assert "Newsletter" in {g.name for g in user.groups.all()}

        conn.modify_s(alice_dn, [(ldap.MOD_REPLACE, "userAccountControl", [b"514"])])
        assert run_sync(SyncOptions(mode="full")).ok
        user.refresh_from_db()
        assert not user.is_active
        assert authenticate(username="alice2", password=LAB_PASSWORD) is None

        conn.modify_s(alice_dn, [(ldap.MOD_REPLACE, "userAccountControl", [b"512"])])
        again = authenticate(username="alice2", password=LAB_PASSWORD)
        assert again is not None and again.pk == alice.pk and again.is_active
        assert DirectoryUser.objects.get(user=again).removed_at is None
        login_state = django_state()["alice2"]
        assert run_sync(SyncOptions(mode="full")).ok
        assert django_state()["alice2"] == login_state
    assert User.objects.filter(username__startswith="alice").count() == 1


def test_security_group_above_a_distribution_group_counts(samba_clean):
    """tokenGroups leaves out a distribution group and what is above it; the graph does not,
    on both paths."""
    dc = samba_clean
    conn = dc.admin_connection()
    news, club = f"CN=Newsletter,{dc.lab_dn}", f"CN=Club,{dc.lab_dn}"
    conn.add_s(news, [("objectClass", [b"group"]), ("sAMAccountName", [b"Newsletter"]),
                      ("groupType", [b"2"]), ("member", [dc.user_dn("carol").encode()])])
    conn.add_s(club, [("objectClass", [b"group"]), ("sAMAccountName", [b"Club"]),
                      ("member", [news.encode()])])  # a security group (the default type)
    keys = {"carol": LAB_PASSWORD, "alice": LAB_PASSWORD}
    with override_settings(**settings_for(dc)):
        by_login = login_path_state(keys)
        with SearchSpy().active() as spy:
            assert authenticate(username="carol", password=LAB_PASSWORD) is not None
        by_batch = batch_state()
    assert by_login["carol"] == by_batch["carol"]
    assert {"Newsletter", "Club"} <= by_login["carol"]["groups"]
    assert spy.count == 2


def test_password_change_in_the_directory(samba_clean):
    conn = samba_clean.admin_connection()
    conn.modify_s(
        samba_clean.user_dn("carol"),
        [(ldap.MOD_REPLACE, "unicodePwd", [encode_password("New-Passw0rd!")])],
    )
    with override_settings(**settings_for(samba_clean)):
        assert authenticate(username="carol", password=LAB_PASSWORD) is None
        assert authenticate(username="carol", password="New-Passw0rd!") is not None
