"""``syncldap watch`` on slapd with syncprov: changes applied as the server reports them, the
state a full run gives, quiet batches folded into one record, outages survived.

The watch runs in the test's thread (it owns the database connection); a second thread only
writes to the directory, one change at a time, and waits until the watch has applied it.
"""

from __future__ import annotations

import threading
import time

import pytest
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.test import Client, override_settings

from adldap_auth.models import SyncMarker, SyncRun
from adldap_auth.sync import SyncOptions, SyncResult, run_sync
from adldap_auth.watch import WatchOptions, watch
from tests.helpers import django_state
from tests.lab.generator import mutate, synthetic
from tests.samba.test_sync_full import expected_slapd_state
from tests.slapd.test_sync_feed import FEED_OVERLAYS, apply, feed_settings
from tests.slapd.test_sync_incremental import assert_matches_spec, changes_of

pytestmark = pytest.mark.django_db

#: Longer than any change may take to arrive: a change applied sooner was rung in by the
#: server, not by the clock.
SLOW_CLOCK = 30.0


def matches(expected: dict[str, dict]) -> bool:
    actual = django_state()
    active = {key for key, state in actual.items() if state["is_active"]}
    return active == set(expected) and all(
        {name: actual[key][name] for name in state} == state for key, state in expected.items()
    )


