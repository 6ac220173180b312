"""Incremental runs from Active Directory's DirSync feed (LDAP_SYNC_CHANGE_TRACKING = "dirsync")
against the lab's Samba DC: the state of a full run, few searches, and the fallbacks."""

from __future__ import annotations

import base64
import contextlib
import random
import uuid

import ldap
import pytest
from django.test import override_settings

from adldap_auth.models import DirectoryUser, GroupNode, SyncMarker
from adldap_auth.nesting import mark_unsettled
from adldap_auth.sync import SyncOptions, run_sync
from tests.helpers import SearchSpy, count_writes, django_state, samba_settings
from tests.lab.samba import SambaDC
from tests.slapd.test_sync_incremental import changes_of

pytestmark = pytest.mark.django_db

#: Seed 0 in every pass; the others in the full passes (``slow``).
RANDOM_SEEDS = [0, *(pytest.param(seed, marks=pytest.mark.slow) for seed in (1, 2))]
LAB_OUS = ("Engineering", "Sales", "IT", "Bulk")
GROUPS = ("Rocket Team", "Engineering", "R&D", "Staff", "Everyone", "Cycle A", "Cycle B", "Sales")
ENABLED_ONLY = (
    "(&(objectCategory=person)(objectClass=user)(!(userAccountControl:1.2.840.113556.1.4.803:=2)))"
)


def dirsync_settings(dc: SambaDC, **extra):
    return samba_settings(
        dc,
        LDAP_SYNC_CHANGE_TRACKING="dirsync",
        LDAP_SYNC_REMOVAL_THRESHOLD=None,
        LDAP_SYNC_INCREMENTAL_BETWEEN_FULL=-1,
        **extra,
    )


@pytest.fixture
def dirsync_dc(samba_clean: SambaDC) -> SambaDC:
    """The lab DC whose reader may use DirSync and see deletions (docs/ad-permissions.md)."""
    samba_clean.grant_replication_right(samba_clean.reader_dn)
    samba_clean.grant_deleted_objects(samba_clean.reader_dn)
    samba_clean.add_tombstone()
    return samba_clean


def nesting() -> dict[str, tuple]:
    rows = GroupNode.objects.values_list("guid", "dn", "member_keys", "parent_guids", "in_scope")
    return {
        guid: (dn, sorted(keys), sorted(parents), scope) for guid, dn, keys, parents, scope in rows
    }


def assert_a_full_run_has_nothing_to_do() -> None:
    state, stored = django_state(), nesting()
    full = run_sync(SyncOptions(mode="full"))
    assert full.ok, full.error or full.problems
    assert changes_of(full) == {}, full.counts
    assert django_state() == state
    assert nesting() == stored


