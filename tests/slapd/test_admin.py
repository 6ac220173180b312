"""Admin pages, opened with Django's test client as a staff user: run history, the user page
with its directory identity, and the "sync these users now" action against a real slapd."""

from __future__ import annotations

import dataclasses
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from adldap_auth.models import DirectoryUser, SyncMarker, SyncRun
from adldap_auth.sync import SyncOptions, run_sync
from tests.helpers import slapd_settings
from tests.lab.spec import DirectorySpec, GroupSpec, UserSpec

pytestmark = pytest.mark.django_db

User = get_user_model()


@pytest.fixture(autouse=True)
def admin_urls(settings):
    settings.ROOT_URLCONF = "tests.urls"


def staff_client(client, *codenames: str):
    """A client logged in as a staff user with only the given permissions."""
    user = User.objects.create_user("operator", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client.force_login(user)
    return client


@pytest.fixture
def runs():
    now = timezone.now()
    ok = SyncRun.objects.create(
        mode="full", server="ldap://dc1.example.test", status="success",
        started_at=now - timedelta(hours=2), finished_at=now - timedelta(hours=2, seconds=-95),
        counts={"users_created": 12, "users_updated": 3, "groups_created": 4,
                "memberships_added": 30, "errors": 0},
        ldap_searches=9,
    )  # fmt: skip
    failed = SyncRun.objects.create(
        mode="incremental", server="ldap://dc2.example.test", status="failed",
        started_at=now - timedelta(hours=1), finished_at=now - timedelta(hours=1),
        error="no directory server answered: ldap://dc2.example.test: Can't contact LDAP server",
        counts={"errors": 250},
        problems=[f"user uid=u{i},ou=People skipped: <bad> & odd" for i in range(200)],
    )  # fmt: skip
    return ok, failed


def test_run_list_shows_mode_server_status_duration_counts_and_filters(client, runs):
    ok, failed = runs
    client = staff_client(client, "view_syncrun")
    page = client.get("/admin/adldap_auth/syncrun/")
    assert page.status_code == 200
    html = page.content.decode()
    for text in ("ldap://dc1.example.test", "ldap://dc2.example.test", "incremental", "0:01:35",
                 "12 / 3 / 0", "4 / 0 / 0", "30 / 0", ">250<"):  # fmt: skip
        assert text in html, text
    assert "Add sync run" not in html
    failed_only = client.get("/admin/adldap_auth/syncrun/", {"status__exact": "failed"})
    assert list(failed_only.context["cl"].result_list) == [failed]
    full_only = client.get("/admin/adldap_auth/syncrun/", {"mode__exact": "full"})
    assert list(full_only.context["cl"].result_list) == [ok]


def test_run_detail_shows_the_error_and_a_bounded_list_of_problems(client, runs):
    _ok, failed = runs
    client = staff_client(client, "view_syncrun")
    page = client.get(f"/admin/adldap_auth/syncrun/{failed.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "no directory server answered: ldap://dc2.example.test" in html
    assert html.count("<li>user uid=u") == 200
    assert "&lt;bad&gt; &amp; odd" in html  # escaped
    assert "200 of 250 kept with the run" in html
    assert 'name="_save"' not in html  # read-only


def test_runs_and_markers_cannot_be_added_changed_or_deleted(client, runs):
    ok, _failed = runs
    SyncMarker.objects.create(server="ldap://dc1.example.test", highest_usn=1234)
    client.force_login(User.objects.create_superuser("root", password="pw"))
    assert client.get("/admin/adldap_auth/syncrun/add/").status_code == 403
    assert client.post(f"/admin/adldap_auth/syncrun/{ok.pk}/delete/").status_code == 403
    assert client.post(f"/admin/adldap_auth/syncrun/{ok.pk}/change/", {}).status_code == 403
    markers = client.get("/admin/adldap_auth/syncmarker/")
    assert markers.status_code == 200 and "1234" in markers.content.decode()
    assert SyncRun.objects.filter(pk=ok.pk).exists()


def test_markers_are_named_as_the_documentation_names_them(client):
    client.force_login(User.objects.create_superuser("root", password="pw"))
    html = client.get("/admin/").content.decode()
    assert "Incremental markers" in html and "Sync markers" not in html
    operations = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    assert "**Incremental markers**" in operations


def test_migrations_match_the_models():
    """A Meta change (verbose names included) without its migration fails here."""
    call_command("makemigrations", "adldap_auth", "--check", "--dry-run", verbosity=0)


def test_user_page_shows_the_directory_identity(client):
    person = User.objects.create_user("alice")
    seen = timezone.now()
    DirectoryUser.objects.create(
        user=person, guid="4c3e6f4a-0000-4000-8000-00000000000a",
        dn="uid=alice,ou=Engineering,ou=People,dc=example,dc=test",
        server="ldap://dc1.example.test:389", last_changed=seen,
    )  # fmt: skip
    client = staff_client(client, "view_user", "change_user")
    page = client.get(f"/admin/auth/user/{person.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Directory identity" in html
    assert "4c3e6f4a-0000-4000-8000-00000000000a" in html
    assert "uid=alice,ou=Engineering,ou=People,dc=example,dc=test" in html
    assert "ldap://dc1.example.test:389" in html
    # A local user has no identity; its page still opens, and saving it keeps working.
    local = User.objects.create_user("local")
    assert client.get(f"/admin/auth/user/{local.pk}/change/").status_code == 200
    changelist = client.get("/admin/auth/user/")
    assert "sync_users_now" in changelist.content.decode()


def small_company() -> DirectorySpec:
    users = [
        UserSpec("ann", "Ann", "Alder", mail="ann@example.test"),
        UserSpec("ben", "Ben", "Birch", mail="ben@example.test"),
        UserSpec("cid", "Cid", "Cedar", mail="cid@example.test"),
    ]
    groups = [
        GroupSpec("Team", members=["ann", "ben"]),
        GroupSpec("Company", members=["group:Team", "cid"]),
    ]
    return DirectorySpec(users=users, groups=groups)


def test_sync_these_users_now_rereads_them_from_the_directory(client, make_slapd):
    server = make_slapd(spec=small_company())
    with override_settings(**slapd_settings(server)):
        assert run_sync(SyncOptions(mode="full")).ok
        old = server.spec
        ann = dataclasses.replace(old.user("ann"), sn="Alder-Smith", ou="Sales")  # renamed, moved
        ben = dataclasses.replace(old.user("ben"), disabled=True)
        new = DirectorySpec(
            users=[ann, ben],  # cid is deleted
            groups=[GroupSpec("Team", members=["ben"]),
                    GroupSpec("Company", members=["group:Team", "ann"])],
        )  # fmt: skip
        server.apply(old, new)
        User.objects.create_user("local", last_name="Unchanged")
        client = staff_client(client, "view_user", "change_user")
        selected = User.objects.filter(username__in=["ann", "ben", "cid", "local"])
        response = client.post(
            "/admin/auth/user/",
            {"action": "sync_users_now", "_selected_action": [u.pk for u in selected]},
            follow=True,
        )
    assert response.status_code == 200
    message = " ".join(str(m) for m in response.context["messages"])
    assert "2 synced from the directory" in message
    assert "1 disabled in the directory, removal rules applied: ben" in message
    assert "1 not found in the directory scope" in message and "cid" in message
    assert "1 not from the directory, left alone: local" in message
    ann_user = User.objects.get(username="ann")
    assert ann_user.last_name == "Alder-Smith"
    assert set(ann_user.groups.values_list("name", flat=True)) == {"Company"}
    assert ",ou=Sales," in DirectoryUser.objects.get(user=ann_user).dn
    ben_user = User.objects.get(username="ben")
    assert not ben_user.is_active
    assert DirectoryUser.objects.get(user=ben_user).removal_reason == "disabled"
    assert User.objects.get(username="cid").is_active  # removals wait for a full run
    assert User.objects.get(username="local").last_name == "Unchanged"
    assert SyncRun.objects.count() == 1  # only the first full run


def test_sync_these_users_now_needs_the_change_permission(client):
    client = staff_client(client, "view_user")
    page = client.get("/admin/auth/user/")
    assert page.status_code == 200
    assert "sync_users_now" not in page.content.decode()


def test_sync_users_now_finds_active_directory_users_by_object_guid(samba_dc):
    from adldap_auth.resync import sync_users_now
    from tests.helpers import samba_settings

    with override_settings(**samba_settings(samba_dc)):
        assert run_sync(SyncOptions(mode="full")).ok
        alice = User.objects.get(username="alice")
        groups = set(alice.groups.values_list("name", flat=True))
        assert {"Rocket Team", "Everyone"} <= groups
        alice.first_name = "Changed"
        alice.save()
        alice.groups.clear()
        result = sync_users_now(User.objects.filter(username__in=["alice", "carol"]))
    assert sorted(result.synced) == ["alice", "carol"] and result.ok, result.message()
    alice.refresh_from_db()
    assert alice.first_name == "Alice"
    assert set(alice.groups.values_list("name", flat=True)) == groups


def test_stock_user_admin_is_registered_again_with_the_mixin():
    from django.contrib import admin
    from django.contrib.auth.admin import UserAdmin

    from adldap_auth.admin import DirectoryUserAdmin, DirectoryUserAdminMixin, extend_user_admin

    assert type(admin.site.get_model_admin(User)) is DirectoryUserAdmin
    site = admin.AdminSite(name="stock")
    site.register(User, UserAdmin)
    assert extend_user_admin(site)
    assert isinstance(site.get_model_admin(User), DirectoryUserAdminMixin)
    assert isinstance(site.get_model_admin(User), UserAdmin)
    assert extend_user_admin(site)  # once


def test_a_sites_own_user_admin_is_never_replaced():
    from django.contrib import admin
    from django.contrib.auth.admin import UserAdmin

    from adldap_auth.admin import extend_user_admin

    class SiteUserAdmin(UserAdmin):
        pass

    site = admin.AdminSite(name="own")
    assert not extend_user_admin(site)  # nothing registered
    site.register(User, SiteUserAdmin)
    assert not extend_user_admin(site)
    assert type(site.get_model_admin(User)) is SiteUserAdmin


def test_the_mixin_on_a_sites_own_admin_keeps_its_inlines_and_actions(rf):
    from django.contrib import admin
    from django.contrib.auth.admin import UserAdmin

    from adldap_auth.admin import DirectoryIdentityInline, DirectoryUserAdminMixin

    @admin.action(description="Site action")
    def site_action(modeladmin, request, queryset):
        pass

    class GroupsInline(admin.TabularInline):
        model = User.groups.through

    class SiteUserAdmin(DirectoryUserAdminMixin, UserAdmin):
        inlines = [GroupsInline]
        actions = [site_action]

    site = admin.AdminSite(name="own")
    site.register(User, SiteUserAdmin)
    request = rf.get("/")
    request.user = User.objects.create_superuser("root", password="pw")
    model_admin = site.get_model_admin(User)
    assert model_admin.get_inlines(request, None) == [GroupsInline, DirectoryIdentityInline]
    assert {"site_action", "sync_users_now"} <= set(model_admin.get_actions(request))

    class NoActionsUserAdmin(DirectoryUserAdminMixin, UserAdmin):
        actions = None  # disabled by the site: stays so

    site.unregister(User)
    site.register(User, NoActionsUserAdmin)
    assert site.get_model_admin(User).get_actions(request) == {}


def test_user_admin_pages_raise_no_deprecation_warning(client):
    """The mixin keeps to ModelAdmin API that every supported Django version has unchanged
    (an override of ``get_actions()`` is deprecated since Django 6.1)."""
    client.force_login(User.objects.create_superuser("root", password="pw"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        warnings.simplefilter("error", PendingDeprecationWarning)
        changelist = client.get("/admin/auth/user/")
        change = client.get(f"/admin/auth/user/{User.objects.get().pk}/change/")
    assert changelist.status_code == change.status_code == 200
    assert "sync_users_now" in changelist.content.decode()
