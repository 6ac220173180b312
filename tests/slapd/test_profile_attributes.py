"""LDAP_SYNC_USER_PROFILE_ATTRIBUTES against the lab servers: profile fields named unlike
their attributes, filled by the batch run and at login; the schema warning for a mapped
attribute the server does not know (a run warning, and ``check --deploy``'s W011)."""

from __future__ import annotations

import ldap
import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core import checks
from django.test import override_settings

from adldap_auth import checks as adchecks
from adldap_auth.login import clear_group_cache
from adldap_auth.models import SyncRun
from adldap_auth.sync import SyncOptions, run_sync
from tests.backend_helpers import login_settings
from tests.helpers import SearchSpy, samba_settings, slapd_settings
from tests.lab.spec import LAB_PASSWORD, DirectorySpec, GroupSpec, UserSpec
from tests.testapp.models import Employee

pytestmark = pytest.mark.django_db

User = get_user_model()

PHONE = "+1 555 0100"
MAP = {"testapp.Employee": {"telephoneNumber": "phone", "title": "title"}}


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_group_cache()
    yield
    clear_group_cache()


def spec() -> DirectorySpec:
    users = [
        UserSpec("alice", "Alice", "Archer", mail="alice@example.test", password=LAB_PASSWORD,
                 department="Engineering", title="Engineer"),
        UserSpec("bob", "Bob", "Baker", mail="bob@example.test", password=LAB_PASSWORD),
    ]  # fmt: skip
    return DirectorySpec(users, [GroupSpec("Team", members=["alice"])])


@pytest.fixture
def server(make_slapd):
    """A slapd whose alice has a telephoneNumber (which no lab profile field is named for)."""
    server = make_slapd(spec())
    conn = server.admin_connection()
    conn.modify_s(server.user_dn("alice"), [(ldap.MOD_ADD, "telephoneNumber", [PHONE.encode()])])
    return server


def settings_for(server, profile_map=MAP, **more):
    sync = slapd_settings(server, LDAP_SYNC_USER_PROFILE_ATTRIBUTES=profile_map, **more)
    return login_settings(sync)


def profile(username: str) -> Employee:
    return Employee.objects.get(user__username=username)


def schema_warnings(problems: list[str]) -> list[str]:
    return [p for p in problems if "not an attribute type of the directory's schema" in p]


def test_batch_run_fills_a_profile_field_named_unlike_its_attribute(server):
    with override_settings(**settings_for(server)), SearchSpy().active() as spy:
        result = run_sync(SyncOptions(mode="full"))
    assert result.status == SyncRun.STATUS_SUCCESS, result.error or result.problems
    assert result.problems == []  # every mapped attribute is in slapd's schema
    alice = profile("alice")
    assert (alice.phone, alice.title) == (PHONE, "Engineer")
    # The map replaces the naming rule for this profile: "department" is no longer filled.
    assert alice.department == ""
    assert (profile("bob").phone, profile("bob").title) == ("", "")
    user_searches = [attrs for base, _, attrs in spy.calls if base.startswith("ou=People")]
    assert user_searches and all("telephonenumber" in attrs for attrs in user_searches)


def test_login_fills_the_mapped_field_and_agrees_with_the_batch(server):
    with override_settings(**settings_for(server)):
        user = authenticate(username="alice", password=LAB_PASSWORD)
        assert user is not None
        assert (profile("alice").phone, profile("alice").title) == (PHONE, "Engineer")
        conn = server.admin_connection()
        changes = [(ldap.MOD_REPLACE, "telephoneNumber", [b"+1 555 0199"])]
        conn.modify_s(server.user_dn("alice"), changes)
        assert authenticate(username="alice", password=LAB_PASSWORD) is not None
        assert profile("alice").phone == "+1 555 0199"
        result = run_sync(SyncOptions(mode="full"))
    assert result.ok, result.error
    assert result.counts.get("profiles_updated", 0) == 0  # the login wrote what a run writes
    assert profile("bob").phone == ""


