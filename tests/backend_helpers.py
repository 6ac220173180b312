"""Helpers of the login backend tests (``tests/*/test_backend*.py``).

Also a URLconf (``ROOT_URLCONF = "tests.backend_helpers"``): the admin site and Django's login
view, so tests log in through real views with the test client. :class:`LabDirectory` gives the
tests shared by the lab servers (slapd, Samba AD) one interface to either.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import ldap.dn
import ldap.filter
import ldap.ldapobject
import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.views import LoginView
from django.http import HttpResponse
from django.urls import path

from adldap_auth.backends import ADLDAPBackend
from adldap_auth.login import clear_group_cache
from adldap_auth.sync import SyncOptions, run_sync
from tests.helpers import django_state, samba_settings, slapd_settings
from tests.lab import ldif
from tests.lab.samba import LAB_DN, encode_password
from tests.lab.spec import DirectorySpec, company

BACKEND = "adldap_auth.backends.ADLDAPBackend"
#: The backend first, ModelBackend for local accounts: what the README recommends.
BACKENDS = [BACKEND, "django.contrib.auth.backends.ModelBackend"]


def _home(request) -> HttpResponse:
    return HttpResponse(f"user={request.user.get_username()}")


urlpatterns = [
    path("admin/", admin.site.urls),
    path("login/", LoginView.as_view(template_name="admin/login.html"), name="login"),
    path("home/", _home, name="home"),
]


def login_settings(sync: dict[str, Any], **more: Any) -> dict[str, Any]:
    """``LDAP_SYNC_*`` settings plus the backends and this URLconf."""
    return {
        **sync,
        "AUTHENTICATION_BACKENDS": BACKENDS,
        "ROOT_URLCONF": "tests.backend_helpers",
        "LOGIN_REDIRECT_URL": "/home/",
        **more,
    }


class BindSpy:
    """Records the DNs python-ldap really binds with (wraps ``SimpleLDAPObject.simple_bind``,
    which ``simple_bind_s`` calls). Passwords are not recorded."""

    def __init__(self) -> None:
        self.who: list[str] = []

    @contextlib.contextmanager
    def active(self) -> Iterator[BindSpy]:
        original = ldap.ldapobject.SimpleLDAPObject.simple_bind
        spy = self

        def simple_bind(obj, who=None, cred=None, *args, **kwargs):
            spy.who.append(who)
            return original(obj, who, cred, *args, **kwargs)

        ldap.ldapobject.SimpleLDAPObject.simple_bind = simple_bind
        try:
            yield self
        finally:
            ldap.ldapobject.SimpleLDAPObject.simple_bind = original


def dead_uri() -> str:
    """An ldap:// URI on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"ldap://127.0.0.1:{port}"


def wipe_django() -> None:
    """Forget every user and group (identity links and profiles go with them)."""
    get_user_model().objects.all().delete()
    Group.objects.all().delete()
    clear_group_cache()


def login_path_state(keys_and_passwords: dict[str, str | None]) -> dict[str, dict[str, Any]]:
    """Django state after each user went through the login path, on an empty database.

    Users with a password log in with ``authenticate()``; the others are populated by
    ``ADLDAPBackend.populate_user`` (django-auth-ldap's API: the same hooks, without a bind).
    """
    from django.contrib.auth import authenticate

    wipe_django()
    backend = ADLDAPBackend()
    for key, password in keys_and_passwords.items():
        if password:
            authenticate(username=key, password=password)
        else:
            backend.populate_user(key)
    return django_state()


def batch_state() -> dict[str, dict[str, Any]]:
    """Django state after ``syncldap full`` on an empty database."""
    wipe_django()
    result = run_sync(SyncOptions(mode="full"))
    assert result.ok, result.error
    return django_state()


def assert_no_secret_logged(caplog: Any, *secrets: str) -> None:
    """No log record (message or arguments) contains one of ``secrets``."""
    for record in caplog.records:
        text = record.getMessage() + repr(record.args) + repr(record.exc_info)
        for secret in secrets:
            assert secret not in text, record


