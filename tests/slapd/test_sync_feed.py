"""Incremental runs from the change feed (LDAP_SYNC_CHANGE_TRACKING = "contentsync", slapd with
syncprov): the same state as a full run, without a sweep of the users or a read of every group."""

from __future__ import annotations

import time

import ldap
import pytest
from django.test import override_settings

from adldap_auth.models import SyncMarker
from adldap_auth.nesting import mark_unsettled, memberships_unsettled
from adldap_auth.sync import SyncOptions, run_sync
from tests.helpers import SearchSpy
from tests.lab import ldif
from tests.lab.generator import mutate, synthetic
from tests.slapd.test_sync_incremental import assert_matches_spec, changes_of, incremental_settings

pytestmark = pytest.mark.django_db

FEED_OVERLAYS = ("memberof", "syncprov")


def apply(server, new_spec) -> None:
    """``server.apply``, then one more write outside the scopes. slapd 2.5 may leave the
    contextCSN (what a refresh reads up to) behind the last writes of a burst of concurrent
    ones until its next write: the feed shows them one write later. A site's directory keeps
    being written; here the extra write stands for that."""
    server.apply(server.spec, new_spec)
    admin = server.admin_connection()
    admin.modify_s(ldif.BASE_DN, [(ldap.MOD_REPLACE, "description", [str(time.time()).encode()])])

#: Seed 0 in every pass; the others in the full passes (``slow``).
RANDOM_SEEDS = [0, *(pytest.param(seed, marks=pytest.mark.slow) for seed in range(1, 4))]


def feed_settings(server, **extra):
    return incremental_settings(server, LDAP_SYNC_CHANGE_TRACKING="contentsync", **extra)


@pytest.mark.parametrize("seed", RANDOM_SEEDS)
def test_feed_incremental_after_random_changes_equals_a_full_run(make_slapd, seed):
    spec = synthetic(users=300, groups=40, depth=4, seed=seed, cycles=1)
    server = make_slapd(spec=spec, overlays=FEED_OVERLAYS)
    with override_settings(**feed_settings(server)):
        first = run_sync(SyncOptions())
        assert first.mode == "full" and first.ok, first.error
        assert set(SyncMarker.objects.get().feed_cookies) == {"users", "groups"}
        for step in range(3):
            new_spec, _changes = mutate(
                server.spec, fraction_users=0.05, fraction_memberships=0.05, seed=seed * 10 + step
            )
            apply(server, new_spec)
            result = run_sync(SyncOptions(mode="incremental"))
            assert result.mode == "incremental", result.mode_reason
            assert result.ok, result.error or result.problems
            assert "users_swept" not in result.counts  # no sweep: the feed names deletions
            assert_matches_spec(server)
            full = run_sync(SyncOptions(mode="full"))
            assert full.ok
            assert changes_of(full) == {}, (step, full.counts)


def test_feed_incremental_reads_only_what_changed(make_slapd):
    spec = synthetic(users=1000, groups=50, seed=7)
    server = make_slapd(spec=spec, overlays=FEED_OVERLAYS)
    with override_settings(**feed_settings(server)):
        assert run_sync(SyncOptions(mode="full")).ok
        new_spec, changes = mutate(
            server.spec, fraction_users=0.01, fraction_memberships=0.0, seed=3
        )
        apply(server, new_spec)
        with SearchSpy().active() as spy:
            result = run_sync(SyncOptions(mode="incremental"))
        unchanged = run_sync(SyncOptions(mode="incremental"))
    assert result.ok and result.mode == "incremental", result.error or result.mode_reason
    assert result.counts["users_seen"] == len(changes.users_changed) + len(changes.users_added)
    assert result.counts["feed_users_deleted"] == len(changes.users_removed)
    assert spy.count == result.ldap_searches <= 4  # rootDSE, schema, two feeds
    assert unchanged.ok and unchanged.counts.get("users_seen", 0) == 0
    assert changes_of(unchanged) == {}


