"""Batch sync and login with the user models sites have, against a real slapd.

``AUTH_USER_MODEL`` is fixed for a test process, so each model runs in a pytest run of its own:

- ``auth.User``, Django's: the suite's settings, so every pass of ``make test``;
- ``customuser.Person``, an ``AbstractUser`` subclass with a ``title`` field mapped from the
  directory (its user-groups table is ``customuser_person_groups``, column ``person_id``):
  ``pytest --ds tests.settings_person tests/slapd/test_custom_user_models.py``;
- ``emailuser.EmailUser``, ``AbstractBaseUser`` + ``PermissionsMixin`` with
  ``USERNAME_FIELD = "email"`` and no username, first or last name:
  ``pytest --ds tests.settings_email_user tests/slapd/test_custom_user_models.py``.

``make test-user-models`` runs the two custom models (and every database pass runs them too).
The tests common to all models run in each; those about one model are skipped in the others,
with the command that runs them as the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import Group
from django.core import checks
from django.test import override_settings

from adldap_auth import checks as adchecks
from adldap_auth.models import DirectoryUser
from adldap_auth.sync import SyncOptions, run_sync
from tests.backend_helpers import login_settings
from tests.helpers import count_writes, slapd_settings
from tests.lab.spec import LAB_PASSWORD, DirectorySpec, GroupSpec, UserSpec

pytestmark = pytest.mark.django_db


@dataclass(frozen=True)
class Variant:
    """One user model: how the directory maps to it, and what a synced user looks like."""

    model: str  # AUTH_USER_MODEL
    settings_module: str  # the --ds that installs it
    attributes: dict[str, str]  # LDAP_SYNC_USER_ATTRIBUTES
    fields: Callable[[UserSpec], dict[str, Any]]  # the user's mapped fields, by the spec


AUTH_USER = Variant(
    "auth.User",
    "tests.settings",
    {"uid": "username", "givenName": "first_name", "sn": "last_name", "mail": "email"},
    lambda u: {"username": u.key, "first_name": u.given_name, "last_name": u.sn, "email": u.mail},
)
PERSON = Variant(
    "customuser.Person",
    "tests.settings_person",
    {**AUTH_USER.attributes, "title": "title"},
    lambda u: {**AUTH_USER.fields(u), "title": u.title or ""},
)
EMAIL_USER = Variant(
    "emailuser.EmailUser",
    "tests.settings_email_user",
    {"mail": "email", "cn": "display_name"},
    lambda u: {"email": u.mail, "display_name": u.common_name},
)
VARIANTS = {v.model: v for v in (AUTH_USER, PERSON, EMAIL_USER)}
#: The model of this test process.
V = VARIANTS[settings.AUTH_USER_MODEL]


def only(variant: Variant) -> pytest.MarkDecorator:
    """Skip unless this process runs with ``variant``'s user model."""
    target = "every pass of make test" if variant is AUTH_USER else "make test-user-models"
    return pytest.mark.skipif(
        V is not variant,
        reason=f"needs AUTH_USER_MODEL = {variant.model!r}, this run has {V.model!r}: "
        f"pytest --ds {variant.settings_module} tests/slapd/test_custom_user_models.py ({target})",
    )


def lab_spec() -> DirectorySpec:
    """Twelve people (three with a password) in nested groups; ``Project`` holds one."""
    users = [
        UserSpec("alice", "Alice", "Archer", mail="alice@example.test", password=LAB_PASSWORD,
                 title="Engineer", department="R&D"),
        UserSpec("bob", "Bob", "Baker", mail="bob@example.test", password=LAB_PASSWORD,
                 title="Manager"),
        UserSpec("carol", "Carol", "Cooper", mail="carol@example.test", password=LAB_PASSWORD),
    ] + [
        UserSpec(f"user{n:02}", f"User{n:02}", "Staff", mail=f"user{n:02}@example.test")
        for n in range(9)
    ]  # fmt: skip
    groups = [
        GroupSpec("Team", members=["alice"]),
        GroupSpec("Dept", members=["group:Team", "bob"]),
        GroupSpec("Company", members=["group:Dept", "carol", *(u.key for u in users[3:])]),
        GroupSpec("Project", members=["alice"]),
    ]
    return DirectorySpec(users, groups)


def sync_settings_for(server: Any, **more: Any) -> dict[str, Any]:
    """The lab's settings with this model's attribute map, the login backend, no threshold."""
    values = slapd_settings(
        server,
        LDAP_SYNC_USER_ATTRIBUTES=V.attributes,
        LDAP_SYNC_REMOVAL_THRESHOLD=None,
        LDAP_SYNC_INCREMENTAL_TIME_OFFSET=0,
        LDAP_SYNC_INCREMENTAL_BETWEEN_FULL=-1,
        **more,
    )
    return login_settings(values)


def login_name(user: UserSpec) -> str:
    """What the person types at login: the value of the attribute mapped to the username."""
    return user.mail if V is EMAIL_USER else user.key


