"""Issue 14, findings 4 and 5: a guard on every kind of removal, against a real slapd.

- **Users** (#4): the default ``LDAP_SYNC_REMOVAL_THRESHOLD`` (10% of the synced users, at
  least 10, never more than half of them) refuses a user search narrowed to a child OU at every
  site size, while a few leavers still go through.
- **Groups** (#5): a group read that lost the managed groups (a typo in the filter, an empty
  base) fails the run before anything is written; more group removals than the threshold are
  refused the same way; ``--force-removals`` applies them; with ``LDAP_SYNC_REMOVAL_GRACE``,
  ``GROUP_REMOVAL_ACTION = "DELETE"`` retires first and deletes after the grace period.
- **Memberships** (#5): membership removals wait for the end of a complete read and are held
  to the threshold (a wrong member attribute empties every group); a run that stops in the
  middle removes no membership.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core import checks
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone

from adldap_auth.models import DirectoryGroup, SyncRun
from adldap_auth.sync import SyncOptions, run_sync
from tests.helpers import slapd_settings
from tests.lab.ldif import PEOPLE_DN
from tests.lab.spec import DirectorySpec, GroupSpec, UserSpec

pytestmark = pytest.mark.django_db

User = get_user_model()

CONTRACTORS_DN = f"ou=Contractors,{PEOPLE_DN}"
#: Users per page and per write batch in the mid-read fault test.
PAGE = 4


def site(count: int, contractors: int = 2, teams: int = 4, lab: bool = False) -> DirectorySpec:
    """``u000``...: the last ``contractors`` in ``ou=Contractors``; each user in one team,
    the teams nested in "All" (two memberships a user); with ``lab``, u000 and u001 are also
    in "Lab" (not nested)."""
    users = [
        UserSpec(
            f"u{i:03d}",
            "User",
            f"Number {i:03d}",
            mail=f"u{i:03d}@example.test",
            title="Staff",
            ou="Contractors" if i >= count - contractors else "People",
        )
        for i in range(count)
    ]
    groups = [
        GroupSpec(f"Team {t}", members=[u.key for u in users[t::teams]]) for t in range(teams)
    ]
    groups.append(GroupSpec("All", members=[f"group:Team {t}" for t in range(teams)]))
    if lab:
        groups.append(GroupSpec("Lab", members=["u000", "u001"]))
    return DirectorySpec(users=users, groups=groups)


def edited(spec: DirectorySpec, drop=(), drop_groups=(), **changes: dict) -> DirectorySpec:
    """A copy of ``spec`` without some users and groups, with field changes per user key."""
    gone = set(drop) | {f"group:{name}" for name in drop_groups}
    users = [
        dataclasses.replace(u, **changes.get(u.key, {})) for u in spec.users if u.key not in drop
    ]
    groups = [
        dataclasses.replace(g, members=[m for m in g.members if m not in gone])
        for g in spec.groups
        if g.name not in drop_groups
    ]
    return DirectorySpec(users=users, groups=groups)


def without_member(spec: DirectorySpec, group: str, key: str) -> DirectorySpec:
    groups = [
        dataclasses.replace(g, members=[m for m in g.members if m != key]) if g.name == group else g
        for g in spec.groups
    ]
    return DirectorySpec(users=spec.users, groups=groups)


def memberships() -> set[tuple[str, str]]:
    """Every (username, group name) Django holds."""
    through = User.groups.through
    return set(through.objects.values_list("user__username", "group__name"))


def active_users() -> set[str]:
    return set(User.objects.filter(is_active=True).values_list("username", flat=True))


def title(username: str) -> str:
    from tests.testapp.models import Employee

    return Employee.objects.get(user__username=username).title


def sync_ok(**options) -> object:
    result = run_sync(SyncOptions(mode="full", **options))
    assert result.status == "success", result.error
    return result


def refused(**options) -> object:
    result = run_sync(SyncOptions(mode="full", **options))
    assert (result.status, result.error_kind) == ("failed", "RemovalRefused"), result.as_dict()
    assert SyncRun.objects.get(pk=result.run_id).status == "failed"
    return result


# -- #4: the default user threshold --------------------------------------------------------------


@pytest.mark.parametrize("count", [12, 30, 77])
def test_the_default_threshold_refuses_a_user_search_narrowed_to_a_child_ou(make_slapd, count):
    """The issue's 77-user site (and smaller ones): the user search pointed at a child OU
    holding 2 entries would remove everyone else; the default refuses it, a few leavers pass."""
    spec = site(count)
    server = make_slapd(spec=spec)
    with override_settings(**slapd_settings(server)):  # LDAP_SYNC_REMOVAL_THRESHOLD unset
        sync_ok()
        leavers = edited(spec, drop=["u000", "u001", "u002"])
        server.apply(spec, leavers)
        assert sync_ok().counts["users_removed"] == 3  # staff turnover needs no --force
        staying = active_users()
        assert len(staying) == count - 3

        with override_settings(LDAP_SYNC_USER_SEARCH=CONTRACTORS_DN):
            result = refused()
            assert result.error.startswith(
                f"{count - 5} users would be removed, more than LDAP_SYNC_REMOVAL_THRESHOLD (10% "
                f"of {count - 3} synced users, at least 10"
            )
            assert active_users() == staying  # nobody deactivated
            forced = sync_ok(force_removals=True)
    assert forced.counts["users_removed"] == count - 5
    assert active_users() == {f"u{count - 2:03d}", f"u{count - 1:03d}"}


def test_the_default_rule_at_every_site_size():
    """A search narrowed to 2 entries is refused from 5 to 100,000 users; routine turnover
    (at most 10 users, or 10%) is not. The count and "N%" forms keep their meaning."""
    from adldap_auth.conf import DEFAULTS, removal_threshold

    default = removal_threshold(DEFAULTS["REMOVAL_THRESHOLD"])
    for total in (5, 12, 20, 77, 1_000, 100_000):
        assert total - 2 > default.limit(total), total
        assert min(total // 10, 10) <= default.limit(total)
        assert total // 2 + 1 > default.limit(total)  # never half a site without --force
    assert default.limit(1_000) == 100 and default.limit(77) == 10 and default.limit(12) == 6
    assert default.describe(12, "synced users") == (
        "10% of 12 synced users, at least 10 but at most half of them: 6"
    )
    assert removal_threshold(500).limit(100_000) == 500
    assert removal_threshold("20%").limit(12) == pytest.approx(2.4)
    assert (
        removal_threshold(" 0.5 %").describe(1000, "synced users") == "0.5 % of 1000 synced users"
    )
    capped = removal_threshold({"percent": 10, "minimum": 10, "maximum": 500})
    assert capped.limit(100_000) == 500 and capped.limit(30) == 10
    assert removal_threshold(None) is None


#: LDAP_SYNC_REMOVAL_THRESHOLD values, and whether system check E022 accepts them.
THRESHOLD_FORMS = [
    ({"percent": 10, "minimum": 10}, True),
    ({"percent": 5}, True),
    ({"percent": 2.5, "minimum": 20, "maximum": 500}, True),
    ({"percent": 10, "maximum": None}, True),
    ({"minimum": 10}, False),
    ({"percent": 0}, False),
    ({"percent": 101}, False),
    ({"percent": True}, False),
    ({"percent": 10, "minimum": -1}, False),
    ({"percent": 10, "minimum": 1.5}, False),
    ({"percent": 10, "floor": 10}, False),
    ("10%", True),
    (500, True),
    ("ten", False),
]


def test_the_threshold_forms_are_validated():
    """The dict form (the default's) is accepted by the system check; wrong ones say why."""
    settings = {
        "LDAP_SYNC_BIND_URI": "ldaps://dc1.example.com",
        "LDAP_SYNC_BIND_DN": "CN=svc,DC=example,DC=com",
        "LDAP_SYNC_BIND_PASS": "not-a-real-password",
        "LDAP_SYNC_BIND_SEARCH": "DC=example,DC=com",
    }
    accepted = {}
    for value, _valid in THRESHOLD_FORMS:
        with override_settings(**settings, LDAP_SYNC_REMOVAL_THRESHOLD=value):
            found = [m for m in checks.run_checks() if m.id == "adldap_auth.E022"]
        accepted[repr(value)] = not found
    assert accepted == {repr(value): valid for value, valid in THRESHOLD_FORMS}
    with override_settings(**settings, LDAP_SYNC_REMOVAL_THRESHOLD={"percent": 10, "floor": 3}):
        [message] = [m for m in checks.run_checks() if m.id == "adldap_auth.E022"]
    assert message.msg.endswith("(dict): unknown keys ['floor'].")


# -- #5: groups ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "threshold"), [("KEEP", "default"), ("DELETE", "5%"), ("DELETE", None)]
)
def test_a_group_filter_typo_fails_the_run_before_anything_is_written(
    make_slapd, action, threshold
):
    """``(objectClass=groupOfName)``: the group read finds nothing. Before, every managed
    membership was removed (and the groups deleted under "DELETE"), exit 0."""
    spec = site(30)
    server = make_slapd(spec=spec)
    extra = {"LDAP_SYNC_GROUP_REMOVAL_ACTION": action}
    if threshold != "default":
        extra["LDAP_SYNC_REMOVAL_THRESHOLD"] = threshold
    with override_settings(**slapd_settings(server, **extra)):
        sync_ok()
        held = memberships()
        assert len(held) == 60
        server.apply(spec, edited(spec, u003={"title": "Chief"}))
        with override_settings(LDAP_SYNC_GROUP_FILTER="(objectClass=groupOfName)"):
            result = refused()
            assert result.error.startswith(
                "the directory returned none of the 5 synced groups; nothing was written"
            )
            with pytest.raises(CommandError):  # the command exits non-zero
                call_command("syncldap", "full")
            assert memberships() == held
            assert DirectoryGroup.objects.filter(removed_at__isnull=True).count() == 5
            assert title("u003") == "Staff"  # nothing written, not even the users' changes
            sync_ok(force_removals=True)  # "every group was removed on purpose"
        assert memberships() == set()
        if action == "DELETE":
            assert not Group.objects.filter(name__in=["All", "Team 0"]).exists()
        else:
            assert DirectoryGroup.objects.filter(removed_at__isnull=False).count() == 5


