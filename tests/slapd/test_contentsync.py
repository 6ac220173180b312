"""Content Synchronization (RFC 4533, refreshOnly) against slapd with the syncprov overlay.

What slapd 2.5 does, as these tests pin it: a read without cookie sends the whole scope; with a
cookie inside the session log, the changed entries and a syncIdSet of deleted UUIDs (a delete
phase); with an older cookie (no session log, a log too small, a restart since), the changed
entries and the UUIDs still present (a present phase). The memberof and refint overlays rewrite
memberOf and member without changing entryCSN: those entries are not reported.
"""

from __future__ import annotations

import ldap
import pytest

from adldap_auth.directory import IncompleteRead
from adldap_auth.directory.config import ConnectionConfig
from adldap_auth.directory.connection import DirectorySession
from adldap_auth.directory.contentsync import (
    ContentSyncBatch,
    ContentSyncUnavailable,
    CookieRefused,
    read_changes,
)
from tests.lab import ldif
from tests.lab.slapd import LabSlapd
from tests.lab.spec import DirectorySpec, company

SYNCPROV = ("memberof", "syncprov")
PEOPLE = "(objectClass=inetOrgPerson)"
PEOPLE_AND_GROUPS = "(|(objectClass=inetOrgPerson)(objectClass=groupOfNames))"
ATTRIBUTES = ["uid", "cn", "title", "member"]


def small_company() -> DirectorySpec:
    """The lab company without its 1,600 bulk users: 7 people, 9 groups."""
    spec = company()
    return DirectorySpec(
        users=[u for u in spec.users if not u.key.startswith("bulk")],
        groups=[g for g in spec.groups if g.name != "All Bulk"],
    )


def user_uuid(key: str) -> str:
    return ldif.entry_uuid("user", key).decode()


def group_uuid(name: str) -> str:
    return ldif.entry_uuid("group", name).decode()


def session_for(server: LabSlapd) -> DirectorySession:
    return DirectorySession.open(
        ConnectionConfig(
            uris=(server.uri,),
            bind_dn=server.reader_dn,
            bind_password=server.reader_password,
            operation_timeout=10.0,
        )
    )


def read(server: LabSlapd, cookie: str | None, base: str = ldif.BASE_DN,
         filterstr: str = PEOPLE_AND_GROUPS) -> ContentSyncBatch:  # fmt: skip
    with session_for(server) as session:
        return read_changes(session, base, filterstr, ATTRIBUTES, cookie)


def csn_cookie(server: LabSlapd, csn_time: str) -> str:
    """A cookie as slapd writes them, for this server's serverID and a CSN at ``csn_time``."""
    sid = f"{server.server_id:03x}"
    return f"rid=000,sid={sid},csn={csn_time}.000000Z#000000#{sid}#000000"


@pytest.fixture
def server(make_slapd) -> LabSlapd:
    return make_slapd(small_company(), overlays=SYNCPROV, access_log=False)


def test_first_read_returns_every_entry_in_scope(server: LabSlapd) -> None:
    batch = read(server, None, base=ldif.PEOPLE_DN, filterstr=PEOPLE)
    spec = small_company()
    assert set(batch.changed) == {user_uuid(u.key) for u in spec.users}
    alice = batch.changed[user_uuid("alice")]
    assert alice.dn == server.user_dn("alice")
    assert alice.attrs["uid"] == [b"alice"] and alice.attrs["title"] == [b"Engineer"]
    assert batch.full_refresh and batch.cookie and "csn=" in batch.cookie
    # A first read lists the whole scope: whatever else the caller knew of is gone.
    ghost = "0123ABCD-0000-5000-8000-000000000000"
    assert batch.deletions({ghost, user_uuid("bob").upper()}) == {ghost.lower()}


