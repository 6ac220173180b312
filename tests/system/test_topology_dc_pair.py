"""Two replicating AD domain controllers: failover, incremental markers per DC, restores.

The pair (:mod:`tests.lab.dc_pair`) is DC1 and DC2 of one Samba domain, each in its own
network namespace. USNs are per DC (a replicated change gets the receiving DC's next USN) and
each DC has its own invocationId, so an incremental marker only means something on the DC
that wrote it. These tests check, against the spec's independent closure, that:

* a run fails over to DC2 when DC1 is stopped or blackholed, between runs and mid-run; a run
  cut off mid-run fails and removes nobody; logins go through DC2;
* a marker from DC1 never makes a run on DC2 skip anything, and a change made on DC2 while
  the product reads DC1 arrives with the next run on DC1 once it has replicated;
* a DC whose invocationId changed (a restore from backup) or whose USN went backwards
  (a file-level restore) gets a full run.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator

import ldap
import ldap.ldapobject
import pytest
from django.contrib.auth import authenticate
from django.test import override_settings

from adldap_auth.models import DirectoryUser, SyncMarker, SyncRun
from adldap_auth.sync import SyncOptions, run_sync
from tests.backend_helpers import login_settings
from tests.helpers import django_state, samba_settings
from tests.lab.dc_pair import DC, DCPair
from tests.lab.samba import UF_NORMAL_ACCOUNT, UF_PASSWD_NOTREQD, group_dn_for, user_dn_for
from tests.lab.spec import LAB_PASSWORD, DirectorySpec, UserSpec
from tests.samba.test_sync_full import groups_above_domain_users

pytestmark = [pytest.mark.topology, pytest.mark.django_db]

OUTAGES = ["stopped", "blackholed"]


def pair_settings(pair: DCPair, first: DC | None = None, **more):
    """Settings with both DCs in failover order (``first`` first), short timeouts so that a
    blackholed DC costs seconds, no removal limit (so "nobody removed" is the run's doing)."""
    first = first or pair.dc1
    uris = [first.uri] + [dc.uri for dc in pair.dcs if dc is not first]
    values = {
        "LDAP_SYNC_BIND_URI": uris,
        "LDAP_SYNC_NETWORK_TIMEOUT": 2,
        "LDAP_SYNC_OPERATION_TIMEOUT": 4,
        "LDAP_SYNC_REMOVAL_THRESHOLD": None,
        "LDAP_SYNC_INCREMENTAL_BETWEEN_FULL": -1,
        **more,
    }
    return login_settings(samba_settings(pair, **values))


def expected_state(pair: DCPair, spec: DirectorySpec) -> dict[str, dict]:
    """Django's state for ``spec``: the spec's own closure plus the built-in groups above
    Domain Users (asked of a running DC)."""
    dc = next(dc for dc in pair.dcs if dc.running and not dc.blackholed)
    builtin = {"Domain Users"} | groups_above_domain_users(dc)
    closure = spec.expected_groups()
    return {
        user.key: {
            "first_name": user.given_name,
            "last_name": user.sn,
            "email": user.mail or "",
            "is_active": True,
            "department": user.department or "",
            "title": user.title or "",
            "photo": user.photo,
            "groups": closure[user.key] | builtin,
        }
        for user in spec.users
        if not user.disabled
    }


def assert_state(pair: DCPair, spec: DirectorySpec) -> None:
    expected = expected_state(pair, spec)
    actual = django_state()
    active = {key for key, state in actual.items() if state["is_active"]}
    assert active == set(expected)
    for key, state in expected.items():
        assert actual[key] == state, key


def run(mode: str | None = None):
    result = run_sync(SyncOptions(mode=mode))
    return result


def assert_ok(result, server: DC, mode: str) -> None:
    assert result.status == SyncRun.STATUS_SUCCESS, result.error or result.problems
    assert result.server == server.uri, result.server
    assert result.mode == mode, result.mode_reason


# -- directory changes: on one DC, and the same change on the spec -----------------------------


def with_title(spec: DirectorySpec, key: str, title: str) -> DirectorySpec:
    users = [dataclasses.replace(u, title=title) if u.key == key else u for u in spec.users]
    return dataclasses.replace(spec, users=users)


def with_members(
    spec: DirectorySpec, group: str, add: tuple[str, ...] = (), remove: tuple[str, ...] = ()
) -> DirectorySpec:
    groups = [
        dataclasses.replace(g, members=[m for m in g.members if m not in remove] + list(add))
        if g.name == group
        else g
        for g in spec.groups
    ]
    return dataclasses.replace(spec, groups=groups)


def set_title(dc: DC, spec: DirectorySpec, key: str, title: str) -> DirectorySpec:
    """Write on ``dc`` only; return ``spec`` with the same change."""
    conn = dc.admin_connection()
    conn.modify_s(user_dn_for(spec.user(key)), [(ldap.MOD_REPLACE, "title", [title.encode()])])
    conn.unbind_s()
    return with_title(spec, key, title)


def set_members(
    dc: DC, spec: DirectorySpec, group: str, add: tuple[str, ...] = (), remove: tuple[str, ...] = ()
) -> DirectorySpec:
    """Add/remove members of ``group`` on ``dc`` only; return ``spec`` with the same change."""

    def dn(member: str) -> bytes:
        if member.startswith("group:"):
            return group_dn_for(spec.group(member.removeprefix("group:"))).encode()
        return user_dn_for(spec.user(member)).encode()

    conn = dc.admin_connection()
    target = group_dn_for(spec.group(group))
    if add:
        conn.modify_s(target, [(ldap.MOD_ADD, "member", [dn(m) for m in add])])
    if remove:
        conn.modify_s(target, [(ldap.MOD_DELETE, "member", [dn(m) for m in remove])])
    conn.unbind_s()
    return with_members(spec, group, add, remove)


def add_user(dc: DC, spec: DirectorySpec, user: UserSpec) -> DirectorySpec:
    """A new user without password (created on ``dc`` only; replication brings it over)."""
    conn = dc.admin_connection()
    attrs = {
        "objectClass": [b"user"],
        "sAMAccountName": [user.key.encode()],
        "givenName": [user.given_name.encode()],
        "sn": [user.sn.encode()],
        "mail": [(user.mail or "").encode()],
        "department": [(user.department or "").encode()],
        "title": [(user.title or "").encode()],
        "userAccountControl": [str(UF_NORMAL_ACCOUNT | UF_PASSWD_NOTREQD).encode()],
    }
    conn.add_s(user_dn_for(user), [(k, v) for k, v in attrs.items() if v != [b""]])
    conn.unbind_s()
    return dataclasses.replace(spec, users=[*spec.users, user])


def has(dc: DC, dn: str, attr: str, value: bytes) -> bool:
    found = dc.read(dn, [attr])
    return found is not None and value in found.get(attr, [])


@contextlib.contextmanager
def on_search(when: Callable[[str, str], bool], action: Callable[[], None]) -> Iterator[list[str]]:
    """Call ``action`` once, just before the first search python-ldap sends for which
    ``when(base, filter)`` is true (the outage strikes between two pages of a search)."""
    original = ldap.ldapobject.SimpleLDAPObject.search_ext
    fired: list[str] = []

    def search_ext(obj, base, scope, filterstr="(objectClass=*)", *args, **kwargs):
        if not fired and when(base, filterstr):
            fired.append(base)
            action()
        return original(obj, base, scope, filterstr, *args, **kwargs)

    ldap.ldapobject.SimpleLDAPObject.search_ext = search_ext
    try:
        yield fired
    finally:
        ldap.ldapobject.SimpleLDAPObject.search_ext = original


def outage(dc: DC, kind: str) -> None:
    if kind == "stopped":
        dc.stop()
    else:
        dc.blackhole()


def recover(dc: DC, kind: str) -> None:
    if kind == "stopped":
        dc.start()
    else:
        dc.blackhole(False)


# -- tests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", OUTAGES)
def test_failover_between_runs_and_back(dc_pair_clean, kind):
    pair = dc_pair_clean
    spec = pair.spec
    with override_settings(**pair_settings(pair)):
        assert_ok(run(), pair.dc1, "full")
        assert_state(pair, spec)
        # Changes on DC2, replicated to DC1 before it goes away (and after: see below).
        spec = set_title(pair.dc2, spec, "carol", "Director")
        spec = set_members(pair.dc2, spec, "Engineering", remove=("bob",))
        outage(pair.dc1, kind)
        second = run()
        # No marker of DC2 yet: a full run there, whatever DC1's marker says.
        assert_ok(second, pair.dc2, "full")
        assert "first run against this server" in second.mode_reason
        assert_state(pair, spec)
        # Logins keep working through DC2.
        user = authenticate(username="alice", password=LAB_PASSWORD)
        assert user is not None and user.is_active
        assert DirectoryUser.objects.get(user=user).server == pair.dc2.uri
        assert django_state()["alice"]["groups"] == expected_state(pair, spec)["alice"]["groups"]
        # Only the marker of the DC the last run read is kept.
        assert set(SyncMarker.objects.values_list("server", flat=True)) == {pair.dc2.uri}
        # DC1 back, caught up by replication: the run there is full (the run on DC2 may have
        # written an older view than DC1's marker describes), then incremental again.
        spec = set_title(pair.dc2, spec, "erin", "Chief Admin")
        recover(pair.dc1, kind)
        pair.dc1.replicate_from(pair.dc2)
        third = run()
        assert_ok(third, pair.dc1, "full")
        assert_state(pair, spec)
        spec = set_title(pair.dc2, spec, "jdoe", "On Call")
        pair.dc1.replicate_from(pair.dc2)
        assert_ok(run(), pair.dc1, "incremental")
        assert_state(pair, spec)


@pytest.mark.parametrize("kind", OUTAGES)
def test_outage_mid_run_fails_cleanly_and_the_next_run_uses_dc2(dc_pair_clean, kind):
    pair = dc_pair_clean
    spec = pair.spec
    settings = pair_settings(pair, LDAP_SYNC_BIND_PAGESIZE=5)
    with override_settings(**settings):
        assert_ok(run(), pair.dc1, "full")
        before = django_state()
        marker = SyncMarker.objects.get(server=pair.dc1.uri)
        spec = set_title(pair.dc1, spec, "jdoe", "Support Lead")
        pair.dc2.replicate_from(pair.dc1)
        users_page = [0]

        def second_user_page(base: str, _filter: str) -> bool:
            if base.lower() == pair.lab_dn.lower():
                users_page[0] += 1
            return users_page[0] == 2

        with on_search(second_user_page, lambda: outage(pair.dc1, kind)) as fired:
            cut = run("full")
        assert fired, "the outage did not strike"
        assert cut.status == SyncRun.STATUS_FAILED
        assert cut.server == pair.dc1.uri
        assert not any(v for k, v in cut.counts.items() if k.endswith("removed")), cut.counts
        after = django_state()
        assert {k for k, s in after.items() if s["is_active"]} == {
            k for k, s in before.items() if s["is_active"]
        }
        assert not DirectoryUser.objects.filter(removed_at__isnull=False).exists()
        kept = SyncMarker.objects.get(server=pair.dc1.uri)
        assert (kept.invocation_id, kept.highest_usn) == (marker.invocation_id, marker.highest_usn)
        # The next run finds DC1 gone and finishes on DC2.
        retry = run()
        assert_ok(retry, pair.dc2, "full")
        assert_state(pair, spec)
        user = authenticate(username="bob", password=LAB_PASSWORD)
        assert user is not None
        assert DirectoryUser.objects.get(user=user).server == pair.dc2.uri


def test_change_made_on_dc2_while_reading_dc1_arrives_after_replication(dc_pair_clean):
    pair = dc_pair_clean
    dc1, dc2 = pair.dc1, pair.dc2
    spec = pair.spec
    with override_settings(**pair_settings(pair)):
        assert_ok(run(), dc1, "full")
        assert_state(pair, spec)
        assert SyncMarker.objects.get(server=dc1.uri).invocation_id == dc1.invocation_id()
        dc1.partition(dc2)  # no replication; clients reach both
        try:
            frank = UserSpec("frank", "Frank", "Fuchs", ou="IT", mail="frank@example.test",
                             department="IT", title="Intern")  # fmt: skip
            on_dc2 = add_user(dc2, spec, frank)
            on_dc2 = set_members(dc2, on_dc2, "R&D", add=("erin", "frank"))
            on_dc1 = set_title(dc1, spec, "carol", "Director")
            both = with_title(on_dc2, "carol", "Director")
            assert_ok(run(), dc1, "incremental")
            assert_state(pair, on_dc1)  # DC2's changes have not reached DC1
        finally:
            dc1.partition(dc2, on=False)
        pair.replicate()
        assert has(dc1, dc1.group_dn("R&D"), "member", user_dn_for(frank).encode())
        # Replicated changes got new DC1 USNs, above DC1's marker: the incremental run sees them.
        assert_ok(run(), dc1, "incremental")
        assert_state(pair, both)
        assert run("full").counts.get("users_updated", 0) == 0


def test_runs_alternating_between_dcs_never_skip_a_change(dc_pair_clean):
    """DC2 lags behind DC1; a run on DC2 writes DC2's older view. DC1's marker, from before
    that run, would make DC1's next incremental run skip DC1's change: it must not."""
    pair = dc_pair_clean
    dc1, dc2 = pair.dc1, pair.dc2
    spec = pair.spec
    with override_settings(**pair_settings(pair)):
        assert_ok(run(), dc1, "full")
        dc1.partition(dc2)
        try:
            changed = set_members(dc1, spec, "Engineering", remove=("bob",))
            changed = set_title(dc1, changed, "carol", "Director")
            assert_ok(run(), dc1, "incremental")
            assert_state(pair, changed)
            with override_settings(**pair_settings(pair, first=dc2)):
                # No marker of DC2: full, and Django shows DC2's (older) view.
                assert_ok(run(), dc2, "full")
                assert_state(pair, spec)
        finally:
            dc1.partition(dc2, on=False)
        pair.replicate()
        assert not has(dc2, dc2.group_dn("Engineering"), "member", dc2.user_dn("bob").encode())
        back = run()
        assert back.status == SyncRun.STATUS_SUCCESS and back.server == dc1.uri
        assert_state(pair, changed)  # bob out of Engineering, carol "Director"
        # DC1's marker predates the run on DC2: only a full run is right.
        assert back.mode == "full", back.mode_reason
    assert set(SyncMarker.objects.values_list("server", flat=True)) == {dc1.uri}


@pytest.mark.parametrize("restore", ["new invocationId", "old backup"])
def test_restored_dc_gets_a_full_run(dc_pair_clean, restore):
    pair = dc_pair_clean
    dc1 = pair.dc1
    spec = pair.spec
    with override_settings(**pair_settings(pair)):
        # A write after the template, so that an old copy of DC1 has lower USNs.
        spec = set_title(dc1, spec, "zoe", "Senior Rep")
        assert_ok(run(), dc1, "full")
        old_id = dc1.invocation_id()
        if restore == "new invocationId":
            dc1.stop()
            new_id = dc1.new_invocation_id()
            dc1.start()
            assert dc1.invocation_id() == new_id != old_id
            spec = set_title(dc1, spec, "erin", "Restorer")  # USNs move on: only the id tells
            reason = "invocationId changed"
        else:
            pair.restore(dc1)  # DC1's files of before zoe's change: same id, lower USN
            assert dc1.invocation_id() == old_id
            assert dc1.highest_usn() < SyncMarker.objects.get(server=dc1.uri).highest_usn
            reason = "highestCommittedUSN went backwards"
        result = run("incremental")
        assert_ok(result, dc1, "full")
        assert reason in result.mode_reason
        assert SyncMarker.objects.get(server=dc1.uri).invocation_id == dc1.invocation_id()
        if restore == "old backup":
            # Whether zoe's change came back from DC2 yet is replication's business: a full
            # run after forced replication must show the directory as both DCs now agree.
            pair.replicate()
            title = dc1.read(dc1.user_dn("zoe"), ["title"])["title"][0].decode()
            assert title == pair.dc2.read(dc1.user_dn("zoe"), ["title"])["title"][0].decode()
            spec = dataclasses.replace(
                spec, users=[dataclasses.replace(u, title=title) if u.key == "zoe" else u for u in spec.users]
            )
            assert_ok(run("full"), dc1, "full")
        assert_state(pair, spec)


def test_a_watch_fails_over_to_dc2_and_back_without_missing_a_change(dc_pair_clean):
    """``syncldap watch`` on the pair: DC1 stops while the watch runs; the next batches go to
    DC2 (full there: no marker of DC2), with DC2's changes; DC1 comes back and, once it has
    replicated, the watch follows it again (full first), and nothing is missed."""
    from adldap_auth.watch import WatchOptions, watch

    pair = dc_pair_clean
    specs = [pair.spec]
    results: list = []
    options = WatchOptions(interval=0.3, duration=240)

    def on_batch(result) -> None:
        results.append(result)
        assert result.ok, result.error
        step = len(results)
        if step == 2:  # a quiet incremental batch on DC1 after the first, full one
            pair.dc1.stop()
            specs.append(set_title(pair.dc2, specs[-1], "carol", "Director"))
        elif step == 3:  # the first batch on DC2
            assert (result.server, result.mode) == (pair.dc2.uri, "full"), result.mode_reason
            assert_state(pair, specs[-1])
            specs.append(set_members(pair.dc2, specs[-1], "Engineering", remove=("bob",)))
        elif step == 4:  # incremental on DC2, from DC2's own marker
            assert (result.server, result.mode) == (pair.dc2.uri, "incremental")
            assert_state(pair, specs[-1])
            specs.append(set_title(pair.dc2, specs[-1], "erin", "Chief Admin"))
            pair.dc1.start()
            pair.dc1.replicate_from(pair.dc2)
        elif step == 5:  # DC1 is first in the order again: full there, then incremental
            assert (result.server, result.mode) == (pair.dc1.uri, "full"), result.mode_reason
            assert_state(pair, specs[-1])
            options.stop.set()

    options.on_batch = on_batch
    with override_settings(**pair_settings(pair)):
        summary = watch(options)
    assert summary.stopped_by == "stop" and summary.failed == 0, [r.error for r in results]
    assert [r.mode for r in results] == ["full", "incremental", "full", "incremental", "full"]