def test_a_refused_cookie_makes_the_run_full(make_slapd):
    server = make_slapd(spec=synthetic(users=50, groups=5, seed=1), overlays=FEED_OVERLAYS)
    with override_settings(**feed_settings(server)):
        assert run_sync(SyncOptions(mode="full")).ok
        SyncMarker.objects.update(feed_cookies={"users": "rid=000", "groups": "rid=000"})
        result = run_sync(SyncOptions(mode="incremental"))
        assert result.ok and result.mode == "full", result.mode_reason
        assert "refused the change-feed cookie" in result.mode_reason
        assert run_sync(SyncOptions(mode="incremental")).mode == "incremental"


def test_without_the_feed_the_run_uses_timestamps(make_slapd, caplog):
    server = make_slapd(spec=synthetic(users=50, groups=5, seed=1))  # no syncprov
    with override_settings(**feed_settings(server)):
        first = run_sync(SyncOptions(mode="full"))
        result = run_sync(SyncOptions(mode="incremental"))
    assert first.ok and result.ok and result.mode == "incremental"
    assert "users_swept" in result.counts  # today's method
    assert SyncMarker.objects.get().feed_cookies == {}
    assert "does not offer Content Synchronization" in caplog.text


def test_an_unchanged_feed_after_a_run_that_died_rechecks_and_removes_nobody(make_slapd):
    """A run that died after writing memberships leaves them unsettled: the next run, even
    with nothing in the feed, rechecks every user's and must know every present user."""
    server = make_slapd(spec=synthetic(users=50, groups=5, seed=1), overlays=FEED_OVERLAYS)
    with override_settings(**feed_settings(server)):
        assert run_sync(SyncOptions(mode="full")).ok
        mark_unsettled()
        result = run_sync(SyncOptions(mode="incremental"))
        assert result.ok and result.mode == "incremental", result.error or result.mode_reason
        assert result.counts.get("users_removed", 0) == 0, result.counts
        assert result.counts["memberships_recheck_all"] == 1
        assert_matches_spec(server)
        assert not memberships_unsettled()


@pytest.mark.parametrize("scope", ["users", "groups"])
def test_a_connection_cut_mid_refresh_fails_the_run_and_the_next_one_loses_nothing(
    make_slapd, scope
):
    """The connection drops in the middle of a refresh's messages (users' or groups'): the
    run fails having written nothing and kept its cookies; the next run reads the changes."""
    from urllib.parse import urlsplit

    from adldap_auth.tracking import CONTENT_SYNC_OID
    from tests.helpers import django_state
    from tests.lab.cutting_proxy import CuttingProxy

    server = make_slapd(spec=synthetic(users=400, groups=30, seed=6), overlays=FEED_OVERLAYS)
    proxy = CuttingProxy(urlsplit(server.uri).port)
    try:
        settings = feed_settings(server, LDAP_SYNC_BIND_URI=proxy.uri)
        with override_settings(**settings):
            assert run_sync(SyncOptions(mode="full")).ok
            cookies = SyncMarker.objects.get().feed_cookies
            before = django_state()
            new_spec, _ = mutate(server.spec, fraction_users=0.3, fraction_memberships=0.1, seed=7)
            apply(server, new_spec)
            # The users' refresh is the first sync search of a run; the groups' one names
            # their object class.
            marker = CONTENT_SYNC_OID.encode() if scope == "users" else b"groupOfNames"
            proxy.cut_after(marker, keep=400)
            failed = run_sync(SyncOptions(mode="incremental"))
            assert proxy.cuts == 1
            assert failed.status == "failed" and failed.error_kind == "IncompleteRead"
            assert "content sync of" in failed.error and "stopped early" in failed.error
            assert django_state() == before  # read before any write: nothing written
            assert SyncMarker.objects.get().feed_cookies == cookies
            again = run_sync(SyncOptions(mode="incremental"))
            assert again.ok and again.mode == "incremental", again.error or again.mode_reason
            assert_matches_spec(server)
    finally:
        proxy.close()