@pytest.mark.parametrize(
    ("sessionlog", "present_phase"),
    [(1000, False), (2, True), (0, True)],
    ids=["delete-phase", "log-too-small", "no-session-log"],
)
def test_a_read_with_the_cookie_returns_exactly_the_changes(
    make_slapd, sessionlog: int, present_phase: bool
) -> None:
    server = make_slapd(small_company(), overlays=SYNCPROV, access_log=False,
                        syncprov_sessionlog=sessionlog)  # fmt: skip
    first = read(server, None)
    known = set(first.changed)
    admin = server.admin_connection()
    frank_dn = f"uid=frank,ou=IT,{ldif.PEOPLE_DN}"
    admin.add_s(frank_dn, [("objectClass", [b"inetOrgPerson"]), ("uid", [b"frank"]),
                           ("cn", [b"Frank Fox"]), ("sn", [b"Fox"])])  # fmt: skip
    admin.modify_s(server.user_dn("alice"), [(ldap.MOD_REPLACE, "title", [b"Architect"])])
    admin.rename_s(server.user_dn("bob"), "uid=robert", None, True)
    admin.delete_s(server.user_dn("zoe"))
    admin.modify_s(server.group_dn("Sales"), [(ldap.MOD_ADD, "member", [frank_dn.encode()])])
    [(_, frank)] = admin.search_s(frank_dn, ldap.SCOPE_BASE, attrlist=["entryUUID"])
    frank_uuid = frank["entryUUID"][0].decode()

    batch = read(server, first.cookie)

    changed = {user_uuid("alice"), user_uuid("bob"), frank_uuid, group_uuid("Sales")}
    assert set(batch.changed) == changed
    assert batch.changed[user_uuid("bob")].dn == f"uid=robert,ou=Engineering,{ldif.PEOPLE_DN}"
    assert batch.changed[user_uuid("alice")].attrs["title"] == [b"Architect"]
    assert frank_dn.encode() in batch.changed[group_uuid("Sales")].attrs["member"]
    assert batch.deletions(known) == {user_uuid("zoe")}
    assert batch.full_refresh is present_phase
    assert batch.cookie and batch.cookie != first.cookie


def test_nothing_changed_returns_nothing(server: LabSlapd) -> None:
    first = read(server, None)
    again = read(server, first.cookie)
    assert dict(again.changed) == {}
    assert again.deletions(set(first.changed)) == frozenset()
    assert not again.full_refresh
    assert again.cookie == first.cookie


def test_membership_change_reports_the_group_not_the_member(server: LabSlapd) -> None:
    """memberof rewrites the member's memberOf, and a deleted member's groups, without
    touching their entryCSN: only the group written to comes back."""
    first = read(server, None)
    admin = server.admin_connection()
    admin.modify_s(server.group_dn("Rocket Team"),
                   [(ldap.MOD_ADD, "member", [server.user_dn("jdoe").encode()])])  # fmt: skip
    admin.delete_s(server.user_dn("zoe"))  # a member of Everyone and Sales
    [(_, jdoe)] = admin.search_s(server.user_dn("jdoe"), ldap.SCOPE_BASE, attrlist=["memberOf"])
    assert server.group_dn("Rocket Team").encode() in jdoe["memberOf"]
    [(_, sales)] = admin.search_s(server.group_dn("Sales"), ldap.SCOPE_BASE, attrlist=["member"])
    assert server.user_dn("zoe").encode() not in sales["member"]

    batch = read(server, first.cookie)

    assert set(batch.changed) == {group_uuid("Rocket Team")}
    assert batch.deletions(set(first.changed)) == {user_uuid("zoe")}


@pytest.mark.parametrize("sessionlog", [1000, 0], ids=["delete-phase", "present-phase"])
def test_an_entry_leaving_the_scope_comes_as_a_delete(make_slapd, sessionlog: int) -> None:
    server = make_slapd(small_company(), overlays=SYNCPROV, access_log=False,
                        syncprov_sessionlog=sessionlog)  # fmt: skip
    engineering = f"ou=Engineering,{ldif.PEOPLE_DN}"
    by_base = read(server, None, base=engineering, filterstr=PEOPLE)
    by_filter = read(server, None, base=ldif.PEOPLE_DN, filterstr="(title=Engineer)")
    assert set(by_base.changed) == {user_uuid("alice"), user_uuid("bob")}
    assert set(by_filter.changed) == {user_uuid("alice")}
    admin = server.admin_connection()
    admin.rename_s(server.user_dn("bob"), "uid=bob", f"ou=Sales,{ldif.PEOPLE_DN}", True)
    admin.modify_s(server.user_dn("alice"), [(ldap.MOD_REPLACE, "title", [b"Architect"])])

    moved = read(server, by_base.cookie, base=engineering, filterstr=PEOPLE)
    filtered = read(server, by_filter.cookie, base=ldif.PEOPLE_DN, filterstr="(title=Engineer)")

    assert set(moved.changed) == {user_uuid("alice")}
    assert moved.deletions(set(by_base.changed)) == {user_uuid("bob")}
    assert dict(filtered.changed) == {}
    assert filtered.deletions(set(by_filter.changed)) == {user_uuid("alice")}
    assert moved.full_refresh is filtered.full_refresh is (sessionlog == 0)


