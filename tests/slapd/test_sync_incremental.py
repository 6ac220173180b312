"""Incremental runs end in exactly the state a full run would produce, and cost less."""

from __future__ import annotations

import dataclasses
import time

import ldap
import pytest
from django.contrib.auth import get_user_model
from django.test import override_settings

from adldap_auth.models import SyncMarker, SyncRun
from adldap_auth.sync import SyncOptions, run_sync
from tests.helpers import SearchSpy, django_state, samba_settings, slapd_settings
from tests.lab.generator import mutate, synthetic
from tests.samba.test_sync_full import expected_slapd_state

pytestmark = pytest.mark.django_db

CHANGE_COUNTERS = ("created", "updated", "removed", "added", "restored", "adopted", "written")


def changes_of(result) -> dict[str, int]:
    return {k: v for k, v in result.counts.items() if k.endswith(CHANGE_COUNTERS) and v}


def incremental_settings(server, **extra):
    values = {
        "LDAP_SYNC_INCREMENTAL_TIME_OFFSET": 0,
        "LDAP_SYNC_REMOVAL_THRESHOLD": None,
        "LDAP_SYNC_INCREMENTAL_BETWEEN_FULL": -1,
        **extra,
    }
    return slapd_settings(server, **values)


def assert_matches_spec(server) -> None:
    expected = expected_slapd_state(server)
    actual = django_state()
    active = {key for key, state in actual.items() if state["is_active"]}
    assert active == set(expected)
    for key, state in expected.items():
        assert {name: actual[key][name] for name in state} == state, key


#: Seed 0 runs in every pass (``make check``, the Django matrix); the other seeds, more random
#: samples at about 5 s each, are ``slow``: the full passes of ``make test`` run them.
RANDOM_SEEDS = [0, *(pytest.param(seed, marks=pytest.mark.slow) for seed in range(1, 4))]


@pytest.mark.parametrize("seed", RANDOM_SEEDS)
def test_incremental_after_random_changes_equals_a_full_run(make_slapd, seed):
    spec = synthetic(users=300, groups=40, depth=4, seed=seed, cycles=1)
    server = make_slapd(spec=spec)
    with override_settings(**incremental_settings(server)):
        first = run_sync(SyncOptions())
        assert first.mode == "full" and first.ok, first.error
        for step in range(3):
            time.sleep(1.1)  # modifyTimestamp has a one-second resolution
            new_spec, _changes = mutate(
                server.spec, fraction_users=0.05, fraction_memberships=0.05, seed=seed * 10 + step
            )
            server.apply(server.spec, new_spec)
            result = run_sync(SyncOptions(mode="incremental"))
            assert result.mode == "incremental", result.mode_reason
            assert result.ok, result.error or result.problems
            assert_matches_spec(server)
            # A full run over the same directory must find nothing left to do.
            full = run_sync(SyncOptions(mode="full"))
            assert full.ok
            assert changes_of(full) == {}, (step, full.counts)


def test_incremental_reads_only_changed_users(make_slapd):
    spec = synthetic(users=1000, groups=50, seed=7)
    server = make_slapd(spec=spec)
    with override_settings(**incremental_settings(server)):
        assert run_sync(SyncOptions(mode="full")).ok
        # The offline load stamped every entry with one second, which is the marker: the
        # first incremental re-reads that second (timestamps are compared with >=).
        time.sleep(1.1)
        warmup, _ = mutate(server.spec, fraction_users=0.01, fraction_memberships=0.0, seed=2)
        server.apply(server.spec, warmup)
        assert run_sync(SyncOptions(mode="incremental")).ok
        time.sleep(1.1)
        new_spec, changes = mutate(server.spec, fraction_users=0.01, fraction_memberships=0.0, seed=3)
        server.apply(server.spec, new_spec)
        with SearchSpy().active() as spy:
            result = run_sync(SyncOptions(mode="incremental"))
    assert result.ok, result.error
    # The changed users, plus at most those stamped in the marker's own second.
    assert 0 < result.counts["users_seen"] <= 2 * len(changes.users_changed) + 5
    assert result.counts["users_swept"] == len(new_spec.users)
    assert spy.count == result.ldap_searches


def _regroup(spec, changes: dict[str, list[str]]):
    """A copy of ``spec`` where the named groups get new member lists."""
    groups = [
        dataclasses.replace(g, members=changes[g.name]) if g.name in changes else g
        for g in spec.groups
    ]
    return dataclasses.replace(spec, groups=groups)


