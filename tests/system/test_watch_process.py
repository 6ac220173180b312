"""``manage.py syncldap watch`` as a process: SIGTERM stops it between batches, SIGKILL loses
nothing (the next watch resumes from the stored cookie), and what it leaves is what a full
run gives (a full run afterwards has nothing to change)."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from tests.helpers import slapd_settings
from tests.lab.generator import mutate, synthetic
from tests.site import Site
from tests.slapd.test_sync_feed import FEED_OVERLAYS, apply
from tests.slapd.test_sync_incremental import CHANGE_COUNTERS

SETTINGS = {
    "LDAP_SYNC_CHANGE_TRACKING": "contentsync",
    "LDAP_SYNC_INCREMENTAL_TIME_OFFSET": 0,
    "LDAP_SYNC_REMOVAL_THRESHOLD": None,
    "LDAP_SYNC_INCREMENTAL_BETWEEN_FULL": -1,
}


def runs(site: Site) -> list[tuple]:
    """(id, mode, status, counts) of every run record, oldest first."""
    rows = site.query("SELECT id, mode, status, counts FROM adldap_auth_syncrun ORDER BY id")
    return [(i, m, s, json.loads(c) if isinstance(c, str) else c) for i, m, s, c in rows]


def wait_for(predicate, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def applied_changes(site: Site, after: int) -> bool:
    """Whether a run after record ``after`` ended having written something."""
    return any(
        status == "success" and any(k.endswith(CHANGE_COUNTERS) and v for k, v in counts.items())
        for pk, _mode, status, counts in runs(site)
        if pk > after
    )


def assert_a_full_run_changes_nothing(site: Site, settings: dict) -> None:
    full = site.run_manage("syncldap", "full", "--json", settings=settings)
    assert full.returncode == 0, full.stderr
    counts = json.loads(full.stdout)["counts"]
    changed = {k: v for k, v in counts.items() if k.endswith(CHANGE_COUNTERS) and v}
    assert changed == {}, counts


@pytest.fixture
def lab(site_db: Site, make_slapd):
    server = make_slapd(spec=synthetic(users=200, groups=20, seed=8), overlays=FEED_OVERLAYS)
    return site_db, server, slapd_settings(server, **SETTINGS)


def test_sigterm_stops_the_watch_between_batches(lab):
    site, server, settings = lab
    process = site.manage("syncldap", "watch", "--interval", "0.2", settings=settings)
    try:
        wait_for(lambda: any(r[2] == "success" for r in runs(site)), what="the first batch")
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "watch stopped (stop)" in stdout
    assert all(status != "running" for _pk, _mode, status, _counts in runs(site))


def test_a_killed_watch_resumes_from_its_cookie_and_loses_nothing(lab):
    site, server, settings = lab
    first = site.manage("syncldap", "watch", "--interval", "0.2", settings=settings)
    try:
        wait_for(lambda: any(r[2] == "success" for r in runs(site)), what="the first batch")
        last = runs(site)[-1][0]
        changed, _ = mutate(server.spec, fraction_users=0.05, fraction_memberships=0.05, seed=1)
        apply(server, changed)
        wait_for(lambda: applied_changes(site, last), what="the first change")
        # Killed while changes keep coming: what it did not apply waits in the feed.
        more, _ = mutate(server.spec, fraction_users=0.05, fraction_memberships=0.05, seed=2)
        apply(server, more)
        first.kill()
        first.wait(10)
    finally:
        first.kill()
    last = runs(site)[-1][0]
    again, _ = mutate(server.spec, fraction_users=0.05, fraction_memberships=0.05, seed=3)
    apply(server, again)
    second = site.run_manage(
        "syncldap", "watch", "--interval", "0.2", "--duration", "6", settings=settings
    )
    assert second.returncode == 0, second.stderr
    resumed = [r for r in runs(site) if r[0] > last]
    assert resumed and resumed[0][1] == "incremental", resumed  # from the cookie, not full
    assert all(status == "success" for _pk, _mode, status, _counts in resumed), resumed
    assert_a_full_run_changes_nothing(site, settings)


def test_a_second_watch_finds_the_lock_taken(lab):
    site, _server, settings = lab
    first = site.manage("syncldap", "watch", "--interval", "0.5", settings=settings)
    try:
        wait_for(lambda: bool(runs(site)), what="the first batch")
        second = site.run_manage("syncldap", "watch", settings=settings, timeout=60)
    finally:
        first.send_signal(signal.SIGTERM)
        try:
            first.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            first.kill()
    assert second.returncode == 3, second.stderr
