"""Helpers of the login backend tests (``tests/test_backend_*.py``).

Also a URLconf (``ROOT_URLCONF = "tests.backend_helpers"``): the admin site and Django's login
view, so tests log in through real views with the test client.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import ldap.ldapobject
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.views import LoginView
from django.http import HttpResponse
from django.urls import path

from adldap_auth.backends import ADLDAPBackend
from adldap_auth.login import clear_group_cache
from adldap_auth.sync import SyncOptions, run_sync
from tests.helpers import django_state

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