@pytest.mark.parametrize("create_outside", [False, True])
def test_an_empty_group_search_removes_no_membership(make_slapd, create_outside):
    """LDAP_SYNC_GROUP_SEARCH at a base without groups. Groups outside the group scope that
    Django manages stay managed when LDAP_SYNC_GROUP_MEMBERSHIP_CREATE_IF_NOT_EXISTS (the
    membership scope); otherwise the run is refused. Either way no membership is lost."""
    spec = site(30)
    server = make_slapd(spec=spec)
    extra = {
        "LDAP_SYNC_GROUP_REMOVAL_ACTION": "DELETE",
        "LDAP_SYNC_GROUP_MEMBERSHIP_CREATE_IF_NOT_EXISTS": create_outside,
    }
    with override_settings(**slapd_settings(server, **extra)):
        sync_ok()
        held = memberships()
        with override_settings(LDAP_SYNC_GROUP_SEARCH=PEOPLE_DN):
            result = run_sync(SyncOptions(mode="full"))
    if not create_outside:
        assert result.error_kind == "RemovalRefused", result.as_dict()
    assert memberships() == held
    assert DirectoryGroup.objects.filter(removed_at__isnull=True).count() == 5


def test_more_group_removals_than_the_threshold_are_refused_until_forced(make_slapd):
    """8 of 13 groups gone at once (here deleted; the same for a narrowed group scope)."""
    spec = site(30, teams=12)
    server = make_slapd(spec=spec)
    with override_settings(**slapd_settings(server)):
        sync_ok()
        held = memberships()
        dropped = [f"Team {t}" for t in range(8)]
        server.apply(spec, edited(spec, drop_groups=dropped, u003={"title": "Chief"}))
        result = refused()
        assert result.error == (
            "8 synced groups are missing from the directory's answer and would be removed, more "
            "than LDAP_SYNC_REMOVAL_THRESHOLD (10% of 13 synced groups, at least 10 but at most "
            "half of them: 6.5); nothing was written. Check the directory, then run 'manage.py "
            "syncldap full --force-removals' to apply them."
        )
        assert memberships() == held and title("u003") == "Staff"
        assert DirectoryGroup.objects.filter(removed_at__isnull=True).count() == 13
        forced = sync_ok(force_removals=True)
    assert forced.counts["groups_removed"] == 8
    assert set(
        DirectoryGroup.objects.filter(removed_at__isnull=False).values_list(
            "group__name", flat=True
        )
    ) == set(dropped)
    assert title("u003") == "Chief"


