"""ADLDAPBackend configured by LDAP_SYNC_* against each lab server: OpenLDAP and Samba AD.

The tests both servers share, through :class:`tests.backend_helpers.LabDirectory` (the
``directory`` fixture; ``-m "not samba"`` keeps the slapd half): agreement with ``syncldap
full``, name forms and searches per login, real login views, refusals, failover, TLS, filter
injection, exemptions, renames, removed users who return, password changes. What only one
server has stays in ``test_backend_slapd.py`` and ``tests/samba/test_backend_samba.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import ldap
import pytest
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import Group
from django.test import override_settings

from adldap_auth.backends import ADLDAPBackend
from adldap_auth.login import clear_group_cache
from adldap_auth.models import DirectoryUser
from adldap_auth.sync import SyncOptions, run_sync
from tests.backend_helpers import (
    BACKEND,
    DIRECTORY_PARAMS,
    BindSpy,
    LabDirectory,
    assert_no_secret_logged,
    batch_state,
    dead_uri,
    debug_logging,
    login_path_state,
    open_directory,
)
from tests.helpers import SearchSpy, django_state
from tests.lab.spec import LAB_PASSWORD

pytestmark = pytest.mark.django_db

User = get_user_model()

#: Lab users with a password, and alice's groups (four deep) in the lab spec.
PEOPLE = ["alice", "bob", "carol", "erin", "jdoe"]
ALICE_NESTED = {"Rocket Team", "Engineering", "R&D", "Staff", "Everyone"}


@pytest.fixture(params=DIRECTORY_PARAMS)
def directory(request: pytest.FixtureRequest) -> LabDirectory:
    """The lab company on each server, shared by the session: tests read and bind only."""
    return open_directory(request, request.param, own=False)


@pytest.fixture(params=DIRECTORY_PARAMS)
def own_directory(request: pytest.FixtureRequest) -> LabDirectory:
    """The lab company on each server, for a test that changes it."""
    return open_directory(request, request.param, own=True)


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_group_cache()
    yield
    clear_group_cache()


# -- agreement with the batch sync -----------------------------------------------------------


def test_login_path_state_equals_full_sync_state_for_every_lab_user(directory):
    spec = directory.spec
    users = {u.key: u.password for u in spec.users}
    with override_settings(**directory.login_settings()):
        by_login = login_path_state(users)
        by_batch = batch_state()
    assert len(by_batch) == len([u for u in spec.users if not u.disabled]) > 1600
    assert set(by_login) == set(by_batch)
    for key in by_batch:
        assert by_login[key] == by_batch[key], key
    assert by_login["alice"]["groups"] == ALICE_NESTED | directory.builtin_groups()
    assert by_login["alice"]["photo"] == spec.user("alice").photo
    assert {"Cycle A", "Cycle B"} <= by_login["bob"]["groups"]
    assert "All Bulk" in by_login["bulk0042"]["groups"]
    assert "dave" not in by_login  # disabled: never created, by either path


def test_agreement_when_a_group_between_two_others_is_outside_the_scope(directory):
    """Engineering is left out of the group scope (and, without CREATE_IF_NOT_EXISTS, out of
    Django): alice (Rocket Team < Engineering < R&D...) is still in R&D, Staff and Everyone
    through it, as the directory says, on both paths."""
    more = {
        "LDAP_SYNC_GROUP_FILTER": directory.group_filter_without("Engineering"),
        "LDAP_SYNC_GROUP_MEMBERSHIP_CREATE_IF_NOT_EXISTS": False,
    }
    keys = {key: LAB_PASSWORD for key in PEOPLE}
    with override_settings(**directory.login_settings(**more)):
        by_login = login_path_state(keys)
        with SearchSpy().active() as spy:
            assert authenticate(username="alice", password=LAB_PASSWORD) is not None
        by_batch = batch_state()
    for key in PEOPLE:
        assert by_login[key] == by_batch[key], key
    assert spy.count == 2  # the user, the direct groups: the graph was read by the first login
    expected = (ALICE_NESTED - {"Engineering"}) | directory.builtin_groups()
    assert by_login["alice"]["groups"] == expected
    assert {"R&D", "Staff"} <= by_login["bob"]["groups"]  # bob is in Engineering directly
    assert not Group.objects.filter(name="Engineering").exists()


def test_login_after_a_batch_run_changes_nothing(directory):
    with override_settings(**directory.login_settings()):
        assert run_sync(SyncOptions(mode="full")).ok
        before = django_state()
        pks = dict(User.objects.values_list("username", "pk"))
        for key in PEOPLE:
            user = authenticate(username=key, password=LAB_PASSWORD)
            assert user is not None and user.pk == pks[key]
        assert django_state() == before


# -- real logins -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typed", ["alice", "Alice", " Alice ", "ALICE", "alice@example.test", "EXAMPLE\\alice"]
)
def test_every_name_form_logs_into_one_account_with_two_searches(directory, typed):
    with override_settings(**directory.login_settings()):
        assert authenticate(username="bob", password=LAB_PASSWORD) is not None  # reads the graph
        alice = authenticate(username="alice", password=LAB_PASSWORD)
        with SearchSpy().active() as spy:
            user = authenticate(username=typed, password=LAB_PASSWORD)
    assert user is not None and user.username == "alice" and user.pk == alice.pk
    assert User.objects.filter(directory_link__isnull=False).count() == 2  # bob and alice
    assert {g.name for g in user.groups.all()} == ALICE_NESTED | directory.builtin_groups()
    assert user.employee.title == "Engineer"
    # After the bind, although alice's groups nest four deep: the user search and one search
    # of her direct groups; the groups above them come from the cached graph.
    assert spy.count == 2, spy.calls
    user_search, group_search = spy.calls
    assert user_search[0] == directory.user_base
    assert group_search[0] == directory.base_dn and "(member=" in group_search[1]


def test_test_client_login_view_and_admin_login(directory, client):
    staff = directory.group_dn("Staff")
    more = {"AUTH_LDAP_USER_FLAGS_BY_GROUP": {"is_staff": staff}}
    with override_settings(**directory.login_settings(**more)):
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


# -- refusals: wrong password, unknown, disabled, servers down -------------------------------


def test_wrong_password_unknown_user_and_disabled_user_return_none(directory, caplog):
    debug_logging(caplog)
    with override_settings(**directory.login_settings()):
        assert authenticate(username="alice", password="Wrong-Passw0rd") is None
        assert authenticate(username="nobody", password="Wrong-Passw0rd") is None
        assert authenticate(username="EXAMPLE\\alice", password="Wrong-Passw0rd") is None
        assert authenticate(username="dave", password=LAB_PASSWORD) is None  # disabled
        assert authenticate(username="alice", password="") is None  # never an anonymous bind
        assert ADLDAPBackend().populate_user("dave") is None
    assert not User.objects.exists()
    secrets = ("Wrong-Passw0rd", LAB_PASSWORD, directory.reader_password)
    assert_no_secret_logged(caplog, *secrets)


def test_every_server_down_returns_none_and_logs_no_password(directory, caplog, client):
    debug_logging(caplog)
    settings = directory.login_settings(LDAP_SYNC_BIND_URI=[dead_uri(), dead_uri()])
    with override_settings(**settings):
        started = time.monotonic()
        assert authenticate(username="alice", password=LAB_PASSWORD) is None
        response = client.post("/login/", {"username": "alice", "password": LAB_PASSWORD})
        assert response.status_code == 200 and not response.wsgi_request.user.is_authenticated
        assert time.monotonic() - started < 5
    assert any("LDAPError" in r.getMessage() for r in caplog.records)
    assert_no_secret_logged(caplog, LAB_PASSWORD, directory.reader_password)
    assert not User.objects.exists()


def test_failover_to_the_second_server(directory):
    settings = directory.login_settings(LDAP_SYNC_BIND_URI=[dead_uri(), directory.uri])
    with override_settings(**settings):
        user = authenticate(username="alice", password=LAB_PASSWORD)
    assert user is not None
    assert DirectoryUser.objects.get(user=user).server == directory.uri


@pytest.mark.parametrize("tls", ["starttls", "ldaps"])
def test_tls_with_the_lab_ca(directory, tls):
    with override_settings(**directory.login_settings(tls)):
        user = authenticate(username="alice", password=LAB_PASSWORD)
        assert user is not None
        connection_options = ADLDAPBackend().settings.CONNECTION_OPTIONS
    assert list(connection_options)[-1] == ldap.OPT_X_TLS_NEWCTX
    assert connection_options[ldap.OPT_X_TLS_REQUIRE_CERT] == ldap.OPT_X_TLS_DEMAND


def test_tls_with_a_wrong_ca_refuses_the_server(directory, wrong_ca_file: Path):
    settings = directory.login_settings("ldaps", LDAP_SYNC_CA_FILE=str(wrong_ca_file))
    with override_settings(**settings):
        assert authenticate(username="alice", password=LAB_PASSWORD) is None
    assert not User.objects.exists()


# -- injection, exemptions -------------------------------------------------------------------

INJECTION = [
    "*",
    "a*",
    "*)(uid=*",
    "alice)(|(uid=*",
    "*)(sAMAccountName=*",
    "alice)(|(sAMAccountName=*",
    "*)(userPrincipalName=*",
    "alice)(objectClass=*",
    "(",
    ")",
    "\\",
    "\\2a",
    "alice\x00",
    "alice\x00*",
    "*@example.test",
    "alice*@example.test",
    "EXAMPLE\\*",
    "EXAMPLE\\alice*",
    "*\\*",
    "alice\\",
    "al*ce",
]


@pytest.mark.parametrize("typed", INJECTION)
def test_filter_injection_never_widens_a_search(directory, typed):
    only_ours = {"AUTHENTICATION_BACKENDS": [BACKEND]}  # ModelBackend chokes on NUL (PostgreSQL)
    with (
        override_settings(**directory.login_settings(**only_ours)),
        SearchSpy().active() as searches,
        BindSpy().active() as binds,
    ):
        assert authenticate(username=typed, password=LAB_PASSWORD) is None
    # Only the service account bound; each filter sent finds nobody when replayed.
    assert set(binds.who) <= {directory.reader_dn}
    for base, filterstr, _attrs in searches.calls:
        assert directory.found_dns(base, filterstr) == [], filterstr
    assert not User.objects.exists()


def test_exempt_names_never_reach_the_directory_and_local_admins_are_untouched(directory):
    admin = User.objects.create_superuser("admin", "root@example.test", "local-pass")
    local = User.objects.create_superuser("administrator", "it@example.test", "local-Passw0rd")
    typed_names = [
        "ADMIN",
        "admin@example.test",
        "EXAMPLE\\Guest",
        "Administrator",
        "administrator@example.test",
        "EXAMPLE\\Administrator",
    ]
    with (
        override_settings(**directory.login_settings()),
        SearchSpy().active() as searches,
        BindSpy().active() as binds,
    ):
        # The directory administrator's real password: refused by our backend, unknown to
        # ModelBackend.
        for typed in typed_names:
            assert authenticate(username=typed, password=directory.admin_password) is None
        assert ADLDAPBackend().populate_user("administrator") is None
        # ModelBackend, next in the list, still logs the local admins in.
        assert authenticate(username="admin", password="local-pass") == admin
        assert authenticate(username="administrator", password="local-Passw0rd") == local
    assert searches.calls == [] and binds.who == []
    admin.refresh_from_db()
    local.refresh_from_db()
    assert admin.email == "root@example.test" and admin.is_superuser
    assert local.email == "it@example.test" and local.is_superuser and local.first_name == ""
    assert not DirectoryUser.objects.exists()


# -- directory changes: renames, removals, passwords -----------------------------------------


def test_renamed_account_logs_into_the_same_django_user(own_directory):
    directory = own_directory
    with override_settings(**directory.login_settings()):
        first = authenticate(username="alice", password=LAB_PASSWORD)
        groups = {g.name for g in first.groups.all()}
        new_dn = directory.rename_user("alice", "alice2")
        assert authenticate(username="alice", password=LAB_PASSWORD) is None
        second = authenticate(username="alice2", password=LAB_PASSWORD)
    assert second.pk == first.pk and second.username == "alice2"
    assert {g.name for g in second.groups.all()} == groups >= ALICE_NESTED
    assert DirectoryUser.objects.get(user=second).dn == new_dn
    assert User.objects.count() == 1


def test_user_removed_by_the_batch_and_enabled_again_can_log_in(own_directory):
    directory = own_directory
    with override_settings(**directory.login_settings(LDAP_SYNC_REMOVAL_THRESHOLD=None)):
        assert run_sync(SyncOptions(mode="full")).ok
        directory.set_enabled("alice", False)
        assert run_sync(SyncOptions(mode="full")).ok
        alice = User.objects.get(username="alice")
        assert not alice.is_active
        assert authenticate(username="alice", password=LAB_PASSWORD) is None  # still disabled
        directory.set_enabled("alice", True)
        user = authenticate(username="alice", password=LAB_PASSWORD)
        assert user is not None and user.pk == alice.pk and user.is_active
        link = DirectoryUser.objects.get(user=user)
        assert link.removed_at is None and link.removal_reason == ""
        # The next batch run finds nothing to change in what the login restored.
        login_state = django_state()["alice"]
        assert run_sync(SyncOptions(mode="full")).ok
        assert django_state()["alice"] == login_state
    assert User.objects.filter(username__startswith="alice").count() == 1


def test_password_change_in_the_directory(own_directory):
    directory = own_directory
    directory.set_password("carol", "New-Passw0rd!")
    with override_settings(**directory.login_settings()):
        assert authenticate(username="carol", password=LAB_PASSWORD) is None
        assert authenticate(username="carol", password="New-Passw0rd!") is not None