class Changes:
    """Random changes to the lab directory, by the administrator; remembers where entries
    went. Operations the server refuses (a value already there, say) are skipped."""

    def __init__(self, dc: SambaDC, seed: int) -> None:
        self.dc, self.rng = dc, random.Random(seed)
        self.conn = dc.admin_connection()
        self.users = {user.key: dc.user_dn(user.key) for user in dc.spec.users}
        self.groups = {name: dc.group_dn(name) for name in GROUPS}
        self.count = 0

    def step(self, extra: int = 12) -> None:
        kinds = [name for name in dir(self) if name.startswith("op_")]
        chosen = kinds + [self.rng.choice(kinds) for _ in range(extra)]
        self.rng.shuffle(chosen)
        for kind in chosen:
            self.count += 1
            with contextlib.suppress(ldap.LDAPError, IndexError):
                getattr(self, kind)()

    def _user(self) -> str:
        return self.rng.choice(sorted(self.users))

    def _group(self) -> str:
        return self.rng.choice(sorted(self.groups))

    def op_attribute(self) -> None:
        key = self._user()
        attr = self.rng.choice(["title", "department", "givenName"])
        value = f"{attr} {self.count}".encode()
        self.conn.modify_s(self.users[key], [(ldap.MOD_REPLACE, attr, [value])])

    def op_clear(self) -> None:
        self.conn.modify_s(self.users[self._user()], [(ldap.MOD_DELETE, "title", None)])

    def op_rename(self) -> None:
        key = self._user()
        parent = self.users[key].split(",", 1)[1]
        self.conn.rename_s(self.users[key], f"CN=Renamed {self.count}")
        self.users[key] = f"CN=Renamed {self.count},{parent}"

    def op_move(self) -> None:
        key = self._user()
        rdn = ldap.dn.explode_dn(self.users[key])[0]
        parent = f"OU={self.rng.choice(LAB_OUS)},{self.dc.lab_dn}"
        self.conn.rename_s(self.users[key], rdn, parent)
        self.users[key] = f"{rdn},{parent}"

    def op_move_out_of_scope(self) -> None:
        key = self._user()
        rdn = ldap.dn.explode_dn(self.users[key])[0]
        self.conn.rename_s(self.users.pop(key), rdn, f"CN=Users,{self.dc.base_dn}")

    def op_disable_or_enable(self) -> None:
        dn = self.users[self._user()]
        found = self.conn.search_s(dn, ldap.SCOPE_BASE, attrlist=["userAccountControl"])
        flags = int(found[0][1]["userAccountControl"][0]) ^ 2
        self.conn.modify_s(dn, [(ldap.MOD_REPLACE, "userAccountControl", [str(flags).encode()])])

    def op_delete_user(self) -> None:
        self.conn.delete_s(self.users.pop(self._user()))

    def op_add_user(self) -> None:
        key = f"new{self.count}"
        dn = f"CN=New {self.count},OU={self.rng.choice(LAB_OUS)},{self.dc.lab_dn}"
        self.conn.add_s(dn, [
            ("objectClass", [b"user"]), ("sAMAccountName", [key.encode()]),
            ("givenName", [b"New"]), ("userAccountControl", [b"544"]),
        ])  # fmt: skip
        self.users[key] = dn
        self.conn.modify_s(self.groups[self._group()], [(ldap.MOD_ADD, "member", [dn.encode()])])

    def op_add_member(self) -> None:
        member = self.users[self._user()].encode()
        self.conn.modify_s(self.groups[self._group()], [(ldap.MOD_ADD, "member", [member])])

    def op_remove_member(self) -> None:
        group = self.groups[self._group()]
        found = self.conn.search_s(group, ldap.SCOPE_BASE, attrlist=["member"])
        members = found[0][1].get("member", [])
        victim = self.rng.choice(members)
        self.conn.modify_s(group, [(ldap.MOD_DELETE, "member", [victim])])

    def op_nest(self) -> None:
        child, parent = self.rng.sample(sorted(self.groups), 2)
        value = [self.groups[child].encode()]
        self.conn.modify_s(self.groups[parent], [(ldap.MOD_ADD, "member", value)])

    def op_rename_group(self) -> None:
        name = self._group()
        parent = self.groups[name].split(",", 1)[1]
        self.conn.rename_s(self.groups[name], f"CN=Group {self.count}")
        self.groups[name] = f"CN=Group {self.count},{parent}"

    def op_delete_group(self) -> None:
        if len(self.groups) > 4:
            self.conn.delete_s(self.groups.pop(self._group()))

    def op_primary_group(self) -> None:
        user, group = self.users[self._user()], self.groups[self._group()]
        with contextlib.suppress(ldap.TYPE_OR_VALUE_EXISTS, ldap.ALREADY_EXISTS):
            self.conn.modify_s(group, [(ldap.MOD_ADD, "member", [user.encode()])])
        found = self.conn.search_s(group, ldap.SCOPE_BASE, attrlist=["objectSid"])
        rid = int.from_bytes(found[0][1]["objectSid"][0][-4:], "little")
        self.conn.modify_s(user, [(ldap.MOD_REPLACE, "primaryGroupID", [str(rid).encode()])])


@pytest.mark.parametrize("seed", RANDOM_SEEDS)
def test_dirsync_runs_after_random_changes_equal_a_full_run(dirsync_dc, seed):
    changes = Changes(dirsync_dc, seed)
    with override_settings(**dirsync_settings(dirsync_dc)):
        first = run_sync(SyncOptions())
        assert first.mode == "full" and first.ok, first.error or first.problems
        assert set(SyncMarker.objects.get().feed_cookies) == {"dirsync", "invocation_id"}
        for _step in range(3):
            changes.step()
            result = run_sync(SyncOptions(mode="incremental"))
            assert result.mode == "incremental", result.mode_reason
            assert result.ok, result.error or result.problems
            assert "users_swept" not in result.counts  # no sweep: DirSync names deletions
            assert "groups_outside_scope_seen" not in result.counts  # no read of every group
            assert_a_full_run_has_nothing_to_do()
    primary = set(DirectoryUser.objects.values_list("primary_group_sid", flat=True))
    assert len(primary) > 1  # Domain Users and at least one changed primary group