class Changer(threading.Thread):
    """Applies ``steps`` random changes to the directory once the watch's first batch is
    done, each after the previous one reached the database; then stops the watch."""

    def __init__(self, server, options: WatchOptions, steps: int, seed: int = 0) -> None:
        super().__init__(daemon=True)
        self.server, self.options, self.steps, self.seed = server, options, steps, seed
        self.ready = threading.Event()
        self.applied = threading.Event()
        self.expected: dict[str, dict] | None = None
        self.written_at = 0.0
        self.latencies: list[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.ready.wait(60)
            for step in range(self.steps):
                new_spec, _changes = mutate(
                    self.server.spec,
                    fraction_users=0.02,
                    fraction_memberships=0.02,
                    seed=self.seed * 100 + step,
                    remove_users=1,
                )
                self.applied.clear()
                self.expected = None
                apply(self.server, new_spec)
                self.written_at = time.monotonic()
                self.expected = expected_slapd_state(self.server)
                if not self.applied.wait(SLOW_CLOCK - 5):
                    raise AssertionError(f"change {step} not applied within {SLOW_CLOCK - 5} s")
        except BaseException as error:  # reported by the test
            self.error = error
        finally:
            self.options.stop.set()

    def on_batch(self, result: SyncResult) -> None:
        """Called by the watch after each batch (the test's thread)."""
        assert result.ok, result.error
        self.ready.set()
        expected = self.expected
        if expected is not None and not self.applied.is_set() and matches(expected):
            self.latencies.append(time.monotonic() - self.written_at)
            self.applied.set()


def watch_with(server, changer_steps: int, **options) -> tuple[Changer, object]:
    watch_options = WatchOptions(interval=SLOW_CLOCK, duration=120, **options)
    changer = Changer(server, watch_options, changer_steps)
    watch_options.on_batch = changer.on_batch
    changer.start()
    summary = watch(watch_options)
    changer.join(10)
    if changer.error:
        raise changer.error
    return changer, summary


def test_watch_applies_each_change_when_the_server_reports_it(make_slapd):
    server = make_slapd(
        spec=synthetic(users=300, groups=40, depth=4, seed=5), overlays=FEED_OVERLAYS
    )
    with override_settings(**feed_settings(server)):
        changer, summary = watch_with(server, changer_steps=4)
        assert summary.stopped_by == "stop" and summary.failed == 0
        assert summary.full == 1  # the first batch; every other one incremental
        assert len(changer.latencies) == 4
        print("latencies", [round(x, 3) for x in changer.latencies])
        assert max(changer.latencies) < SLOW_CLOCK - 5  # rung by the server, not the clock
        assert_matches_spec(server)
        full = run_sync(SyncOptions(mode="full"))
    assert full.ok and changes_of(full) == {}, full.counts


def test_quiet_batches_share_one_run_record(make_slapd):
    server = make_slapd(spec=synthetic(users=30, groups=4, seed=1), overlays=FEED_OVERLAYS)
    with override_settings(**feed_settings(server)):
        summary = watch(WatchOptions(interval=0.05, max_batches=6))
    assert summary.batches == 6 and summary.changed == 1  # the first, full, batch
    records = list(SyncRun.objects.order_by("pk"))
    assert [r.mode for r in records] == ["full", "incremental"]
    assert records[1].counts["watch_batches"] == 5
    assert records[1].counts["feed_unchanged"] == 1
    assert all(r.status == SyncRun.STATUS_SUCCESS for r in records)


def test_a_quiet_batch_reads_two_feeds_and_little_of_the_database(make_slapd):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    server = make_slapd(spec=synthetic(users=200, groups=20, seed=2), overlays=FEED_OVERLAYS)
    with override_settings(**feed_settings(server)):
        assert run_sync(SyncOptions(mode="full")).ok
        with CaptureQueriesContext(connection) as queries:
            quiet = run_sync(SyncOptions(mode="incremental"))
    assert quiet.ok and quiet.counts.get("feed_unchanged") == 1, quiet.counts
    assert quiet.ldap_searches == 4  # rootDSE, schema, the two feeds
    tables = " ".join(q["sql"] for q in queries.captured_queries)
    # neither every user's link nor the stored nesting is read
    assert "adldap_auth_directoryuser" not in tables and "adldap_auth_groupnode" not in tables
    assert len(queries.captured_queries) <= 15, [q["sql"] for q in queries.captured_queries]


def test_a_removed_users_session_ends_in_the_batch_that_removes_them(make_slapd):
    server = make_slapd(spec=synthetic(users=40, groups=4, seed=3), overlays=FEED_OVERLAYS)
    with override_settings(
        **feed_settings(server), SESSION_ENGINE="django.contrib.sessions.backends.db"
    ):
        assert run_sync(SyncOptions(mode="full")).ok
        new_spec, changes = mutate(
            server.spec, fraction_users=0, fraction_memberships=0, remove_users=1, seed=1
        )
        user = get_user_model().objects.get(username=changes.users_removed[0])
        client = Client()
        client.force_login(user)
        assert Session.objects.count() == 1
        apply(server, new_spec)
        summary = watch(WatchOptions(interval=0.05, max_batches=2))
    assert summary.failed == 0
    assert not get_user_model().objects.get(pk=user.pk).is_active
    assert Session.objects.count() == 0


def test_the_watch_survives_a_server_restart_and_resumes_from_its_cookie(make_slapd):
    server = make_slapd(spec=synthetic(users=60, groups=6, seed=4), overlays=FEED_OVERLAYS)
    settings = feed_settings(server, LDAP_SYNC_NETWORK_TIMEOUT=1)
    with override_settings(**settings):
        assert run_sync(SyncOptions(mode="full")).ok
        cookie = SyncMarker.objects.get().feed_cookies["users"]
        server.stop()
        new_spec, _ = mutate(server.spec, fraction_users=0.1, fraction_memberships=0.1, seed=9)
        options = WatchOptions(interval=0.2, duration=40)
        results: list[SyncResult] = []

        def on_batch(result: SyncResult) -> None:
            # In the watch's thread: slapd dies with the thread that started it.
            results.append(result)
            if len(results) == 2:  # two failed batches, the second after a back-off
                server.start()
                apply(server, new_spec)
            elif result.ok:
                options.stop.set()

        options.on_batch = on_batch
        summary = watch(options)
        assert summary.stopped_by == "stop", [r.error for r in results]
        assert [r.error_kind for r in results[:2]] == ["DirectoryUnavailable"] * 2
        resumed = results[2]
        assert resumed.ok and resumed.mode == "incremental", resumed.mode_reason
        assert resumed.counts.get("feed_users_changed"), resumed.counts  # from the cookie
        assert SyncMarker.objects.get().feed_cookies["users"] != cookie
        assert_matches_spec(server)


def test_a_forgotten_cookie_makes_the_watchs_batch_full_and_says_why(make_slapd):
    server = make_slapd(spec=synthetic(users=30, groups=4, seed=6), overlays=FEED_OVERLAYS)
    with override_settings(**feed_settings(server)):
        assert run_sync(SyncOptions(mode="full")).ok
        SyncMarker.objects.update(feed_cookies={"users": "rid=000", "groups": "rid=000"})
        summary = watch(WatchOptions(interval=0.05, max_batches=2))
    first = SyncRun.objects.order_by("pk")[1]
    assert summary.failed == 0 and first.mode == "full"
    assert "refused the change-feed cookie" in first.mode_reason
    assert SyncRun.objects.order_by("pk").last().mode == "incremental"


def test_the_celery_task_watches_for_its_window_or_skips_when_the_lock_is_taken(make_slapd):
    from adldap_auth.locking import RunLock
    from adldap_auth.tasks import syncldap_watch

    server = make_slapd(spec=synthetic(users=30, groups=4, seed=7), overlays=FEED_OVERLAYS)
    with override_settings(**feed_settings(server, LDAP_SYNC_WATCH_INTERVAL=0.2)):
        started = time.monotonic()
        summary = syncldap_watch.apply(kwargs={"duration": 1.5}).get()
        took = time.monotonic() - started
        lock = RunLock()
        lock.acquire()
        try:
            skipped = syncldap_watch.apply(kwargs={"duration": 1.5}).get()
        finally:
            lock.release()
    assert summary["stopped_by"] == "duration" and summary["failed"] == 0, summary
    assert summary["batches"] >= 3 and summary["full"] == 1, summary
    assert 1.5 <= took < 10
    assert skipped["status"] == "skipped"


def test_a_connection_dropped_while_waiting_rings_and_the_watch_carries_on(make_slapd):
    """The server goes away while the watch waits on its persistent search: the search ends,
    the batch that follows fails, the next one (server back) resumes from the cookie."""
    server = make_slapd(spec=synthetic(users=40, groups=4, seed=8), overlays=FEED_OVERLAYS)
    with override_settings(**feed_settings(server, LDAP_SYNC_NETWORK_TIMEOUT=1)):
        options = WatchOptions(interval=SLOW_CLOCK, duration=60)
        results: list[SyncResult] = []
        stopper: list[threading.Thread] = []
        new_spec, _ = mutate(server.spec, fraction_users=0.1, fraction_memberships=0.1, seed=2)

        def on_batch(result: SyncResult) -> None:
            results.append(result)
            if len(results) == 1:  # stop slapd while the watch waits (from another thread)
                stopper.append(threading.Thread(target=lambda: (time.sleep(1), server.stop())))
                stopper[0].start()
            elif not result.ok and not server.running:
                server.start()  # here: slapd dies with the thread that started it
                apply(server, new_spec)
            elif result.ok:
                options.stop.set()

        options.on_batch = on_batch
        started = time.monotonic()
        summary = watch(options)
    assert time.monotonic() - started < SLOW_CLOCK  # the dropped search rang; no clock wait
    kinds = [r.error_kind for r in results]
    assert kinds[0] == "" and "DirectoryUnavailable" in kinds, kinds
    assert summary.stopped_by == "stop" and results[-1].mode == "incremental"
    with override_settings(**feed_settings(server)):
        assert_matches_spec(server)


def test_a_waiting_watch_checks_its_lock_every_few_seconds_not_at_every_poll(make_slapd):
    """A watch waits most of its life: one lock query per poll (twice a second) would be
    170,000 a day. While it waits 3 s it checks the lock at most once."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    server = make_slapd(spec=synthetic(users=20, groups=3, seed=9), overlays=FEED_OVERLAYS)
    with override_settings(**feed_settings(server)):
        assert run_sync(SyncOptions(mode="full")).ok
        with CaptureQueriesContext(connection) as queries:
            summary = watch(WatchOptions(interval=3, max_batches=2))
    lock_queries = [q["sql"] for q in queries.captured_queries if "synclock" in q["sql"]]
    assert summary.batches == 2
    # taking and releasing the lock, and the batches' own checks: 6 on SQLite
    assert len(lock_queries) <= 8, lock_queries


def test_a_database_that_fails_between_batches_costs_one_failed_batch(make_slapd, monkeypatch):
    """The database goes away while the watch waits (a restart, an idle connection dropped):
    the next batch cannot even write its run record. It counts as a failed batch, backs
    off, and the one after it runs; before, the error ended the watch."""
    from django.db import OperationalError
    from django.db.models import QuerySet

    server = make_slapd(spec=synthetic(users=20, groups=3, seed=10), overlays=FEED_OVERLAYS)
    original = QuerySet.create
    calls = []

    def create(self, **kwargs):
        calls.append(self.model)
        if self.model is SyncRun and sum(1 for m in calls if m is SyncRun) == 2:
            raise OperationalError("server closed the connection unexpectedly")
        return original(self, **kwargs)

    monkeypatch.setattr(QuerySet, "create", create)
    with override_settings(**feed_settings(server)):
        summary = watch(WatchOptions(interval=0.05, max_batches=3))
    assert summary.failed == 1 and summary.stopped_by == "max_batches", summary
    assert summary.last.ok and summary.last.mode == "incremental"


def test_the_persistent_searches_keep_one_connection_from_batch_to_batch(make_slapd, monkeypatch):
    """Each batch opens its own session; the doorbell's connection (a connect and a bind, a
    TLS handshake on a real site) is opened once, not after every batch."""
    from adldap_auth.directory.connection import DirectorySession

    server = make_slapd(spec=synthetic(users=20, groups=3, seed=11), overlays=FEED_OVERLAYS)
    opened = []
    original = DirectorySession.open.__func__

    def counting_open(cls, config):
        opened.append(config)
        return original(cls, config)

    monkeypatch.setattr(DirectorySession, "open", classmethod(counting_open))
    with override_settings(**feed_settings(server)):
        summary = watch(WatchOptions(interval=0.2, max_batches=5))
    assert summary.batches == 5 and summary.failed == 0
    assert len(opened) == 5 + 1, len(opened)  # the batches', and one for the doorbell
