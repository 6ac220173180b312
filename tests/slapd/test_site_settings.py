"""Site settings other than the lab's: ``USE_TZ = False`` and ``ATOMIC_REQUESTS = True``.

Also a URLconf (``ROOT_URLCONF = "tests.slapd.test_site_settings"``): views that log a person in
through the backend, and commit or fail, as a site's own login views do.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import CommandError, call_command
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path

from adldap_auth import signals
from adldap_auth.locking import LockHeld, run_lock
from adldap_auth.models import SyncRun
from adldap_auth.sync import SyncOptions, run_sync
from tests.backend_helpers import login_settings
from tests.helpers import slapd_settings
from tests.lab.spec import LAB_PASSWORD, DirectorySpec, GroupSpec, UserSpec

pytestmark = pytest.mark.django_db

#: What LDAP_SYNC_USER_CALLBACKS and user_synced receivers saw: (who, username, created).
SEEN: list[tuple[str, str, bool]] = []


def record_callback(user: Any, attributes: Any, created: bool, updated: bool) -> None:
    """A LDAP_SYNC_USER_CALLBACKS entry that records its calls in SEEN."""
    SEEN.append(("callback", user.get_username(), created))


def _on_user_synced(sender: Any, user: Any, created: bool, **kwargs: Any) -> None:
    SEEN.append(("user_synced", user.get_username(), created))


def _login(request: HttpRequest) -> HttpResponse:
    """Authenticate through the backends; answer with what callbacks had seen by then."""
    user = authenticate(request, username=request.POST["username"], password=LAB_PASSWORD)
    seen = len(SEEN)
    if request.POST.get("fail"):
        raise RuntimeError("the view fails after the login: its transaction rolls back")
    return HttpResponse(f"user={user.get_username() if user else None} seen={seen}")


urlpatterns = [path("login/", _login)]


@pytest.fixture
def seen() -> Any:
    SEEN.clear()
    signals.user_synced.connect(_on_user_synced)
    yield SEEN
    signals.user_synced.disconnect(_on_user_synced)
    SEEN.clear()


def spec() -> DirectorySpec:
    users = [
        UserSpec("alice", "Alice", "Archer", mail="alice@example.test", password=LAB_PASSWORD),
        UserSpec("bob", "Bob", "Baker", mail="bob@example.test"),
    ]
    return DirectorySpec(users, [GroupSpec("Team", members=["alice", "bob"])])


def settings_for(server: Any, **more: Any) -> dict[str, Any]:
    return login_settings(
        slapd_settings(server, LDAP_SYNC_USER_CALLBACKS=[f"{__name__}.record_callback"]),
        ROOT_URLCONF=__name__,
        **more,
    )


# -- USE_TZ = False ---------------------------------------------------------------------------


@override_settings(USE_TZ=False)
def test_runs_logins_and_a_refused_run_work_without_time_zones(make_slapd):
    """``timezone.localtime()`` refuses naive datetimes: "another run holds the lock" must not
    need it."""
    server = make_slapd(spec())
    with override_settings(**settings_for(server, LDAP_SYNC_INCREMENTAL_TIME_OFFSET=0)):
        full = run_sync(SyncOptions(mode="full"))
        incremental = run_sync(SyncOptions(mode="incremental"))
        user = authenticate(username="alice", password=LAB_PASSWORD)
        with run_lock():
            with pytest.raises(LockHeld) as held:
                run_sync(SyncOptions(mode="full"))
            with pytest.raises(CommandError) as refused:
                call_command("syncldap", "full", verbosity=0)
    assert full.ok and not full.problems, full.error or full.problems
    assert incremental.ok and incremental.mode == "incremental", incremental.error
    assert user is not None and {g.name for g in user.groups.all()} == {"Team"}
    record = SyncRun.objects.get(pk=full.run_id)
    assert record.started_at.tzinfo is None and record.finished_at >= record.started_at
    assert str(held.value).startswith("another sync is running since 2")
    assert refused.value.returncode == 3 and "another sync is running since 2" in str(refused.value)
    assert SyncRun.objects.count() == 2  # the refused runs recorded nothing


# -- ATOMIC_REQUESTS = True -------------------------------------------------------------------


@pytest.fixture
def atomic_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """``DATABASES["default"]["ATOMIC_REQUESTS"] = True``, read by Django at each request."""
    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)


@pytest.mark.django_db(transaction=True)  # the request's transaction must really commit
def test_callbacks_and_user_synced_fire_after_the_request_commits(make_slapd, seen, atomic_requests):
    server = make_slapd(spec())
    with override_settings(**settings_for(server, LDAP_SYNC_WRITE_BATCH_SIZE=1)):
        response = Client().post("/login/", {"username": "alice"})
        assert response.content == b"user=alice seen=0"  # nothing before the commit...
        assert seen == [("callback", "alice", True), ("user_synced", "alice", True)]  # ...then
        assert get_user_model().objects.filter(username="alice").exists()
        # A batch run has no transaction around it: each committed batch is notified at once.
        seen.clear()
        assert run_sync(SyncOptions(mode="full")).ok
    assert seen == [("callback", "bob", True), ("user_synced", "bob", True)]


@pytest.mark.django_db(transaction=True)
def test_no_callback_or_user_synced_for_a_login_the_request_rolls_back(
    make_slapd, seen, atomic_requests
):
    server = make_slapd(spec())
    with override_settings(**settings_for(server)):
        response = Client(raise_request_exception=False).post(
            "/login/", {"username": "alice", "fail": "1"}
        )
    assert response.status_code == 500
    assert not get_user_model().objects.filter(username="alice").exists()
    assert seen == []
