"""Security (issue 14, finding 3): no session outlives its account.

A user logs in through the real login view with ``ADLDAPBackend`` against a lab slapd, then the
directory deletes or disables the entry and ``syncldap full`` runs: the next request to a
``login_required`` view is anonymous, with every session engine, and the removed user's
sessions are gone from the database or the cache (:mod:`adldap_auth.sessions`). Another user's
session is untouched. ``authenticate()`` and ``get_user()`` refuse inactive users, as Django's
``ModelBackend`` does.

This module is also the URLconf of its tests (``ROOT_URLCONF = __name__``).
"""

from __future__ import annotations

import dataclasses
from importlib import import_module

import pytest
from django.conf import settings as django_settings
from django.contrib import admin
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView
from django.contrib.sessions.backends.base import SessionBase
from django.core.cache import cache
from django.http import HttpResponse
from django.test import Client, override_settings
from django.urls import path

from adldap_auth.backends import ADLDAPBackend
from adldap_auth.login import clear_group_cache
from adldap_auth.models import DirectoryUser
from adldap_auth.sync import SyncOptions, run_sync
from tests.backend_helpers import login_settings
from tests.helpers import slapd_settings
from tests.lab.spec import LAB_PASSWORD, DirectorySpec, UserSpec

pytestmark = pytest.mark.django_db

User = get_user_model()


@login_required
def _private(request) -> HttpResponse:
    return HttpResponse(f"user={request.user.get_username()}")


urlpatterns = [
    path("admin/", admin.site.urls),  # the login template links to it
    path("login/", LoginView.as_view(template_name="admin/login.html"), name="login"),
    path("private/", _private),
]

#: Engines that keep sessions on the server; signed cookies keep none.
SERVER_SIDE = [
    "django.contrib.sessions.backends.db",
    "django.contrib.sessions.backends.cached_db",
    "django.contrib.sessions.backends.cache",
]
ENGINES = [*SERVER_SIDE, "django.contrib.sessions.backends.signed_cookies"]


def people() -> DirectorySpec:
    users = [
        UserSpec(key, key.title(), "Lab", mail=f"{key}@example.test", password=LAB_PASSWORD)
        for key in ("alice", "bob", "carol")
    ]
    return DirectorySpec(users, [])


def without(spec: DirectorySpec, *keys: str) -> DirectorySpec:
    return DirectorySpec([u for u in spec.users if u.key not in keys], spec.groups)


def disabled(spec: DirectorySpec, key: str) -> DirectorySpec:
    users = [dataclasses.replace(u, disabled=True) if u.key == key else u for u in spec.users]
    return DirectorySpec(users, spec.groups)


@pytest.fixture(autouse=True)
def _clean_caches():
    cache.clear()
    clear_group_cache()
    yield
    cache.clear()
    clear_group_cache()


def site(server, engine: str = SERVER_SIDE[0], **more) -> dict:
    sync = slapd_settings(server, **more)
    return login_settings(sync, ROOT_URLCONF=__name__, SESSION_ENGINE=engine, LOGIN_URL="/login/")


def logged_in(username: str) -> Client:
    """A client logged in through the login view and the directory, checked on /private/."""
    client = Client()
    response = client.post("/login/", {"username": username, "password": LAB_PASSWORD})
    assert response.status_code == 302, response.content[:300]
    assert client.get("/private/").content == f"user={username}".encode()
    return client


def is_anonymous(client: Client) -> bool:
    response = client.get("/private/")
    return response.status_code == 302 and response["Location"].startswith("/login/")


def session_exists(client: Client) -> bool:
    store = import_module(django_settings.SESSION_ENGINE).SessionStore()
    key = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    return store.exists(key)


def full_run(**options) -> None:
    result = run_sync(SyncOptions(mode="full", force_removals=True, **options))
    assert result.ok, result.error


@pytest.mark.parametrize("engine", ENGINES)
def test_a_deleted_entry_makes_the_next_request_anonymous(make_slapd, engine):
    spec = people()
    server = make_slapd(spec)
    with override_settings(**site(server, engine)):
        alice, bob = logged_in("alice"), logged_in("bob")
        server.apply(spec, without(spec, "alice"))
        full_run(dry_run=True)  # plans the removal, ends nothing
        assert alice.get("/private/").status_code == 200
        full_run()
        assert is_anonymous(alice)
        assert bob.get("/private/").content == b"user=bob"
        if engine in SERVER_SIDE:
            assert not session_exists(alice) and session_exists(bob)
        # Logging in again is refused: the entry is gone.
        response = alice.post("/login/", {"username": "alice", "password": LAB_PASSWORD})
        assert response.status_code == 200 and is_anonymous(alice)