def test_incremental_follows_nesting_changes_and_rechecks_only_users_below_them(make_slapd):
    spec = synthetic(users=400, groups=40, depth=4, seed=11)
    server = make_slapd(spec=spec)
    # Groups one level above the leaves ("L2 ...") lose or gain a leaf group ("L3 ...").
    nested = [g for g in spec.groups if any(m.startswith("group:L3 ") for m in g.members)]
    parent = nested[0]  # loses one nested group...
    child = next(m for m in parent.members if m.startswith("group:"))
    host = nested[1]  # ...and another one gains a leaf group it did not hold
    leaf = next(
        g for g in spec.groups if g.name.startswith("L3 ") and f"group:{g.name}" not in host.members
    )
    joiner = next(u.key for u in spec.users if u.key not in leaf.members and not u.disabled)
    new_spec = _regroup(
        spec,
        {
            parent.name: [m for m in parent.members if m != child],
            host.name: [*host.members, f"group:{leaf.name}"],
            leaf.name: [*leaf.members, joiner],
        },
    )
    changed = [parent, host, leaf]
    with override_settings(**incremental_settings(server)):
        assert run_sync(SyncOptions(mode="full")).ok
        # Move the marker past the second that stamped every entry of the load.
        time.sleep(1.1)  # modifyTimestamp has a one-second resolution
        warmup, _ = mutate(server.spec, fraction_users=0.01, fraction_memberships=0.0, seed=2)
        server.apply(server.spec, warmup)
        assert run_sync(SyncOptions(mode="incremental")).ok
        time.sleep(1.1)
        new_spec = _regroup(warmup, {g.name: new_spec.group(g.name).members for g in changed})
        server.apply(server.spec, new_spec)
        result = run_sync(SyncOptions(mode="incremental"))
    assert result.ok, result.error or result.problems
    assert_matches_spec(server)
    # Rechecked: users below the moved groups (either side of the change), and the joiner.
    moved = {child.removeprefix("group:"), leaf.name}
    below = {
        user
        for closure in (spec.expected_groups(), new_spec.expected_groups())
        for user, groups in closure.items()
        if groups & moved
    }
    rechecked = result.counts["memberships_rechecked_users"]
    assert 0 < rechecked <= len(below | {joiner})
    assert len(below) < len(spec.users) // 2  # so the bound above means something
    assert result.counts["memberships_added"] > 0 and result.counts["memberships_removed"] > 0


def test_deleted_user_is_removed_by_the_next_incremental(make_slapd):
    spec = synthetic(users=50, groups=5, seed=2)
    server = make_slapd(spec=spec)
    victim = next(u for u in spec.users if not u.disabled)
    with override_settings(**incremental_settings(server)):
        assert run_sync(SyncOptions()).ok
        server.admin_connection().delete_s(server.user_dn(victim.key))
        result = run_sync(SyncOptions(mode="incremental"))
    assert result.mode == "incremental" and result.ok
    assert result.counts["users_removed"] == 1
    assert not get_user_model().objects.get(username=victim.key).is_active


def test_first_run_is_full_and_between_full_counts(make_slapd):
    server = make_slapd(spec=synthetic(users=20, groups=3, seed=1))
    with override_settings(**incremental_settings(server, LDAP_SYNC_INCREMENTAL_BETWEEN_FULL=2)):
        modes = [run_sync(SyncOptions()).mode for _ in range(5)]
    assert modes == ["full", "incremental", "incremental", "full", "incremental"]


def test_lost_or_corrupt_marker_forces_full(make_slapd):
    server = make_slapd(spec=synthetic(users=20, groups=3, seed=1))
    with override_settings(**incremental_settings(server)):
        assert run_sync(SyncOptions()).mode == "full"
        SyncMarker.objects.update(timestamp="not a time")
        result = run_sync(SyncOptions(mode="incremental"))
        assert result.mode == "full" and "corrupt" in result.mode_reason
        SyncMarker.objects.all().delete()
        assert run_sync(SyncOptions(mode="incremental")).mode == "full"


def test_failed_run_keeps_the_old_marker(make_slapd):
    server = make_slapd(spec=synthetic(users=20, groups=3, seed=1))
    with override_settings(**incremental_settings(server)):
        assert run_sync(SyncOptions()).ok
        before = SyncMarker.objects.get()
        with override_settings(LDAP_SYNC_USER_SEARCH="ou=missing,dc=example,dc=test"):
            failed = run_sync(SyncOptions(mode="incremental"))
        assert failed.status == SyncRun.STATUS_FAILED
        after = SyncMarker.objects.get()
    assert (after.timestamp, after.incrementals_since_full) == (
        before.timestamp,
        before.incrementals_since_full,
    )


def test_failover_to_another_server_forces_full(make_slapd):
    spec = synthetic(users=20, groups=3, seed=1)
    first, second = make_slapd(spec=spec), make_slapd(spec=spec)
    with override_settings(**incremental_settings(first)):
        assert run_sync(SyncOptions()).ok
    with override_settings(
        **incremental_settings(second, LDAP_SYNC_BIND_URI=["ldap://127.0.0.1:9", second.uri])
    ):
        result = run_sync(SyncOptions(mode="incremental"))
    assert result.server == second.uri
    assert result.mode == "full" and "first run" in result.mode_reason


@pytest.mark.samba
def test_samba_incremental_uses_usn_of_the_same_dc_and_sees_group_changes(samba_clean):
    dc = samba_clean
    conn = dc.admin_connection()
    with override_settings(**samba_settings(dc, LDAP_SYNC_REMOVAL_THRESHOLD=None)):
        assert run_sync(SyncOptions(mode="full")).ok
        marker = SyncMarker.objects.get(server=dc.uri)
        assert marker.invocation_id and marker.highest_usn
        # erin joins "R&D" (nested under Staff, Everyone); her own entry does not change.
        conn.modify_s(dc.group_dn("R&D"), [(ldap.MOD_ADD, "member", [dc.user_dn("erin").encode()])])
        # bob leaves "Engineering", which was his only way into R&D, Staff and Everyone.
        conn.modify_s(
            dc.group_dn("Engineering"), [(ldap.MOD_DELETE, "member", [dc.user_dn("bob").encode()])]
        )
        result = run_sync(SyncOptions(mode="incremental"))
        assert result.mode == "incremental", result.mode_reason
        assert result.ok, result.error
        state = django_state()
        assert {"R&D", "Staff", "Everyone"} <= state["erin"]["groups"]
        assert not {"Engineering", "R&D", "Staff", "Everyone"} & state["bob"]["groups"]
        assert {"Cycle A", "Cycle B"} <= state["bob"]["groups"]
        full = run_sync(SyncOptions(mode="full"))
        assert changes_of(full) == {}, full.counts