def state() -> dict[str, dict[str, Any]]:
    """Every synced user by username: mapped fields, is_active, group names."""
    users = get_user_model().objects.prefetch_related("groups")
    return {
        user.get_username(): {
            **{name: getattr(user, name) for name in set(V.attributes.values())},
            "is_active": user.is_active,
            "groups": {group.name for group in user.groups.all()},
        }
        for user in users.filter(directory_link__isnull=False)
    }


def expected(spec: DirectorySpec) -> dict[str, dict[str, Any]]:
    closure = spec.expected_groups()
    return {
        login_name(user): {**V.fields(user), "is_active": True, "groups": closure[user.key]}
        for user in spec.users
        if not user.disabled
    }


def without(spec: DirectorySpec, group: str, member: str) -> DirectorySpec:
    groups = [
        GroupSpec(g.name, g.ou, [m for m in g.members if g.name != group or m != member])
        for g in spec.groups
    ]
    return DirectorySpec(list(spec.users), groups)


# -- every model ------------------------------------------------------------------------------


def test_full_sync_writes_fields_and_recursive_memberships_then_nothing(make_slapd):
    server = make_slapd(lab_spec())
    with override_settings(**sync_settings_for(server)):
        result = run_sync(SyncOptions(mode="full"))
        assert result.ok and not result.problems, result.error or result.problems
        assert state() == expected(server.spec)
        with count_writes() as writes:
            again = run_sync(SyncOptions(mode="full"))
    assert again.ok and not again.problems, again.error or again.problems
    assert writes == []
    wanted = sum(len(user["groups"]) for user in expected(server.spec).values())
    assert result.counts["memberships_added"] == wanted


def test_full_sync_removes_memberships_and_users_gone_from_the_directory(make_slapd):
    server = make_slapd(lab_spec())
    with override_settings(**sync_settings_for(server)):
        assert run_sync(SyncOptions(mode="full")).ok
        bob = get_user_model()._default_manager.get_by_natural_key(
            login_name(server.spec.user("bob"))
        )
        bob.groups.add(Group.objects.create(name="Local"))  # given in Django: kept
        new = without(server.spec, "Dept", "bob")
        new = DirectorySpec([u for u in new.users if u.key != "carol"], new.groups)
        new = DirectorySpec(
            new.users,
            [GroupSpec(g.name, g.ou, [m for m in g.members if m != "carol"]) for g in new.groups],
        )
        server.apply(server.spec, new)
        result = run_sync(SyncOptions(mode="full"))
    assert result.ok and not result.problems, result.error or result.problems
    assert result.counts["memberships_removed"] >= 2 and result.counts["users_removed"] == 1
    after = state()
    carol = after.pop(login_name(lab_spec().user("carol")))
    assert carol["is_active"] is False and carol["groups"] == set()
    want = expected(new)
    want[login_name(new.user("bob"))]["groups"] = {"Local"}  # Dept was his way to Company
    assert after == want


def test_incremental_run_drops_the_memberships_of_a_deleted_group(make_slapd):
    """The holders of a group gone from the directory lose it (``user_ids_holding``)."""
    server = make_slapd(lab_spec())
    with override_settings(**sync_settings_for(server)):
        assert run_sync(SyncOptions(mode="full")).ok
        time.sleep(1.1)  # modifyTimestamp has a one-second resolution
        new = DirectorySpec(
            list(server.spec.users), [g for g in server.spec.groups if g.name != "Project"]
        )
        server.apply(server.spec, new)
        result = run_sync(SyncOptions(mode="incremental"))
    assert result.ok and result.mode == "incremental", result.error or result.mode_reason
    assert result.counts["memberships_removed"] == 1
    assert state() == expected(new)


def test_login_creates_the_user_then_puts_back_its_directory_groups(make_slapd):
    server = make_slapd(lab_spec())
    alice = server.spec.user("alice")
    with override_settings(**sync_settings_for(server)):
        user = authenticate(username=login_name(alice), password=LAB_PASSWORD)
        assert user is not None and isinstance(user, get_user_model())
        assert state() == {login_name(alice): expected(server.spec)[login_name(alice)]}
        user.groups.remove(Group.objects.get(name="Company"))
        user.groups.add(Group.objects.create(name="Local"))
        again = authenticate(username=login_name(alice), password=LAB_PASSWORD)
        assert again is not None and again.pk == user.pk
        assert {g.name for g in again.groups.all()} == {
            "Team", "Dept", "Company", "Project", "Local"
        }
        # A batch run agrees with what the logins wrote: it adds the others only.
        again.groups.remove(Group.objects.get(name="Local"))
        result = run_sync(SyncOptions(mode="full"))
        assert result.ok and result.counts["users_updated"] == 0
    assert state() == expected(server.spec)


def test_login_of_a_user_the_batch_created_takes_the_same_row(make_slapd):
    server = make_slapd(lab_spec())
    bob = server.spec.user("bob")
    with override_settings(**sync_settings_for(server)):
        assert run_sync(SyncOptions(mode="full")).ok
        before = state()
        link = DirectoryUser.objects.get(dn=server.user_dn("bob"))
        user = authenticate(username=login_name(bob), password=LAB_PASSWORD)
    assert user is not None and user.pk == link.user_id
    assert state() == before


