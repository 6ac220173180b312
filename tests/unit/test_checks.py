"""System checks of the LDAP_SYNC_* settings (adldap_auth.checks).

The table ``CASES`` gives, for every setting of ``conf.DEFAULTS``, at least one wrong value and
the exact set of check ids it must produce on top of an otherwise valid configuration.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.core import checks
from django.test import override_settings

from adldap_auth import checks as adchecks
from adldap_auth.conf import DEFAULTS, ldap_rules
from adldap_auth.conf import messages as check_messages
from adldap_auth.conf.ldap_syntax import filter_problem
from adldap_auth.conf.messages import CHECK_IDS, Check
from adldap_auth.conf.validation import VALIDATORS
from adldap_auth.conf.value_rules import DEFAULT_ADVICE

#: The smallest valid configuration: it yields no message at all.
BASE = {
    "BIND_URI": "ldaps://dc1.example.com",
    "BIND_DN": "CN=svc-django,OU=Service Accounts,DC=example,DC=com",
    "BIND_PASS": "not-a-real-password",
    "BIND_SEARCH": "DC=example,DC=com",
}

class _Unset:
    def __repr__(self) -> str:
        return "UNSET"  # not object()'s address: pytest-xdist workers must agree on test ids


#: Marks a setting of BASE to leave out.
UNSET = _Unset()


def prefixed(overrides: dict[str, Any]) -> dict[str, Any]:
    merged = {**BASE, **overrides}
    return {"LDAP_SYNC_" + k: v for k, v in merged.items() if v is not UNSET}


def run_ldap_checks(**overrides: Any) -> list[checks.CheckMessage]:
    with override_settings(**prefixed(overrides)):
        return checks.run_checks(tags=[adchecks.TAG])


def ids(messages: list[checks.CheckMessage]) -> set[str]:
    return {m.id.removeprefix("adldap_auth.") for m in messages}


@dataclass
class Case:
    setting: str  # the setting under test (a key of DEFAULTS)
    value: Any
    expected: set[str]  # ids without the "adldap_auth." prefix
    extra: dict[str, Any] = field(default_factory=dict)  # other settings of the case

    @property
    def overrides(self) -> dict[str, Any]:
        return {**self.extra, self.setting: self.value}

    def __str__(self) -> str:
        extra = "".join(f",{k}={v!r}" for k, v in self.extra.items())
        return f"{self.setting}={self.value!r}{extra}"[:90]


def case(setting: str, value: Any, *expected: str, **extra: Any) -> Case:
    return Case(setting, value, set(expected), extra)


DN = "CN=Domain Users,CN=Users,DC=example,DC=com"

CASES = [
    # Connection
    case("BIND_URI", UNSET, "E001"),
    case("BIND_URI", "", "E001"),
    case("BIND_URI", [], "E001"),
    case("BIND_URI", 42, "E002"),
    case("BIND_URI", ["ldaps://dc1.example.com", 3], "E002"),
    case("BIND_URI", "http://dc1.example.com", "E003"),
    case("BIND_URI", ["ldaps://dc1.example.com", "dc2.example.com"], "E003"),
    case("BIND_URI", "ldap://dc1.example.com", "W001"),
    case("BIND_URI", ("ldap://dc1", "ldap://dc2"), "W001"),
    case("BIND_URI", "ldap://dc1.example.com", "E027", REQUIRE_TLS=True),
    case("BIND_URI", "ldap://dc1.example.com", START_TLS=True, REQUIRE_TLS=True),
    case("BIND_URI", ["ldaps://dc1.example.com", "ldaps://dc2.example.com"]),
    case("BIND_URI", "ldapi://%2Fvar%2Frun%2Fslapd%2Fldapi", REQUIRE_TLS=True),
    case("BIND_DN", UNSET, "E001"),
    case("BIND_DN", "", "E001"),
    case("BIND_DN", 5, "E007"),
    case("BIND_DN", "svc-django@example.com"),  # AD binds with a UPN too
    case("BIND_PASS", UNSET, "E001"),
    case("BIND_PASS", None, "E001"),
    case("BIND_PASS", "", "W002"),
    case("BIND_PASS", 12345, "E007"),
    case("BIND_SEARCH", UNSET, "E001"),
    case("BIND_SEARCH", None, "E001"),
    case("BIND_SEARCH", "example.com", "E012"),
    case("BIND_SEARCH", ["DC=example,DC=com"], "E007"),
    case("BIND_PAGESIZE", 0, "E005"),
    case("BIND_PAGESIZE", "200", "E005"),
    case("BIND_PAGESIZE", True, "E005"),
    case("BIND_PAGESIZE", 100_001, "E005"),
    case("BIND_PAGESIZE", 5000, "W004"),
    case("BIND_PAGESIZE", 1000),
    case("CA_FILE", "/nonexistent/adldap-auth/ca.pem", "E026"),
    case("CA_FILE", os.sep, "E026"),  # a directory
    case("CA_FILE", 5, "E007"),
    case("CA_FILE", __file__),
    case("START_TLS", "yes", "E004"),
    case("REQUIRE_CERT", 0, "E004"),
    case("REQUIRE_CERT", False, "W003"),
    case("REQUIRE_TLS", "true", "E004"),
    case("NETWORK_TIMEOUT", 0, "E006"),
    case("NETWORK_TIMEOUT", None, "E006"),
    case("NETWORK_TIMEOUT", "5", "E006"),
    case("NETWORK_TIMEOUT", True, "E006"),
    case("NETWORK_TIMEOUT", 2),
    case("OPERATION_TIMEOUT", -1.0, "E006"),
    case("RANGE_SIZE", 0, "E005"),
    case("RANGE_SIZE", "1500", "E005"),
    case("RANGE_SIZE", 1500),
    # Users
    case("USER", "False", "E004"),
    case("USER_INCREMENTAL", 1, "E004"),
    case("USER_SEARCH", "people", "E012"),
    case("USER_SEARCH", "", "E007"),
    case("USER_SEARCH", None),
    case("USER_SEARCH", "OU=People,DC=example,DC=com"),
    case("USER_FILTER", "objectClass=user", "E011"),
    case("USER_FILTER", "(&(objectClass=user)", "E011"),
    case("USER_FILTER", "(&(objectClass=user)))", "E011"),
    case("USER_FILTER", "(cn=a(b))", "E011"),
    case("USER_FILTER", "(cn=a\\zz)", "E011"),
    case("USER_FILTER", "(object Class=user)", "E011"),
    case("USER_FILTER", "", "E007"),
    case("USER_FILTER", "(&(objectClass=person)(!(userAccountControl:1.2.840.113556.1.4.803:=2)))"),
    case("USER_FILTER_INCREMENTAL", "(&(objectClass=user)(whenChanged>=20240101Z))", "E013"),
    case("USER_FILTER_INCREMENTAL", "(&(objectClass=user)(whenChanged>=?)", "E011"),
    case("USER_FILTER_INCREMENTAL", None, "E007"),
    case("USER_FILTER_INCREMENTAL", None, USER_INCREMENTAL=False),
    case("USER_ATTRIBUTES", ["sAMAccountName"], "E009"),
    case("USER_ATTRIBUTES", {"sAMAccountName": 1}, "E009"),
    case("USER_ATTRIBUTES", {"givenName": "first_name"}, "E014"),
    case("USER_ATTRIBUTES", {"sAMAccountName": "username", "department": "department"}, "E015"),
    case("USER_ATTRIBUTES", {"sAMAccountName": "username", "memberOf": "groups"}, "E015"),
    case("USER_ATTRIBUTES", {"uid": "username", "mail": "email"}),
    case("USER_EXTRA_ATTRIBUTES", "department", "E008"),
    case("USER_EXTRA_ATTRIBUTES", ["department", 5], "E008"),
    case("USER_EXTRA_ATTRIBUTES", ("department", "title")),
    case("USER_EXTRA_PROFILES", ["testapp.Missing"], "E019"),
    case("USER_EXTRA_PROFILES", ["Employee"], "E019"),
    case("USER_EXTRA_PROFILES", ["nosuchapp.Employee"], "E019"),
    case("USER_EXTRA_PROFILES", "testapp.Employee", "E008"),
    case("USER_EXTRA_PROFILES", ["testapp.Badge"], "W006"),
    case("USER_EXTRA_PROFILES", ["testapp.Employee"]),
    case("USER_PROFILE_ATTRIBUTES", {"testapp.Employee": {"telephoneNumber": "phone"}},
         USER_EXTRA_PROFILES=["testapp.Employee"]),
    case("USER_PROFILE_ATTRIBUTES", {"testapp.Employee": {"jpegPhoto": "thumbnailphoto"}},
         USER_EXTRA_PROFILES=["testapp.Employee"]),
    case("USER_PROFILE_ATTRIBUTES", [("telephoneNumber", "phone")], "E028"),
    case("USER_PROFILE_ATTRIBUTES", {"testapp.Employee": ["phone"]}, "E028",
         USER_EXTRA_PROFILES=["testapp.Employee"]),
    case("USER_PROFILE_ATTRIBUTES", {"testapp.Employee": {5: "phone"}}, "E028",
         USER_EXTRA_PROFILES=["testapp.Employee"]),
    case("USER_PROFILE_ATTRIBUTES", {"testapp.Employee": {"telephone number": "phone"}}, "E028",
         USER_EXTRA_PROFILES=["testapp.Employee"]),
    case("USER_PROFILE_ATTRIBUTES", {"testapp.Employee": {"telephoneNumber": None}}, "E028",
         USER_EXTRA_PROFILES=["testapp.Employee"]),
    case("USER_PROFILE_ATTRIBUTES", {("testapp", "Employee"): {"mobile": "phone"}}, "E028",
         USER_EXTRA_PROFILES=["testapp.Employee"]),
    case("USER_PROFILE_ATTRIBUTES", {"testapp.Missing": {"mobile": "phone"}}, "E029",
         USER_EXTRA_PROFILES=["testapp.Employee"]),
    case("USER_PROFILE_ATTRIBUTES", {"testapp.Employee": {"mobile": "phone"}}, "E029"),
    case("USER_PROFILE_ATTRIBUTES", {"testapp.Employee": {"mobile": "fone"}}, "E030",
         USER_EXTRA_PROFILES=["testapp.Employee"]),
    case("USER_PROFILE_ATTRIBUTES", {"testapp.Employee": {"roomNumber": "floor"}}, "E030",
         USER_EXTRA_PROFILES=["testapp.Employee"]),
    case("USER_PROFILE_ATTRIBUTES", {"testapp.Employee": {"manager": "user"}}, "E030",
         USER_EXTRA_PROFILES=["testapp.Employee"]),
    case("USER_PROFILE_ATTRIBUTES", {"testapp.Employee": {"employeeID": "id"}}, "E030",
         USER_EXTRA_PROFILES=["testapp.Employee"]),
    case("USER_PROFILE_ATTRIBUTES", {"testapp.Employee": {"thumbnailPhoto": "phone"}}, "E030",
         USER_EXTRA_PROFILES=["testapp.Employee"]),
    case("USER_PROFILE_ATTRIBUTES", {"testapp.Employee": {"mobile": "phone",
         "telephoneNumber": "phone"}}, "E031", USER_EXTRA_PROFILES=["testapp.Employee"]),
    case("USER_PROFILE_ATTRIBUTES", {"testapp.Employee": {"mobile": "phone",
         "Mobile": "title"}}, "E031", USER_EXTRA_PROFILES=["testapp.Employee"]),
    case("USER_PROFILE_ATTRIBUTES", {"testapp.Employee": {"mobile": "phone"},
         "testapp.employee": {"title": "title"}}, "E031",
         USER_EXTRA_PROFILES=["testapp.Employee"]),
    case("USER_CHANGE_FIELDCASE", "Lower", "E010"),
    case("USER_CHANGE_FIELDCASE", "title", "E010"),
    case("USER_CHANGE_FIELDCASE", None),
    case("MULTIVALUE_SEPARATOR", 5, "E007"),
    case("MULTIVALUE_SEPARATOR", "", "E007"),
    case("USER_EXEMPT_FROM_SYNC", "admin", "E008"),
    case("USER_EXEMPT_FROM_SYNC", ("admin",)),
    case("USER_CALLBACKS", ["no_such_module.on_user"], "E020"),
    case("USER_CALLBACKS", ["adldap_auth.callbacks.LEGACY_CALLBACKS"], "E020"),  # not callable
    case("USER_CALLBACKS", "adldap_auth.callbacks.removed_user_delete", "E008"),
    case("USER_SET_UNUSABLE_PASSWORD", None, "E004"),
    case("USER_SHOW_PROGRESS", "yes", "E004"),
    case("USER_THUMBNAILPHOTO_NAME", "photos/{username}.jpg", "E024"),
    case("USER_THUMBNAILPHOTO_NAME", "..\\{username}.jpg", "E024"),
    case("USER_THUMBNAILPHOTO_NAME", "", "E007"),
    case("USER_THUMBNAILPHOTO_NAME", "{username}_%Y%m%d.jpg"),
    case("USERNAME_FIELD", "login", "E016"),
    case("USERNAME_FIELD", "first_name", "E016"),  # not unique
    case("USERNAME_FIELD", 5, "E007"),
    case("USERNAME_FIELD", "id", "E014"),  # a unique field that nothing maps to
    case("USERNAME_FIELD", "username"),
    case("REMOVED_USER_CALLBACKS", ["adldap_auth.callbacks.no_such_callback"], "E020"),
    case("REMOVED_USER_CALLBACKS", [None], "E008"),
    case("REMOVED_USER_CALLBACKS", ["adldap_sync.callbacks.removed_user_delete"]),  # legacy path
    case("REMOVED_USER_CALLBACKS", []),
    case("IDENTITY_ATTRIBUTE", "", "E007"),
    case("IDENTITY_ATTRIBUTE", None, "E007"),
    case("IDENTITY_ATTRIBUTE", "entryUUID"),
    case("PHOTO_MAX_BYTES", 0, "E005"),
    case("PHOTO_MAX_BYTES", 1.5, "E005"),
    case("PHOTO_MAX_PIXELS", -1, "E005"),
    case("USERNAME_STRICT", "false", "E004"),
    case("USERNAME_STRICT", True),
    case("ADOPT_USERS", "root", "E008"),
    case("ADOPT_USERS", ["root", ""], "E008"),
    case("ADOPT_USERS", ["root", "j*"]),
    case("ADOPT_GROUPS", "Staff", "E008"),
    case("ADOPT_GROUPS", ("Staff", "app-*")),
    # Groups
    case("GROUP", "no", "E004"),
    case("GROUP_INCREMENTAL", 0, "E004"),
    case("GROUP_SEARCH", "groups", "E012"),
    case("GROUP_FILTER", "(objectClass=group))", "E011"),
    case("GROUP_FILTER", "(|(objectClass=group)(objectClass=groupOfNames))"),
    case("GROUP_FILTER_INCREMENTAL", "(objectClass=group)", "E013"),
    case("GROUP_FILTER_INCREMENTAL", "", GROUP_INCREMENTAL=False),
    case("GROUP_ATTRIBUTES", "cn", "E009"),
    case("GROUP_ATTRIBUTES", {"cn": "title"}, "E017", "E018"),
    case("GROUP_ATTRIBUTES", {"cn": "name", "member": "permissions"}, "E018"),
    case("GROUP_ATTRIBUTES", {"sAMAccountName": "name"}),
    case("GROUP_REMOVAL_ACTION", "delete", "E010"),
    case("GROUP_REMOVAL_ACTION", "DELETE"),
    # Memberships
    case("GROUP_MEMBERSHIP", "True", "E004"),
    case("GROUP_MEMBERSHIP_DN_FIELD", "", "E007"),
    case("GROUP_MEMBERSHIP_FILTER", "(member=CN=x", "E011"),
    case("GROUP_MEMBERSHIP_FILTER", "(:=x)", "E011"),
    case("GROUP_MEMBERSHIP_FILTER", "(member=x)", "E013", "W005", GROUP_MEMBERSHIP_MODE="filter"),
    case("GROUP_MEMBERSHIP_FILTER", "(member=CN=x)"),  # the graph mode does not use it
    case("GROUP_MEMBERSHIP_CREATE_IF_NOT_EXISTS", 1, "E004"),
    case("GROUP_MEMBERSHIP_ADD_DEFAULT", "Domain Users", "E021"),
    case("GROUP_MEMBERSHIP_ADD_DEFAULT", [5], "E021"),
    case("GROUP_MEMBERSHIP_ADD_DEFAULT", [(DN, "cn")], "E021"),
    case("GROUP_MEMBERSHIP_ADD_DEFAULT", [("Domain Users", {"cn": [b"Domain Users"]})], "E012"),
    case("GROUP_MEMBERSHIP_ADD_DEFAULT", [(DN, {"cn": [b"Domain Users"]}), "Staff"]),
    case("GROUP_MEMBERSHIP_MODE", "Graph", "E010"),
    case("GROUP_MEMBERSHIP_MODE", "filter", "W005"),
    case("GROUP_MEMBER_ATTRIBUTE", "", "E007"),
    case("GROUP_MEMBER_ATTRIBUTE", ["member"], "E007"),
    case("GROUP_MEMBER_ATTRIBUTE", "uniqueMember"),
    # Incremental and safety
    case("INCREMENTAL_BETWEEN_FULL", -2, "E005"),
    case("INCREMENTAL_BETWEEN_FULL", "5", "E005"),
    case("INCREMENTAL_BETWEEN_FULL", -1),
    case("INCREMENTAL_TIME_OFFSET", -1, "E005"),
    case("INCREMENTAL_TIME_OFFSET", 1.5, "E005"),
    case("INCREMENTAL_TIMESTAMPFORMAT", "now", "E025"),
    case("INCREMENTAL_TIMESTAMPFORMAT", "%Y\0", "E025"),
    case("INCREMENTAL_TIMESTAMPFORMAT", 5, "E007"),
    case("INCREMENTAL_TIMESTAMPFORMAT", "%Y%m%d%H%M%SZ"),
    case("CHANGE_TRACKING", "USN", "E010"),
    case("CHANGE_TRACKING", "timestamp"),
    case("CHANGE_TRACKING", "contentsync"),
    case("CHANGE_TRACKING", "dirsync"),
    case("CHANGE_TRACKING", "DirSync", "E010"),
    case("REMOVAL_THRESHOLD", -1, "E022"),
    case("REMOVAL_THRESHOLD", "0%", "E022"),
    case("REMOVAL_THRESHOLD", "101%", "E022"),
    case("REMOVAL_THRESHOLD", "ten", "E022"),
    case("REMOVAL_THRESHOLD", True, "E022"),
    case("REMOVAL_THRESHOLD", "10%"),
    case("REMOVAL_THRESHOLD", "0.5 %"),
    case("REMOVAL_THRESHOLD", 0),
    case("REMOVAL_THRESHOLD", None),
    case("REMOVAL_GRACE", -1, "E023"),
    case("REMOVAL_GRACE", "30d", "E023"),
    case("REMOVAL_GRACE", dt.timedelta(days=-1), "E023"),
    case("REMOVAL_GRACE", dt.timedelta(days=30)),
    case("REMOVAL_GRACE", 86400.0),
    case("LOCK_STALE_AFTER", 0, "E006"),
    case("WRITE_BATCH_SIZE", 0, "E005"),
    case("WRITE_BATCH_SIZE", 500),
    case("WATCH_INTERVAL", 0, "E006"),
    case("WATCH_INTERVAL", "5", "E006"),
    case("WATCH_INTERVAL", 0.5),
    case("WATCH_FULL_INTERVAL", -1, "E006"),
    case("WATCH_FULL_INTERVAL", 3600),
    case("MEMBERSHIP_SEARCH", "not a dn", "E012"),
    case("MEMBERSHIP_SEARCH", None),
    case("MEMBERSHIP_FILTER", "(objectClass=group", "E011"),
    case("MEMBERSHIP_FILTER", "(objectClass=group)"),
    case("MEMBERSHIP_FILTER", None),
    case("LOGIN_GROUP_RESOLUTION", "tokenGroups", "E010"),
    case("LOGIN_GROUP_RESOLUTION", "in_chain"),
    case("LOGIN_GROUP_RESOLUTION", "graph"),
    case("LOGIN_GROUP_CACHE_TIMEOUT", -1, "E005"),
    case("LOGIN_GROUP_CACHE_TIMEOUT", 0),
]


@pytest.mark.parametrize("item", CASES, ids=str)
def test_setting_value(item: Case) -> None:
    messages = run_ldap_checks(**item.overrides)
    assert ids(messages) == item.expected, [str(m) for m in messages]
    for message in messages:
        # The setting's name is the message's object and appears in its text; a hint is given.
        assert message.obj.startswith("LDAP_SYNC_")
        assert message.obj in message.msg
        assert message.hint and message.hint != DEFAULT_ADVICE


def test_every_setting_has_a_validator_and_a_wrong_value_in_the_table() -> None:
    assert set(VALIDATORS) == set(DEFAULTS)
    assert {c.setting for c in CASES if c.expected} == set(DEFAULTS)


def test_every_check_id_is_exercised_and_documented() -> None:
    # W009/W010: the deploy check, which binds to a directory: tests/slapd/test_security.py.
    # W011: the schema deploy check: tests/slapd/test_profile_attributes.py.
    exercised = set().union(*(c.expected for c in CASES)) | {
        "W007", "W008", "W009", "W010", "W011"
    }
    assert {"adldap_auth." + i for i in exercised} == set(CHECK_IDS)
    assert all(summary.endswith(".") for summary in CHECK_IDS.values())


def test_ids_are_stable_and_match_their_level() -> None:
    for check in (v for v in vars(check_messages).values() if isinstance(v, Check)):
        kind = check.id.removeprefix("adldap_auth.")[0]
        assert {"E": checks.Error, "W": checks.Warning}[kind] is check.level
    assert list(CHECK_IDS) == sorted(CHECK_IDS)


def test_no_ldap_sync_settings_gives_nothing() -> None:
    assert checks.run_checks(tags=[adchecks.TAG]) == []
    assert checks.run_checks() == []


@override_settings(
    AUTH_LDAP_SERVER_URI="ldap://dc1.example.com",
    AUTH_LDAP_BIND_DN="",
    AUTH_LDAP_BIND_PASSWORD="",
    AUTHENTICATION_BACKENDS=["adldap_auth.backends.ADLDAPBackend"],
)
def test_a_site_with_only_django_auth_ldap_settings_gets_nothing() -> None:
    assert checks.run_checks(tags=[adchecks.TAG]) == []


def test_minimal_configuration_is_valid() -> None:
    # Also proves that every default of conf.DEFAULTS passes the checks.
    assert run_ldap_checks() == []


def test_full_valid_configuration(tmp_path, monkeypatch) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("-----BEGIN CERTIFICATE-----\n")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the checks must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr("ldap.initialize", no_network)
    full = {
        "BIND_URI": ["ldap://dc1.example.com", "ldaps://dc2.example.com:636"],
        "BIND_PAGESIZE": 500,
        "CA_FILE": str(ca_file),
        "START_TLS": True,
        "REQUIRE_CERT": True,
        "REQUIRE_TLS": True,
        "NETWORK_TIMEOUT": 3,
        "OPERATION_TIMEOUT": 120.0,
        "RANGE_SIZE": 1500,
        "USER": True,
        "USER_INCREMENTAL": True,
        "USER_SEARCH": "OU=People,DC=example,DC=com",
        "USER_FILTER": "(&(objectCategory=person)(objectClass=user)(mail=*))",
        "USER_FILTER_INCREMENTAL": "(&(objectCategory=person)(objectClass=user)(whenChanged>=?))",
        "USER_ATTRIBUTES": {
            "sAMAccountName": "username",
            "givenName": "first_name",
            "sn": "last_name",
            "mail": "email",
        },
        "USER_EXTRA_ATTRIBUTES": ["userAccountControl", "department", "title", "thumbnailPhoto"],
        "USER_EXTRA_PROFILES": ["testapp.Employee"],
        "USER_PROFILE_ATTRIBUTES": {"testapp.Employee": {"telephoneNumber": "phone"}},
        "USER_CHANGE_FIELDCASE": "lower",
        "MULTIVALUE_SEPARATOR": ", ",
        "USER_EXEMPT_FROM_SYNC": ["admin", "guest"],
        "USER_CALLBACKS": ["tests.unit.test_checks.sample_user_callback"],
        "USER_SET_UNUSABLE_PASSWORD": True,
        "USER_SHOW_PROGRESS": False,
        "USER_THUMBNAILPHOTO_NAME": "{username}_{uuid4}_%Y.jpg",
        "USERNAME_FIELD": "username",
        "REMOVED_USER_CALLBACKS": [
            "adldap_auth.callbacks.removed_user_deactivate",
            "adldap_sync.callbacks.removed_user_delete",
        ],
        "IDENTITY_ATTRIBUTE": "objectGUID",
        "PHOTO_MAX_BYTES": 1_000_000,
        "PHOTO_MAX_PIXELS": 1024 * 1024,
        "USERNAME_STRICT": True,
        "ADOPT_USERS": ["root"],
        "ADOPT_GROUPS": ["Staff"],
        "GROUP": True,
        "GROUP_INCREMENTAL": True,
        "GROUP_SEARCH": "OU=Groups,DC=example,DC=com",
        "GROUP_FILTER": "(objectClass=group)",
        "GROUP_FILTER_INCREMENTAL": "(&(objectClass=group)(whenChanged>=?))",
        "GROUP_ATTRIBUTES": {"cn": "name"},
        "GROUP_REMOVAL_ACTION": "DELETE",
        "GROUP_MEMBERSHIP": True,
        "GROUP_MEMBERSHIP_DN_FIELD": "distinguishedName",
        "GROUP_MEMBERSHIP_FILTER": "(member:1.2.840.113556.1.4.1941:={distinguishedName})",
        "GROUP_MEMBERSHIP_CREATE_IF_NOT_EXISTS": False,
        "GROUP_MEMBERSHIP_ADD_DEFAULT": [(DN, {"cn": [b"Domain Users"]})],
        "GROUP_MEMBERSHIP_MODE": "graph",
        "GROUP_MEMBER_ATTRIBUTE": "member",
        "MEMBERSHIP_SEARCH": "DC=example,DC=com",
        "MEMBERSHIP_FILTER": "(objectClass=group)",
        "INCREMENTAL_BETWEEN_FULL": 10,
        "INCREMENTAL_TIME_OFFSET": 5,
        "INCREMENTAL_TIMESTAMPFORMAT": "%Y%m%d%H%M%S.0Z",
        "CHANGE_TRACKING": "usn",
        "REMOVAL_THRESHOLD": "5%",
        "REMOVAL_GRACE": dt.timedelta(days=7),
        "LOCK_STALE_AFTER": 3600,
        "WRITE_BATCH_SIZE": 200,
        "WATCH_INTERVAL": 2,
        "WATCH_FULL_INTERVAL": 3600.0,
        "LOGIN_GROUP_RESOLUTION": "graph",
        "LOGIN_GROUP_CACHE_TIMEOUT": 300,
    }
    assert set(full) | set(BASE) == set(DEFAULTS)
    assert run_ldap_checks(**full) == []
    with override_settings(**prefixed(full)):
        assert checks.run_checks() == []


def sample_user_callback(user, attributes, created, updated) -> None:
    """A USER_CALLBACKS function for the valid configuration above."""


# -- exact messages, as Django's and django-axes' tests do -----------------------------------


def test_missing_required_setting_message() -> None:
    assert run_ldap_checks(BIND_DN=UNSET) == [
        checks.Error(
            "LDAP_SYNC_BIND_DN is required but is not set.",
            hint="adldap-auth needs LDAP_SYNC_BIND_URI, LDAP_SYNC_BIND_DN, LDAP_SYNC_BIND_PASS "
            "and LDAP_SYNC_BIND_SEARCH. Example: LDAP_SYNC_BIND_DN = "
            '"CN=svc-django,OU=Service Accounts,DC=example,DC=com"',
            obj="LDAP_SYNC_BIND_DN",
            id="adldap_auth.E001",
        )
    ]


def test_misspelled_setting_gets_a_did_you_mean_hint() -> None:
    assert run_ldap_checks(USER_FLTER="(objectClass=user)") == [
        checks.Warning(
            "LDAP_SYNC_USER_FLTER is not an adldap-auth setting and is ignored.",
            hint="Did you mean LDAP_SYNC_USER_FILTER?",
            obj="LDAP_SYNC_USER_FLTER",
            id="adldap_auth.W007",
        )
    ]


def test_unknown_setting_without_a_close_match() -> None:
    [message] = run_ldap_checks(FROBNICATE=True)
    assert message.id == "adldap_auth.W007"
    assert message.hint == "See the settings table in the adldap-auth documentation."


def test_django_ldap_sync_setting_gets_a_specific_hint() -> None:
    [message] = run_ldap_checks(USER_REMOVAL_ACTION="SUSPEND")
    assert message.id == "adldap_auth.W007"
    assert "LDAP_SYNC_REMOVED_USER_CALLBACKS" in message.hint


def test_a_lone_misspelled_setting_turns_the_checks_on() -> None:
    with override_settings(LDAP_SYNC_BIND_URL="ldaps://dc1.example.com"):
        messages = checks.run_checks(tags=[adchecks.TAG])
    assert sorted((m.id, m.obj) for m in messages) == [
        ("adldap_auth.E001", "LDAP_SYNC_BIND_DN"),
        ("adldap_auth.E001", "LDAP_SYNC_BIND_PASS"),
        ("adldap_auth.E001", "LDAP_SYNC_BIND_SEARCH"),
        ("adldap_auth.E001", "LDAP_SYNC_BIND_URI"),
        ("adldap_auth.W007", "LDAP_SYNC_BIND_URL"),
    ]


def test_old_misspelled_callbacks_name_is_read_with_a_warning() -> None:
    with override_settings(
        **prefixed({}), LDAP_LDAP_SYNC_USER_CALLBACKS=["tests.unit.test_checks.sample_user_callback"]
    ):
        messages = checks.run_checks(tags=[adchecks.TAG])
    assert messages == [
        checks.Warning(
            "LDAP_LDAP_SYNC_USER_CALLBACKS is the misspelled name that django-adldap-sync read; "
            "it is still read as LDAP_SYNC_USER_CALLBACKS.",
            hint="Rename it to LDAP_SYNC_USER_CALLBACKS.",
            obj="LDAP_LDAP_SYNC_USER_CALLBACKS",
            id="adldap_auth.W008",
        )
    ]


def test_old_misspelled_callbacks_name_is_ignored_when_the_new_one_is_set() -> None:
    with override_settings(
        **prefixed({"USER_CALLBACKS": []}), LDAP_LDAP_SYNC_USER_CALLBACKS=["no.such.path"]
    ):
        [message] = checks.run_checks(tags=[adchecks.TAG])
    assert message.id == "adldap_auth.W008"
    assert "ignored because LDAP_SYNC_USER_CALLBACKS is set" in message.msg


def test_bad_callback_under_the_old_name_is_reported_under_that_name() -> None:
    with override_settings(**prefixed({}), LDAP_LDAP_SYNC_USER_CALLBACKS=["no.such.path"]):
        messages = checks.run_checks(tags=[adchecks.TAG])
    assert sorted((m.id, m.obj) for m in messages) == [
        ("adldap_auth.E020", "LDAP_LDAP_SYNC_USER_CALLBACKS"),
        ("adldap_auth.W008", "LDAP_LDAP_SYNC_USER_CALLBACKS"),
    ]


def test_clear_text_uri_warning_message() -> None:
    assert run_ldap_checks(BIND_URI="ldap://dc1.example.com") == [
        checks.Warning(
            "LDAP_SYNC_BIND_URI has 'ldap://dc1.example.com': without LDAP_SYNC_START_TLS the "
            "bind password and the directory's data cross the network in clear text.",
            hint="Use ldaps:// or set LDAP_SYNC_START_TLS = True (and LDAP_SYNC_REQUIRE_TLS = "
            "True to make this an error).",
            obj="LDAP_SYNC_BIND_URI",
            id="adldap_auth.W001",
        )
    ]


def test_security_messages_carry_the_security_tag() -> None:
    with override_settings(**prefixed({"BIND_URI": "ldap://dc1", "REQUIRE_CERT": False})):
        messages = checks.run_checks(tags=[checks.Tags.security])
    assert ids(messages) == {"W001", "W003"}


def test_the_password_never_appears_in_messages() -> None:
    for value in (987654321, ["hunter2-secret"], b"hunter2-secret"):
        messages = run_ldap_checks(BIND_PASS=value)
        assert ids(messages) == {"E007"}
        text = " ".join(f"{m.msg} {m.hint}" for m in messages)
        assert "987654321" not in text and "hunter2" not in text


def test_type_errors_show_the_value_and_its_type() -> None:
    [message] = run_ldap_checks(BIND_PAGESIZE="200")
    assert message.msg == (
        "LDAP_SYNC_BIND_PAGESIZE must be an integer from 1 to 100000, not '200' (str)."
    )


def test_unreadable_ca_file(tmp_path, monkeypatch) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("x")
    monkeypatch.setattr(ldap_rules.os, "access", lambda path, mode: False)  # root reads anything
    [message] = run_ldap_checks(CA_FILE=str(ca_file))
    assert message.id == "adldap_auth.E026"
    assert message.msg == f"LDAP_SYNC_CA_FILE is not readable: {str(ca_file)!r}."


# -- the filter syntax checker ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "(objectClass=*)",
        "(cn=Babs Jensen)",
        "(!(cn=Tim Howes))",
        "(&(objectClass=Person)(|(sn=Jensen)(cn=Babs J*)))",
        "(o=univ*of*mich*)",
        "(seeAlso=)",
        "(cn:caseExactMatch:=Fred Flintstone)",
        "(cn:=Betty Rubble)",
        "(sn:dn:2.4.6.8.10:=Barney Rubble)",
        "(o:dn:=Ace Industry)",
        "(:1.2.3:=Wilma Flintstone)",
        "(:DN:2.4.6.8.10:=Dino)",
        "(o=Parens R Us \\28for all your parenthetical needs\\29)",
        "(cn=*\\2A*)",
        "(filename=C:\\5cMyFile)",
        "(bin=\\00\\00\\00\\04)",
        "(sn=Lu\\c4\\8di\\c4\\87)",
        "(1.3.6.1.4.1.1466.0=\\04\\02\\48\\69)",
        "(member:1.2.840.113556.1.4.1941:={distinguishedName})",
        "(whenChanged>=?)",
        "(sn~=jensen)",
        "(uSNChanged<=123)",
        "(&)",
        "( & (objectClass=user) (mail=*) )",
        "(cn;lang-en=x)",
    ],
)
def test_valid_filters(text: str) -> None:
    assert filter_problem(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "objectClass=user",
        "(objectClass=user",
        "(objectClass=user))",
        "((objectClass=user))",
        "(objectClass=user)(cn=x)",
        "()",
        "(cn)",
        "(=x)",
        "(cn=a(b)",
        "(cn=x\\)",
        "(cn=x\\4)",
        "(cn=x\\zz)",
        "(!(a=b)(c=d))",
        "(!a=b)",
        "(cn:1.2.:=x)",
        "(:=x)",
        "(c n=x)",
        "(" * 2000 + "a=b" + ")" * 2000,
    ],
)
def test_invalid_filters(text: str) -> None:
    assert filter_problem(text) is not None