def test_group_delete_waits_for_the_grace_period(make_slapd):
    """GROUP_REMOVAL_ACTION "DELETE" with LDAP_SYNC_REMOVAL_GRACE: a group gone is retired
    (kept, with its permissions; its members removed), linked again if it comes back, and
    deleted by the first run after the grace period while still gone."""
    spec = site(30, lab=True)
    server = make_slapd(spec=spec)
    settings = slapd_settings(
        server,
        LDAP_SYNC_GROUP_REMOVAL_ACTION="DELETE",
        LDAP_SYNC_REMOVAL_GRACE=3600,
        LDAP_SYNC_GROUP_MEMBERSHIP_CREATE_IF_NOT_EXISTS=False,
    )
    without_lab = {"LDAP_SYNC_GROUP_FILTER": "(&(objectClass=groupOfNames)(!(cn=Lab)))"}
    with override_settings(**settings):
        sync_ok()
        lab = Group.objects.get(name="Lab")
        permission = Permission.objects.get(codename="view_group")
        lab.permissions.add(permission)
        with override_settings(**without_lab):
            assert sync_ok().counts["groups_removed"] == 1
        link = DirectoryGroup.objects.get(group=lab)
        assert link.removed_at is not None and set(lab.permissions.all()) == {permission}
        assert not lab.user_set.exists()

        back = sync_ok()  # the same entry back in scope within the grace period
        link.refresh_from_db()
        assert link.removed_at is None and "groups_deleted" not in back.counts
        assert set(lab.user_set.values_list("username", flat=True)) == {"u000", "u001"}

        with override_settings(**without_lab):
            sync_ok()
            assert "groups_deleted" not in sync_ok().counts  # within the grace period
            DirectoryGroup.objects.filter(group=lab).update(
                removed_at=timezone.now() - timedelta(hours=2)
            )
            assert sync_ok(dry_run=True).counts["groups_deleted"] == 1
            assert Group.objects.filter(pk=lab.pk).exists()
            last = sync_ok()
    assert last.counts["groups_deleted"] == 1
    assert not Group.objects.filter(pk=lab.pk).exists()
    assert Group.objects.filter(name="Team 0").exists()


