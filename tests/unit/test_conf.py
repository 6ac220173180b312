"""The settings object (adldap_auth.conf): defaults, inheritance, overrides, import safety."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import override_settings

from adldap_auth.conf import DEFAULTS, get_config, sync_settings
from tests.unit.test_checks import BASE

#: The settings table of DESIGN.md ("defaults from django-adldap-sync 0.5.2"), written out.
SEED_DEFAULTS = {
    "BIND_URI": None,  # required
    "BIND_DN": None,  # required
    "BIND_PASS": None,  # required
    "BIND_SEARCH": None,  # required
    "BIND_PAGESIZE": 200,
    "USER": True,
    "USER_INCREMENTAL": True,
    "USER_SEARCH": None,  # BIND_SEARCH
    "USER_FILTER": "(&(objectCategory=person)(objectClass=user))",
    "USER_FILTER_INCREMENTAL": "(&(objectCategory=person)(objectClass=user)(whenchanged>=?))",
    "USER_ATTRIBUTES": {
        "sAMAccountName": "username",
        "givenName": "first_name",
        "sn": "last_name",
        "mail": "email",
    },
    "USER_EXTRA_ATTRIBUTES": ["userAccountControl"],
    "USER_EXTRA_PROFILES": [],
    "USER_CHANGE_FIELDCASE": "lower",
    "MULTIVALUE_SEPARATOR": "|",
    "USER_EXEMPT_FROM_SYNC": ["admin", "administrator", "administrador", "guest"],
    "USER_CALLBACKS": [],
    "USER_SET_UNUSABLE_PASSWORD": True,
    "USER_SHOW_PROGRESS": True,
    "USER_THUMBNAILPHOTO_NAME": "{username}_{uuid4}.jpg",
    "USERNAME_FIELD": None,  # User.USERNAME_FIELD
    "REMOVED_USER_CALLBACKS": ["adldap_auth.callbacks.removed_user_deactivate"],
    "GROUP": True,
    "GROUP_INCREMENTAL": True,
    "GROUP_SEARCH": None,  # BIND_SEARCH
    "GROUP_FILTER": "(objectClass=group)",
    "GROUP_FILTER_INCREMENTAL": "(&(objectClass=group)(whenchanged>=?))",
    "GROUP_ATTRIBUTES": {"cn": "name"},
    "GROUP_REMOVAL_ACTION": "KEEP",
    "GROUP_MEMBERSHIP": True,
    "GROUP_MEMBERSHIP_DN_FIELD": "distinguishedName",
    "GROUP_MEMBERSHIP_FILTER": "(member:1.2.840.113556.1.4.1941:={distinguishedName})",
    "GROUP_MEMBERSHIP_CREATE_IF_NOT_EXISTS": True,
    "GROUP_MEMBERSHIP_ADD_DEFAULT": [],
    "INCREMENTAL_BETWEEN_FULL": 5,
    "INCREMENTAL_TIME_OFFSET": 10,
    "INCREMENTAL_TIMESTAMPFORMAT": "%Y%m%d%H%M%S.0Z",
}

#: Settings new in adldap-auth (DESIGN.md names them; the docs' table gives these defaults).
NEW_DEFAULTS = {
    "CA_FILE": None,
    "START_TLS": False,
    "REQUIRE_CERT": True,
    "REQUIRE_TLS": False,
    "NETWORK_TIMEOUT": 5.0,
    "OPERATION_TIMEOUT": 60.0,
    "RANGE_SIZE": None,
    "IDENTITY_ATTRIBUTE": "auto",
    "PHOTO_MAX_BYTES": 5 * 1024 * 1024,
    "PHOTO_MAX_PIXELS": 4096 * 4096,
    "USER_PROFILE_ATTRIBUTES": {},
    "USERNAME_STRICT": False,
    "ADOPT_USERS": [],
    "ADOPT_GROUPS": [],
    "GROUP_MEMBERSHIP_MODE": "graph",
    "GROUP_MEMBER_ATTRIBUTE": "member",
    "MEMBERSHIP_SEARCH": None,
    "MEMBERSHIP_FILTER": None,
    "CHANGE_TRACKING": "auto",
    "REMOVAL_THRESHOLD": {"percent": 10, "minimum": 10},
    "REMOVAL_GRACE": None,
    "LOCK_STALE_AFTER": 6 * 3600,
    "WRITE_BATCH_SIZE": 1000,
    "WATCH_INTERVAL": 3.0,
    "WATCH_FULL_INTERVAL": 86400,
    "LOGIN_GROUP_RESOLUTION": "auto",
    "LOGIN_GROUP_CACHE_TIMEOUT": 60,
}


def test_the_tables_cover_every_setting() -> None:
    assert not set(SEED_DEFAULTS) & set(NEW_DEFAULTS)
    assert set(SEED_DEFAULTS) | set(NEW_DEFAULTS) == set(DEFAULTS)


@pytest.mark.parametrize("name", sorted(SEED_DEFAULTS))
def test_seed_defaults(name: str) -> None:
    assert DEFAULTS[name] == SEED_DEFAULTS[name]
    assert getattr(sync_settings, name) == SEED_DEFAULTS[name]


@pytest.mark.parametrize("name", sorted(NEW_DEFAULTS))
def test_new_defaults(name: str) -> None:
    assert DEFAULTS[name] == NEW_DEFAULTS[name]
    assert getattr(sync_settings, name) == NEW_DEFAULTS[name]


@pytest.mark.parametrize("name", ["USER_SEARCH", "GROUP_SEARCH"])
def test_search_bases_inherit_bind_search(name: str) -> None:
    with override_settings(LDAP_SYNC_BIND_SEARCH="DC=example,DC=com"):
        assert getattr(sync_settings, name) == "DC=example,DC=com"
    with override_settings(
        LDAP_SYNC_BIND_SEARCH="DC=example,DC=com", **{f"LDAP_SYNC_{name}": None}
    ):
        assert getattr(sync_settings, name) == "DC=example,DC=com"
    with override_settings(
        LDAP_SYNC_BIND_SEARCH="DC=example,DC=com", **{f"LDAP_SYNC_{name}": "OU=X,DC=example,DC=com"}
    ):
        assert getattr(sync_settings, name) == "OU=X,DC=example,DC=com"


def test_override_settings_is_seen_at_once_and_undone() -> None:
    assert sync_settings.BIND_PAGESIZE == 200
    with override_settings(LDAP_SYNC_BIND_PAGESIZE=500):
        assert sync_settings.BIND_PAGESIZE == 500
        with override_settings(LDAP_SYNC_BIND_PAGESIZE=50):
            assert sync_settings.BIND_PAGESIZE == 50
        assert sync_settings.BIND_PAGESIZE == 500
    assert sync_settings.BIND_PAGESIZE == 200


def test_unknown_name_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="LDAP_SYNC_USER_FLTER"):
        sync_settings.USER_FLTER  # noqa: B018
    assert not hasattr(sync_settings, "NOT_A_SETTING")


def test_old_misspelled_callbacks_name_is_read() -> None:
    with override_settings(LDAP_LDAP_SYNC_USER_CALLBACKS=["myapp.cb"]):
        assert sync_settings.USER_CALLBACKS == ["myapp.cb"]
        with override_settings(LDAP_SYNC_USER_CALLBACKS=["myapp.new"]):
            assert sync_settings.USER_CALLBACKS == ["myapp.new"]


def test_configured_and_bind_uris() -> None:
    assert not sync_settings.configured()
    assert not get_config().configured() and get_config().bind_uris == []
    base = {"LDAP_SYNC_" + k: v for k, v in BASE.items()}
    with override_settings(**{**base, "LDAP_SYNC_BIND_URI": "ldaps://dc1"}):
        assert sync_settings.configured() and sync_settings.is_set("BIND_URI")
        assert get_config().configured() and get_config().bind_uris == ["ldaps://dc1"]
    with override_settings(**{**base, "LDAP_SYNC_BIND_URI": ("ldaps://dc1", "ldaps://dc2")}):
        assert get_config().bind_uris == ["ldaps://dc1", "ldaps://dc2"]


def test_conf_and_callbacks_import_without_django_settings() -> None:
    """settings.py may import them: no configured settings, no app registry needed."""
    code = (
        "import adldap_auth.conf, adldap_auth.callbacks\n"
        "from django.conf import settings\n"
        "assert not settings.configured\n"
        "assert adldap_auth.callbacks.LEGACY_CALLBACKS\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