@pytest.mark.parametrize("cookie", ["garbage", "rid=000", "rid=000,sid=001"])
def test_a_cookie_without_a_csn_is_refused(server: LabSlapd, cookie: str) -> None:
    """slapd would read it as no cookie and send everything as a delete phase without deletes."""
    read(server, None)
    with pytest.raises(CookieRefused):
        read(server, cookie)


def test_a_cookie_newer_than_the_server_is_refused(server: LabSlapd) -> None:
    """A server restored from a backup: slapd answers unwillingToPerform."""
    read(server, None)
    with pytest.raises(CookieRefused, match="newer than provider"):
        read(server, csn_cookie(server, "29990101000000"))


@pytest.mark.parametrize("reload_hint", [True, False], ids=["reload-hint", "no-reload-hint"])
def test_a_stale_cookie_is_refused_or_gets_a_full_refresh(make_slapd, reload_hint: bool) -> None:
    """A CSN older than every entry: e-syncRefreshRequired with olcSpReloadHint, otherwise a
    present phase listing the whole scope."""
    server = make_slapd(small_company(), overlays=SYNCPROV, access_log=False,
                        syncprov_reload_hint=reload_hint)  # fmt: skip
    everything = read(server, None)
    stale = csn_cookie(server, "20000101000000")
    if reload_hint:
        with pytest.raises(CookieRefused, match="full refresh"):
            read(server, stale)
        return
    ghost = "00000000-0000-5000-8000-000000000000"
    batch = read(server, stale)
    assert batch.full_refresh
    assert set(batch.changed) == set(everything.changed)
    assert batch.deletions({*everything.changed, ghost}) == {ghost}


def test_a_cookie_of_another_server_gets_a_full_refresh(make_slapd) -> None:
    """Its serverID is unknown here: slapd drops it and sends a present phase."""
    spec = small_company()
    first = make_slapd(spec, overlays=SYNCPROV, access_log=False)
    other = make_slapd(spec, overlays=SYNCPROV, access_log=False)
    while other.server_id == first.server_id:  # the lab's serverID is the port modulo 4096
        other = make_slapd(spec, overlays=SYNCPROV, access_log=False)
    cookie = read(first, None).cookie
    other.admin_connection().delete_s(other.user_dn("zoe"))

    batch = read(other, cookie)

    assert batch.full_refresh
    known = {user_uuid(u.key) for u in spec.users} | {group_uuid(g.name) for g in spec.groups}
    assert set(batch.changed) == known - {user_uuid("zoe")}
    assert batch.deletions(known) == {user_uuid("zoe")}


def test_a_server_without_syncprov_says_content_sync_is_unavailable(make_slapd) -> None:
    server = make_slapd(small_company(), access_log=False)  # memberof only
    with pytest.raises(ContentSyncUnavailable):
        read(server, None)


def test_a_size_limit_makes_an_incomplete_read(make_slapd) -> None:
    server = make_slapd(small_company(), overlays=SYNCPROV, access_log=False, sizelimit=3)
    with pytest.raises(IncompleteRead, match="Size limit"):
        read(server, None)


def test_cookies_stay_valid_across_a_restart(server: LabSlapd) -> None:
    """contextCSN is saved at shutdown; the session log is in memory only: a cookie older than
    the restart gets a present phase, a newer one a delete phase."""
    first = read(server, None)
    known = set(first.changed)
    admin = server.admin_connection()
    admin.modify_s(server.user_dn("alice"), [(ldap.MOD_REPLACE, "title", [b"Architect"])])
    before = read(server, first.cookie)
    server.restart()

    unchanged = read(server, before.cookie)
    server.admin_connection().delete_s(server.user_dn("zoe"))
    after = read(server, before.cookie)
    old = read(server, first.cookie)

    assert dict(unchanged.changed) == {} and unchanged.cookie == before.cookie
    assert dict(after.changed) == {} and not after.full_refresh
    assert after.deletions(known) == {user_uuid("zoe")}
    assert set(old.changed) == {user_uuid("alice")} and old.full_refresh
    assert old.deletions(known) == {user_uuid("zoe")}