# -- #5: memberships -------------------------------------------------------------------------------


def test_memberships_lost_by_a_wrong_member_attribute_are_refused_until_forced(make_slapd):
    """Every group read, none with members (``uniqueMember`` on groupOfNames): the groups
    guard cannot see it; the membership guard, checked after the complete read, does."""
    spec = site(30)
    server = make_slapd(spec=spec)
    with override_settings(**slapd_settings(server)):
        sync_ok()
        moved = without_member(spec, "Team 0", "u000")
        server.apply(spec, moved)
        routine = sync_ok()
        assert routine.counts["memberships_removed"] == 2  # Team 0 and All: no --force
        held = memberships()
        assert len(held) == 58
        with override_settings(LDAP_SYNC_GROUP_MEMBER_ATTRIBUTE="uniqueMember"):
            result = refused()
            assert result.error == (
                "58 memberships would be removed, more than LDAP_SYNC_REMOVAL_THRESHOLD (10% of "
                "58 managed memberships, at least 10: 10); no membership and nobody was removed. "
                "Check the directory, then run 'manage.py syncldap full --force-removals' to "
                "apply them."
            )
            assert result.counts.get("memberships_removed", 0) == 0
            assert memberships() == held
            forced = sync_ok(force_removals=True)
    assert forced.counts["memberships_removed"] == 58
    assert memberships() == set()


