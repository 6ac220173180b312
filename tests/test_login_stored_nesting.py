"""Logins on OpenLDAP after a batch run: direct groups read live, nesting as the run stored it.

See :mod:`adldap_auth.stored_groups` for the trade this makes and why.
"""

from __future__ import annotations

import pytest
from django.contrib.auth import authenticate
from django.test import override_settings

from adldap_auth.login import clear_group_cache
from adldap_auth.models import DirectoryGroup
from adldap_auth.stored_groups import StoredGroups
from adldap_auth.sync import SyncOptions, run_sync
from tests.helpers import SearchSpy
from tests.lab import ldif
from tests.lab.spec import LAB_PASSWORD, DirectorySpec, GroupSpec
from tests.test_backend_slapd import settings_for, small_spec

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_group_cache()
    yield
    clear_group_cache()


def group_names(user) -> set[str]:
    return {g.name for g in user.groups.all()}


def with_groups(spec: DirectorySpec, *groups: GroupSpec) -> DirectorySpec:
    """``spec`` with these groups replacing (by name) or added to its own."""
    by_name = {g.name: g for g in spec.groups}
    by_name.update({g.name: g for g in groups})
    return DirectorySpec(spec.users, list(by_name.values()))


def test_batch_run_stores_each_groups_parents(make_slapd):
    server = make_slapd(small_spec())
    with override_settings(**settings_for(server)):
        assert run_sync(SyncOptions(mode="full")).ok
    parents = {
        link.group.name: {DirectoryGroup.objects.get(guid=g).group.name for g in link.parent_guids}
        for link in DirectoryGroup.objects.select_related("group")
    }
    assert parents == {"Team": {"Dept"}, "Dept": {"Division"}, "Division": {"Company"}, "Company": set()}


def test_login_after_a_batch_run_reads_direct_groups_only(make_slapd):
    server = make_slapd(small_spec())
    with override_settings(**settings_for(server)):
        assert run_sync(SyncOptions(mode="full")).ok
        with SearchSpy().active() as spy:
            user = authenticate(username="alice", password=LAB_PASSWORD)
    assert group_names(user) == {"Team", "Dept", "Division", "Company"}
    # The user search, then one search of the user's direct groups: not the whole graph.
    assert [base for base, _, _ in spy.calls] == [ldif.PEOPLE_DN, ldif.GROUPS_DN]
    assert "(member=" in spy.calls[1][1]


def test_direct_membership_changes_reach_the_login_at_once(make_slapd):
    spec = small_spec()
    server = make_slapd(spec)
    with override_settings(**settings_for(server)):
        assert run_sync(SyncOptions(mode="full")).ok
        changed = with_groups(
            spec, GroupSpec("Team", members=[]), GroupSpec("Division", members=["group:Dept", "alice"])
        )
        server.apply(spec, changed)
        user = authenticate(username="alice", password=LAB_PASSWORD)
    assert group_names(user) == {"Division", "Company"}


def test_nesting_changes_reach_logins_with_the_next_batch_run(make_slapd):
    spec = small_spec()
    server = make_slapd(spec)
    with override_settings(**settings_for(server)):
        assert run_sync(SyncOptions(mode="full")).ok
        changed = with_groups(spec, GroupSpec("Division", members=[]))  # Dept leaves Division
        server.apply(spec, changed)
        assert group_names(authenticate(username="bob", password=LAB_PASSWORD)) == {
            "Dept",
            "Division",
            "Company",
        }  # the stored nesting: as of the last batch run
        assert run_sync(SyncOptions(mode="full")).ok
        assert group_names(authenticate(username="bob", password=LAB_PASSWORD)) == {"Dept"}


def test_graph_resolution_reads_the_directory_nesting_at_login(make_slapd):
    spec = small_spec()
    server = make_slapd(spec)
    settings = settings_for(server, LDAP_SYNC_LOGIN_GROUP_RESOLUTION="graph")
    with override_settings(**settings):
        assert run_sync(SyncOptions(mode="full")).ok
        server.apply(spec, with_groups(spec, GroupSpec("Division", members=[])))
        assert group_names(authenticate(username="bob", password=LAB_PASSWORD)) == {"Dept"}


def test_a_group_newer_than_the_last_batch_run_makes_the_login_read_the_graph(make_slapd):
    spec = small_spec()
    server = make_slapd(spec)
    with override_settings(**settings_for(server)):
        assert run_sync(SyncOptions(mode="full")).ok
        changed = with_groups(
            spec,
            GroupSpec("Guild", members=["alice"]),
            GroupSpec("Company", members=["group:Division", "group:Guild"]),
        )
        server.apply(spec, changed)
        with SearchSpy().active() as spy:
            user = authenticate(username="alice", password=LAB_PASSWORD)
    assert group_names(user) == {"Team", "Dept", "Division", "Company", "Guild"}
    assert [base for base, _, _ in spy.calls] == [ldif.PEOPLE_DN, ldif.GROUPS_DN, ldif.GROUPS_DN]


def test_stored_groups_ancestors_follow_cycles_and_ignore_unknown_parents():
    stored = StoredGroups(
        [
            ("a", "cn=a", "A", "", ["b"]),
            ("b", "cn=b", "B", "", ["c", "gone"]),
            ("c", "cn=c", "C", "S-1-5-21-1-2-3-513", ["a"]),
            ("d", "cn=d", "D", "", []),
        ]
    )
    assert stored.ancestors(["a"]) == {"a", "b", "c"}
    assert stored.ancestors(["d", "unknown"]) == {"d"}
    assert stored.guid_of_sid("S-1-5-21-1-2-3-513") == "c"
    assert stored.record("c").name == "C" and stored.record("c").object_sid == "S-1-5-21-1-2-3-513"