def debug_logging(caplog: Any) -> None:
    """Capture every logger at DEBUG (django-auth-ldap's and ours)."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="django_auth_ldap")
    caplog.set_level(logging.DEBUG, logger="adldap_auth")


# -- one interface to the lab servers ------------------------------------------------------

#: AD's LDAP_MATCHING_RULE_IN_CHAIN (kept here: expectations must not come from the code under
#: test).
IN_CHAIN = "1.2.840.113556.1.4.1941"

#: ``params`` of the fixtures that give a :class:`LabDirectory`. The DC is requested at run
#: time, so ``fixtures_samba`` cannot mark these tests: the Samba param carries the marker.
DIRECTORY_PARAMS = ["slapd", pytest.param("samba", marks=pytest.mark.samba)]


class LabDirectory:
    """A lab server as the shared login tests see it: settings, names, and the changes they
    make (on a server of the test's own only: see :func:`open_directory`)."""

    kind: str
    #: Where the user search starts, and the objectClass filter of the group scope.
    user_base: str
    group_filter: str

    def __init__(self, server: Any) -> None:
        self.server = server

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.server!r}>"

    @property
    def spec(self) -> DirectorySpec:
        return self.server.spec

    @property
    def uri(self) -> str:
        return self.server.uri

    @property
    def base_dn(self) -> str:
        return self.server.base_dn

    @property
    def reader_dn(self) -> str:
        return self.server.reader_dn

    @property
    def reader_password(self) -> str:
        return self.server.reader_password

    @property
    def admin_password(self) -> str:
        """The password of the directory's own administrator (rootdn, AD Administrator)."""
        raise NotImplementedError

    def user_dn(self, key: str) -> str:
        return self.server.user_dn(key)

    def group_dn(self, name: str) -> str:
        return self.server.group_dn(name)

    def sync_settings(self, tls: str = "none", **overrides: Any) -> dict[str, Any]:
        """``LDAP_SYNC_*`` for this server, with the Employee profile; ``tls`` is "none",
        "starttls" or "ldaps" (verified with the lab CA)."""
        raise NotImplementedError

    def login_settings(self, tls: str = "none", **more: Any) -> dict[str, Any]:
        """:meth:`sync_settings` plus the backends; ``LDAP_SYNC_*`` in ``more`` override the
        sync settings, other names are added as they are."""
        sync = {k: v for k, v in more.items() if k.startswith("LDAP_SYNC_")}
        other = {k: v for k, v in more.items() if not k.startswith("LDAP_SYNC_")}
        return login_settings(self.sync_settings(tls, **sync), **other)

    def builtin_groups(self) -> set[str]:
        """Groups every user is in besides the spec's (AD: Domain Users and those above it)."""
        return set()

    def group_filter_without(self, name: str) -> str:
        """The group scope's filter, leaving out the group ``name``."""
        return f"(&{self.group_filter}(!(cn={ldap.filter.escape_filter_chars(name)})))"

    def found_dns(self, base: str, filterstr: str) -> list[str | None]:
        """What a subtree search as the reader finds: entry DNs (None for a referral)."""
        found = self.server.reader_connection().search_s(
            base, ldap.SCOPE_SUBTREE, filterstr, ["cn"]
        )
        return [dn for dn, _attrs in found]

    def rename_user(self, key: str, new_key: str) -> str:
        """Give the user ``key`` the login name ``new_key``; returns the entry's DN then."""
        raise NotImplementedError

    def set_enabled(self, key: str, enabled: bool) -> None:
        """Enable or disable the account (userAccountControl 512 or 514, on both servers)."""
        value = str(ldif.UAC_ENABLED if enabled else ldif.UAC_DISABLED).encode()
        conn = self.server.admin_connection()
        conn.modify_s(self.user_dn(key), [(ldap.MOD_REPLACE, "userAccountControl", [value])])

    def set_password(self, key: str, password: str) -> None:
        raise NotImplementedError