def test_dry_run_names_the_planned_memberships_by_username(make_slapd):
    server = make_slapd(lab_spec())
    alice = login_name(server.spec.user("alice"))
    with override_settings(**sync_settings_for(server)):
        result = run_sync(SyncOptions(mode="full", dry_run=True, collect_changes=True))
    assert result.ok, result.error
    assert f"add membership {alice!r} in 'Team'" in result.changes
    assert not get_user_model().objects.exists()


# -- one model each ---------------------------------------------------------------------------


@only(PERSON)
def test_extra_field_of_the_model_follows_the_directory_by_batch_and_login(make_slapd):
    server = make_slapd(lab_spec())
    with override_settings(**sync_settings_for(server)):
        assert run_sync(SyncOptions(mode="full")).ok
        Person = get_user_model()
        assert Person.objects.get(username="alice").title == "Engineer"
        new = lab_spec()
        new.user("alice").title = "Principal Engineer"
        new.user("bob").title = "Director"
        server.apply(server.spec, new)
        result = run_sync(SyncOptions(mode="full", collect_changes=True))
        assert result.ok and result.counts["users_updated"] == 2, result.counts
        assert "update user 'alice': title" in result.changes
        assert Person.objects.get(username="alice").title == "Principal Engineer"
        newer = lab_spec()
        newer.user("alice").title = "Fellow"
        server.apply(server.spec, newer)
        user = authenticate(username="alice", password=LAB_PASSWORD)
    assert user is not None and user.title == "Fellow"
    assert Person.objects.get(username="alice").title == "Fellow"


#: The smallest valid connection settings, for the system checks.
CHECKED = {
    "LDAP_SYNC_BIND_URI": "ldaps://dc1.example.com",
    "LDAP_SYNC_BIND_DN": "CN=svc-django,OU=Service Accounts,DC=example,DC=com",
    "LDAP_SYNC_BIND_PASS": "not-a-real-password",
    "LDAP_SYNC_BIND_SEARCH": "DC=example,DC=com",
}


def run_ldap_checks(**more: Any) -> list[checks.CheckMessage]:
    with override_settings(**CHECKED, **more):
        return checks.run_checks(tags=[adchecks.TAG])


@only(EMAIL_USER)
def test_checks_say_the_default_attribute_map_does_not_fit_the_model_and_which_fields_do():
    messages = run_ldap_checks()
    assert [m.id for m in messages] == ["adldap_auth.E015"] * 3
    for message, field in zip(messages, ["username", "first_name", "last_name"], strict=True):
        assert f"to {field!r}, which is not a field of emailuser.EmailUser" in message.msg
        assert "LDAP_SYNC_USER_ATTRIBUTES is not set" in message.msg
        assert "django.contrib.auth's User" in message.msg
        assert "emailuser.EmailUser an attribute may map to: email, display_name." in message.hint
    assert run_ldap_checks(LDAP_SYNC_USER_ATTRIBUTES=EMAIL_USER.attributes) == []
    [message] = run_ldap_checks(LDAP_SYNC_USER_ATTRIBUTES={**EMAIL_USER.attributes, "sn": "last_name"})
    assert message.id == "adldap_auth.E015" and "'last_name'" in message.msg
    assert "is not set" not in message.msg  # the site's own map: no word about the default


@only(EMAIL_USER)
def test_run_with_the_default_attribute_map_fails_naming_the_field_and_the_fitting_ones(make_slapd):
    server = make_slapd(lab_spec())
    values = sync_settings_for(server)
    del values["LDAP_SYNC_USER_ATTRIBUTES"]
    with override_settings(**values):
        result = run_sync(SyncOptions(mode="full"))
    assert not result.ok
    assert result.error_kind == "ConfigError"  # the check's E015, with its hint
    assert "'username', which is not a field of emailuser.EmailUser" in result.error
    assert "may map to: email, display_name" in result.error
    assert not get_user_model().objects.exists()


@only(EMAIL_USER)
def test_login_by_e_mail_address_in_any_case_finds_the_synced_user(make_slapd):
    server = make_slapd(lab_spec())
    with override_settings(**sync_settings_for(server)):
        assert run_sync(SyncOptions(mode="full")).ok
        synced = get_user_model().objects.get(email="carol@example.test")
        user = authenticate(username="Carol@Example.TEST", password=LAB_PASSWORD)
        by_field = authenticate(email="carol@example.test", password=LAB_PASSWORD)
    assert user is not None and user.pk == synced.pk and user.display_name == "Carol Cooper"
    assert by_field is not None and by_field.pk == synced.pk
    assert get_user_model().objects.count() == len(lab_spec().users)


@only(AUTH_USER)
def test_checks_list_the_fields_of_auth_user_for_a_field_it_lacks_or_a_field_not_text():
    title, active = run_ldap_checks(
        LDAP_SYNC_USER_ATTRIBUTES={"uid": "username", "title": "title", "x": "is_active"}
    )
    assert title.id == active.id == "adldap_auth.E015"
    assert "'title', which is not a field of auth.User." in title.msg
    assert "'is_active', which is a BooleanField (not text) of auth.User." in active.msg
    assert "may map to: username, first_name, last_name, email." in title.hint