@pytest.mark.parametrize(
    "callback", ["adldap_auth.callbacks.removed_user_deactivate", "adldap_auth.callbacks.removed_user_delete"]
)
@pytest.mark.parametrize("engine", SERVER_SIDE)
def test_a_disabled_account_loses_its_sessions_whatever_the_callback(make_slapd, engine, callback):
    spec = people()
    server = make_slapd(spec)
    with override_settings(**site(server, engine, LDAP_SYNC_REMOVED_USER_CALLBACKS=[callback])):
        alice, bob = logged_in("alice"), logged_in("bob")
        alice_pk = User.objects.get(username="alice").pk
        server.apply(spec, disabled(spec, "alice"))
        full_run()
        if callback.endswith("delete"):
            assert not User.objects.filter(pk=alice_pk).exists()
        else:
            assert not User.objects.get(pk=alice_pk).is_active
        assert not session_exists(alice) and is_anonymous(alice)
        assert session_exists(bob) and bob.get("/private/").status_code == 200


@pytest.mark.parametrize("engine", SERVER_SIDE)
def test_sessions_end_even_when_the_removal_callbacks_leave_the_user_active(make_slapd, engine):
    """With no removal callback, the user stays active: only ending the session helps."""
    spec = people()
    server = make_slapd(spec)
    with override_settings(**site(server, engine, LDAP_SYNC_REMOVED_USER_CALLBACKS=[])):
        alice, bob = logged_in("alice"), logged_in("bob")
        second_alice = logged_in("alice")  # a second browser
        server.apply(spec, without(spec, "alice"))
        full_run()
        assert User.objects.get(username="alice").is_active
        assert DirectoryUser.objects.get(user__username="alice").removed_at is not None
        for client in (alice, second_alice):
            assert not session_exists(client) and is_anonymous(client)
        assert bob.get("/private/").content == b"user=bob"


def test_one_pass_over_the_session_table_per_removal_step_not_one_per_user(
    make_slapd, monkeypatch
):
    """Two users removed in one step: each of the 4 stored sessions is decoded once."""
    decoded = []
    original = SessionBase.decode

    def decode(self, session_data):
        decoded.append(session_data)
        return original(self, session_data)

    spec = people()
    server = make_slapd(spec)
    with override_settings(**site(server, LDAP_SYNC_REMOVED_USER_CALLBACKS=[])):
        clients = [logged_in("alice"), logged_in("bob"), logged_in("alice")]
        carol = logged_in("carol")
        server.apply(spec, without(spec, "alice", "bob"))
        monkeypatch.setattr(SessionBase, "decode", decode)
        full_run()
        monkeypatch.undo()
        assert not any(session_exists(c) for c in clients) and session_exists(carol)
    assert len(decoded) == 4


def test_an_inactive_user_neither_logs_in_nor_keeps_a_session(make_slapd):
    """A user deactivated in Django (by an administrator, not by the sync) stays out: the
    directory login does not reactivate them, and their session ends at the next request."""
    server = make_slapd(people())
    with override_settings(**site(server)):
        alice = logged_in("alice")
        user = User.objects.get(username="alice")
        User.objects.filter(pk=user.pk).update(is_active=False)
        assert is_anonymous(alice)
        assert authenticate(username="alice", password=LAB_PASSWORD) is None
        assert ADLDAPBackend().authenticate(None, username="alice", password=LAB_PASSWORD) is None
        assert ADLDAPBackend().get_user(user.pk) is None
        User.objects.filter(pk=user.pk).update(is_active=True)
        assert ADLDAPBackend().get_user(user.pk) == user


def test_get_user_refuses_inactive_users_without_ldap_sync_settings_too():
    """Configured by ``AUTH_LDAP_*`` alone the class is django-auth-ldap's, but for this."""
    user = User.objects.create_user("dana", is_active=False)
    assert ADLDAPBackend().get_user(user.pk) is None
    User.objects.filter(pk=user.pk).update(is_active=True)
    assert ADLDAPBackend().get_user(user.pk) == user