def test_a_one_percent_change_costs_a_few_searches_and_no_change_no_write(dirsync_dc):
    dc = dirsync_dc
    conn = dc.admin_connection()
    bulk = [user.key for user in dc.spec.users if user.key.startswith("bulk")][:16]
    with override_settings(**dirsync_settings(dc)):
        assert run_sync(SyncOptions(mode="full")).ok
        for key in bulk:
            conn.modify_s(dc.user_dn(key), [(ldap.MOD_REPLACE, "givenName", [b"Changed"])])
        with SearchSpy().active() as spy:
            result = run_sync(SyncOptions(mode="incremental"))
        with count_writes() as writes:
            unchanged = run_sync(SyncOptions(mode="incremental"))
    assert result.ok and result.mode == "incremental", result.error or result.mode_reason
    assert result.counts["users_seen"] == result.counts["users_updated"] == len(bulk)
    # rootDSE and NTDS Settings, schema, DirSync, the tombstone check, the changed users by id
    assert spy.count == result.ldap_searches <= 6, spy.calls
    assert unchanged.ok and unchanged.mode == "incremental"
    assert unchanged.counts.get("users_seen", 0) == 0 and changes_of(unchanged) == {}
    assert writes == []
    assert unchanged.ldap_searches <= 5


def test_a_user_disabled_under_a_filter_that_excludes_disabled_users_is_missing(dirsync_dc):
    dc = dirsync_dc
    with override_settings(**dirsync_settings(dc, LDAP_SYNC_USER_FILTER=ENABLED_ONLY)):
        assert run_sync(SyncOptions(mode="full")).ok
        dc.admin_connection().modify_s(
            dc.user_dn("carol"), [(ldap.MOD_REPLACE, "userAccountControl", [b"514"])]
        )
        result = run_sync(SyncOptions(mode="incremental"))
        assert result.ok and result.mode == "incremental", result.error or result.mode_reason
        assert result.counts["users_removed"] == 1
        assert DirectoryUser.objects.get(dn=dc.user_dn("carol")).removal_reason == "missing"
        assert_a_full_run_has_nothing_to_do()


@pytest.mark.parametrize(
    ("grant", "missing"),
    [
        ((), "Replicating Directory Changes"),
        (("grant_replication_right",), "CN=Deleted Objects"),
    ],
    ids=["no-right", "no-deleted-objects"],
)
def test_without_the_rights_a_run_warns_once_and_tracks_by_usn(samba_clean, grant, missing):
    dc = samba_clean
    for name in grant:
        getattr(dc, name)(dc.reader_dn)
    dc.add_tombstone()
    with override_settings(**dirsync_settings(dc)):
        first = run_sync(SyncOptions(mode="full"))
        dc.admin_connection().modify_s(
            dc.user_dn("bob"), [(ldap.MOD_REPLACE, "givenName", [b"Changed"])]
        )
        second = run_sync(SyncOptions())
    for result in (first, second):
        assert result.ok, result.error
        warned = [text for text in result.problems if missing in text]
        assert len(warned) == 1 and result.counts["warnings"] == 1, result.problems
        assert "uSNChanged" in warned[0]
    assert second.mode == "incremental", second.mode_reason
    assert "tracked by uSNChanged" in second.mode_reason
    assert "users_swept" in second.counts and second.counts["users_updated"] == 1
    assert SyncMarker.objects.get().feed_cookies == {}


@pytest.mark.parametrize(
    ("cookies", "reason"),
    [
        ({"dirsync": base64.b64encode(b"garbage").decode()}, "refused the change-feed cookie"),
        ({"dirsync": "not base64!"}, "refused the change-feed cookie"),
        ({"invocation_id": str(uuid.uuid4())}, "another domain controller"),
    ],
    ids=["rejected", "corrupt", "other-dc"],
)
def test_a_cookie_the_dc_cannot_use_makes_the_run_full(dirsync_dc, cookies, reason):
    with override_settings(**dirsync_settings(dirsync_dc)):
        assert run_sync(SyncOptions(mode="full")).ok
        marker = SyncMarker.objects.get()
        marker.feed_cookies = {**marker.feed_cookies, **cookies}
        marker.save()
        result = run_sync(SyncOptions(mode="incremental"))
        assert result.ok and result.mode == "full", result.mode_reason
        assert reason in result.mode_reason
        assert run_sync(SyncOptions(mode="incremental")).mode == "incremental"


def test_an_unchanged_feed_after_a_run_that_died_removes_nobody(dirsync_dc):
    with override_settings(**dirsync_settings(dirsync_dc)):
        assert run_sync(SyncOptions(mode="full")).ok
        mark_unsettled()
        result = run_sync(SyncOptions(mode="incremental"))
        assert result.ok and result.mode == "incremental", result.error or result.mode_reason
        assert result.counts.get("users_removed", 0) == 0, result.counts
        assert result.counts["memberships_recheck_all"] == 1
        assert_a_full_run_has_nothing_to_do()