def test_a_count_threshold_holds_memberships_too(make_slapd):
    """The issue's ``REMOVAL_THRESHOLD="5%"``, and a count: the same rule for memberships."""
    spec = site(30)
    server = make_slapd(spec=spec)
    with override_settings(**slapd_settings(server, LDAP_SYNC_REMOVAL_THRESHOLD=3)):
        sync_ok()
        fewer = without_member(without_member(spec, "Team 0", "u000"), "Team 1", "u001")
        server.apply(spec, fewer)
        result = refused()  # 4 memberships > 3
        assert result.error.startswith("4 memberships would be removed")
        with override_settings(LDAP_SYNC_REMOVAL_THRESHOLD="5%"):  # 5% of 60 = 3
            refused()
        with override_settings(LDAP_SYNC_REMOVAL_THRESHOLD=4):
            assert sync_ok().counts["memberships_removed"] == 4


#: Faults run once, after the next batch of users has committed (see :func:`inject_fault`).
FAULTS: list = []


def inject_fault(user, attributes, created, updated) -> None:
    """A ``LDAP_SYNC_USER_CALLBACKS`` hook: after a batch commits, run the pending fault."""
    while FAULTS:
        FAULTS.pop(0)()


@pytest.mark.django_db(transaction=True)  # callbacks and signals fire on commit
def test_a_run_that_stops_mid_read_removes_no_membership(make_slapd):
    """u000 (first page) leaves Team 0 and gets a new title; the server stops after the first
    batch. The batch's user changes stay written, its membership removals are not made:
    an incomplete read removes nothing, memberships included. The next run makes them."""
    spec = site(12)
    server = make_slapd(spec=spec)
    settings = slapd_settings(
        server,
        LDAP_SYNC_BIND_PAGESIZE=PAGE,
        LDAP_SYNC_WRITE_BATCH_SIZE=PAGE,
        LDAP_SYNC_NETWORK_TIMEOUT=1,
        LDAP_SYNC_OPERATION_TIMEOUT=5,
    )
    with override_settings(**settings):
        sync_ok()
        changed = edited(without_member(spec, "Team 0", "u000"), u000={"title": "Chief"})
        server.apply(spec, changed)
        FAULTS[:] = [server.stop]
        try:
            with override_settings(
                LDAP_SYNC_USER_CALLBACKS=["tests.slapd.test_security_guards.inject_fault"]
            ):
                failed = run_sync(SyncOptions(mode="full"))
        finally:
            FAULTS.clear()
        assert failed.status == "failed" and failed.error_kind == "IncompleteRead"
        assert title("u000") == "Chief"  # the first batch was written...
        assert {("u000", "Team 0"), ("u000", "All")} <= memberships()  # ...not its removals
        assert failed.counts.get("memberships_removed", 0) == 0
        server.start()
        again = sync_ok()
    assert again.counts["memberships_removed"] == 2
    assert not {("u000", "Team 0"), ("u000", "All")} & memberships()