def test_a_misspelled_attribute_is_a_run_warning_not_a_failure(server, caplog):
    misspelled = {"testapp.Employee": {"telephonNumber": "phone", "title": "title"}}
    settings = settings_for(
        server,
        misspelled,
        LDAP_SYNC_USER_ATTRIBUTES={"uid": "username", "givenNam": "first_name", "sn": "last_name"},
    )
    with override_settings(**settings):
        result = run_sync(SyncOptions(mode="full"))
    assert result.status == SyncRun.STATUS_SUCCESS, result.error
    expected = [
        "LDAP_SYNC_USER_ATTRIBUTES maps 'givenNam', which is not an attribute type of the "
        "directory's schema: its field stays empty",
        "LDAP_SYNC_USER_PROFILE_ATTRIBUTES maps 'telephonNumber', which is not an attribute "
        "type of the directory's schema: its field stays empty",
    ]
    assert schema_warnings(result.problems) == expected
    assert result.counts["warnings"] == 2
    assert SyncRun.objects.get(pk=result.run_id).problems == result.problems
    assert all(line in caplog.text for line in expected)
    # Everything else is synced.
    assert profile("alice").title == "Engineer" and profile("alice").phone == ""
    assert User.objects.get(username="alice").last_name == "Archer"


def deploy_schema_messages(**settings) -> list[checks.CheckMessage]:
    with override_settings(**settings):
        found = checks.run_checks(include_deployment_checks=True, tags=[adchecks.TAG])
    return [m for m in found if m.id == "adldap_auth.W011"]


def test_check_deploy_warns_of_a_mapped_attribute_missing_from_the_schema(server):
    misspelled = {"testapp.Employee": {"telephonNumber": "phone"}}
    assert deploy_schema_messages(**settings_for(server, misspelled)) == [
        checks.Warning(
            "LDAP_SYNC_USER_PROFILE_ATTRIBUTES maps 'telephonNumber', which is not an attribute "
            "type of the directory's schema, so its field would stay empty.",
            hint="Check the spelling against the server's schema; a batch run reports the same "
            "warning.",
            obj="LDAP_SYNC_USER_PROFILE_ATTRIBUTES",
            id="adldap_auth.W011",
        )
    ]
    assert deploy_schema_messages(**settings_for(server)) == []
    # Never without --deploy: the other checks do not touch the network.
    with override_settings(**settings_for(server, misspelled)):
        found = checks.run_checks(tags=[adchecks.TAG])
    assert "adldap_auth.W011" not in {m.id for m in found}


@pytest.mark.samba
def test_samba_fills_the_mapped_field_and_warns_of_a_misspelled_attribute(samba_clean):
    dc = samba_clean
    conn = dc.admin_connection()
    conn.modify_s(dc.user_dn("alice"), [(ldap.MOD_REPLACE, "telephoneNumber", [PHONE.encode()])])
    scope = {"LDAP_SYNC_USER_SEARCH": f"OU=Engineering,{dc.lab_dn}", "LDAP_SYNC_GROUP": False}
    good = {"testapp.Employee": {"telephoneNumber": "phone", "department": "department"}}
    with override_settings(**login_settings(samba_settings(
        dc, LDAP_SYNC_USER_PROFILE_ATTRIBUTES=good, **scope
    ))):  # fmt: skip
        result = run_sync(SyncOptions(mode="full"))
        assert result.status == SyncRun.STATUS_SUCCESS and result.problems == [], result.problems
        assert (profile("alice").phone, profile("alice").department) == (PHONE, "Engineering")
        assert profile("alice").title == ""  # the naming rule is off for a mapped profile
        User.objects.all().delete()
        assert authenticate(username="alice", password=LAB_PASSWORD) is not None
        assert profile("alice").phone == PHONE
    bad = {"testapp.Employee": {"telephonNumber": "phone"}}
    with override_settings(**samba_settings(dc, LDAP_SYNC_USER_PROFILE_ATTRIBUTES=bad, **scope)):
        result = run_sync(SyncOptions(mode="full"))
    assert result.status == SyncRun.STATUS_SUCCESS, result.error
    assert schema_warnings(result.problems) == [
        "LDAP_SYNC_USER_PROFILE_ATTRIBUTES maps 'telephonNumber', which is not an attribute "
        "type of the directory's schema: its field stays empty"
    ]