class SlapdDirectory(LabDirectory):
    """A :class:`tests.lab.slapd.LabSlapd` (users under ou=People, uid the login name)."""

    kind = "slapd"
    user_base = ldif.PEOPLE_DN
    group_filter = "(objectClass=groupOfNames)"

    @property
    def admin_password(self) -> str:
        return self.server.root_password

    def sync_settings(self, tls: str = "none", **overrides: Any) -> dict[str, Any]:
        return slapd_settings(self.server, **(self.server.sync_settings(tls) | overrides))

    def rename_user(self, key: str, new_key: str) -> str:
        old_dn = self.user_dn(key)
        rdn = f"uid={ldap.dn.escape_dn_chars(new_key)}"
        self.server.admin_connection().rename_s(old_dn, rdn, delold=1)
        return f"{rdn},{old_dn.split(',', 1)[1]}"

    def set_password(self, key: str, password: str) -> None:
        conn = self.server.admin_connection()
        hashed = ldif.ssha(password, key)
        conn.modify_s(self.user_dn(key), [(ldap.MOD_REPLACE, "userPassword", [hashed])])


class SambaDirectory(LabDirectory):
    """A :class:`tests.lab.samba.SambaDC` (users under OU=Lab, sAMAccountName the login)."""

    kind = "samba"
    user_base = LAB_DN
    group_filter = "(objectClass=group)"

    @property
    def admin_password(self) -> str:
        return self.server.admin_password

    def sync_settings(self, tls: str = "none", **overrides: Any) -> dict[str, Any]:
        values = samba_settings(self.server)
        if tls != "none":
            values["LDAP_SYNC_CA_FILE"] = str(self.server.ca_file)
            if tls == "ldaps":
                values["LDAP_SYNC_BIND_URI"] = self.server.ldaps_uri
            else:
                values["LDAP_SYNC_START_TLS"] = True
        values.update(overrides)
        return values

    def builtin_groups(self) -> set[str]:
        domain_users = f"CN=Domain Users,CN=Users,{self.base_dn}"
        escaped = ldap.filter.escape_filter_chars(domain_users)
        found = self.server.reader_connection().search_s(
            self.base_dn,
            ldap.SCOPE_SUBTREE,
            f"(&(objectClass=group)(member:{IN_CHAIN}:={escaped}))",
            ["cn"],
        )
        return {"Domain Users"} | {attrs["cn"][0].decode() for dn, attrs in found if dn}

    def found_dns(self, base: str, filterstr: str) -> list[str | None]:
        # AD answers a search of the domain with continuation references to its partitions.
        return [dn for dn in super().found_dns(base, filterstr) if dn]

    def rename_user(self, key: str, new_key: str) -> str:
        dn = self.user_dn(key)  # AD's DN is built on the cn, which stays
        conn = self.server.admin_connection()
        conn.modify_s(dn, [(ldap.MOD_REPLACE, "sAMAccountName", [new_key.encode()])])
        return dn

    def set_password(self, key: str, password: str) -> None:
        conn = self.server.admin_connection()
        value = encode_password(password)
        conn.modify_s(self.user_dn(key), [(ldap.MOD_REPLACE, "unicodePwd", [value])])


def open_directory(request: pytest.FixtureRequest, kind: str, *, own: bool) -> LabDirectory:
    """The lab company on ``kind`` ("slapd", "samba"): the session's shared server (tests
    read and bind only), or with ``own`` one the test may change (a new slapd; the DC reset
    to its template after the test)."""
    if kind == "slapd":
        if own:
            return SlapdDirectory(request.getfixturevalue("make_slapd")(company()))
        return SlapdDirectory(request.getfixturevalue("slapd_lab"))
    if kind == "samba":
        return SambaDirectory(request.getfixturevalue("samba_clean" if own else "samba_dc"))
    raise ValueError(f"no lab directory {kind!r}")
