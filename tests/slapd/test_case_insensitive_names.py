"""Names that differ only in case, on every database of ``make test``.

MariaDB and MySQL compare text with a case-insensitive collation by default
(``utf8mb4_general_ci``): ``Team`` and ``team`` are one value for a unique index and for a
lookup, while SQLite and PostgreSQL tell them apart. The directory is case-insensitive too (AD's
``sAMAccountName`` and ``cn``), so the sync treats such names as one name everywhere, and the
same directory gives the same Django state whatever the database.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import Group
from django.test import override_settings

from adldap_auth.models import DirectoryGroup, DirectoryUser
from adldap_auth.sync import SyncOptions, run_sync
from tests.backend_helpers import login_settings
from tests.helpers import slapd_settings
from tests.lab import ldif
from tests.lab.spec import LAB_PASSWORD, DirectorySpec, GroupSpec, UserSpec

pytestmark = pytest.mark.django_db

User = get_user_model()


def people() -> list[UserSpec]:
    return [
        UserSpec(key, key.title(), "Person", mail=f"{key}@directory.test", password=LAB_PASSWORD)
        for key in ("alice", "bob")
    ]


def settings_for(server: Any, **more: Any) -> dict[str, Any]:
    return login_settings(
        slapd_settings(server, LDAP_SYNC_GROUP_SEARCH=ldif.GROUPS_DN, **more)
    )


def groups_of(username: str) -> set[str]:
    return set(User.objects.get(username=username).groups.values_list("name", flat=True))


def test_directory_groups_differing_only_in_case_give_one_django_group(make_slapd):
    """``Team`` (read first) keeps the Django group; ``team`` in another OU is reported and
    skipped, on every database, by batch runs and logins alike."""
    groups = [GroupSpec("Team", members=["alice"]), GroupSpec("team", ou="Extra", members=["bob"])]
    server = make_slapd(spec=DirectorySpec(people(), groups))
    with override_settings(**settings_for(server)):
        result = run_sync(SyncOptions(mode="full"))
        again = run_sync(SyncOptions(mode="full"))
        bob = authenticate(username="bob", password=LAB_PASSWORD)
    assert result.status == "partial", result.error
    assert result.problems == [
        f"group cn=team,ou=Extra,{ldif.GROUPS_DN} skipped: directory group "
        f"{server.group_dn('Team')} has the same name 'Team' (names differ only in case) and "
        "keeps the Django group; rename one of them in the directory"
    ]
    assert again.problems == result.problems  # reported at each run, never a crash
    assert list(Group.objects.values_list("name", flat=True)) == ["Team"]
    assert DirectoryGroup.objects.get().dn == server.group_dn("Team")
    assert groups_of("alice") == {"Team"}
    assert bob is not None and groups_of("bob") == set()


def test_a_local_user_and_a_local_group_named_in_another_case_are_adopted(make_slapd):
    """The user at once (no usable password); the group when LDAP_SYNC_ADOPT_GROUPS names it,
    and both then take the directory's spelling."""
    user = User.objects.create_user("Alice", first_name="Local")  # no usable password
    group = Group.objects.create(name="TEAM")
    server = make_slapd(spec=DirectorySpec(people(), [GroupSpec("Team", members=["alice"])]))
    with override_settings(**settings_for(server)):
        refused = run_sync(SyncOptions(mode="full"))
        assert refused.status == "partial" and "Django group 'TEAM'" in refused.problems[0]
        assert refused.counts["users_adopted"] == 1 and len(refused.problems) == 1
        assert not DirectoryGroup.objects.exists() and groups_of("alice") == set()
        with override_settings(LDAP_SYNC_ADOPT_GROUPS=["TEAM"]):  # the Django group's name
            adopted = run_sync(SyncOptions(mode="full"))
        login = authenticate(username="ALICE", password=LAB_PASSWORD)
    assert adopted.ok and not adopted.problems, adopted.error or adopted.problems
    assert list(Group.objects.values_list("pk", "name")) == [(group.pk, "Team")]
    assert DirectoryGroup.objects.get().group_id == group.pk
    assert login is not None and login.pk == user.pk
    assert (login.username, login.first_name) == ("alice", "Alice")
    assert DirectoryUser.objects.get(user=user).dn == server.user_dn("alice")
    assert User.objects.count() == 2 and groups_of("alice") == {"Team"}
