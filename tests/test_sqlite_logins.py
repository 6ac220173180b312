"""Logins during a batch run on SQLite: a person can log in while the nightly sync writes.

Real processes on a SQLite *file* (the suite's in-memory database locks whole tables and is
private to the test process): :mod:`tests.login_storm` logs people in from 8 threads through
``ADLDAPBackend`` while another process holds SQLite's write lock, as a batch run's write
transaction does. With SQLite's default (deferred) transactions, a login that read before
writing gets "database is locked" at once, whatever the busy timeout; it must wait and try
again rather than fail.

:func:`logins_during_a_cold_full_run` measures logins during a real ``syncldap full``; run it
at any size with ``python -m tests.measure_sqlite_logins`` (figures in docs/operations.md).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from tests.backend_helpers import login_settings
from tests.helpers import slapd_settings
from tests.lab.generator import synthetic
from tests.site import Lines, Site, _migrated_sqlite_template

THREADS = 8


def sqlite_site(template: Path, directory: Path, **options: Any) -> Site:
    """A site on a copy of the migrated SQLite template (whatever the suite's database);
    ``options``: the database's ``OPTIONS``."""
    path = directory / "site.sqlite3"
    shutil.copyfile(template, path)
    db = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path), "OPTIONS": options}
    return Site(db, path)


class Storm:
    """:mod:`tests.login_storm` in the site: ``threads`` threads log ``usernames`` in, in
    turn, until :meth:`stop`, which returns every login as ``[start, end, outcome]``."""

    def __init__(
        self, site: Site, directory: Path, usernames: list[str], settings: dict[str, Any],
        threads: int = THREADS,
    ) -> None:  # fmt: skip
        self.stop_file = directory / "stop"
        with open(directory / "storm.log", "w") as log:  # its log: more than a pipe holds
            self.process = site.start(
                "-m", "tests.login_storm", settings=settings, stderr=log,
                extra_env={"ADLDAP_STORM_USERS": ",".join(usernames),
                           "ADLDAP_STORM_STOP": str(self.stop_file),
                           "ADLDAP_STORM_THREADS": str(threads)},
            )  # fmt: skip
        self.lines = Lines(self.process)
        assert self.lines.next(120) == "READY"

    def stop(self) -> list[list]:
        self.stop_file.touch()
        try:
            return json.loads(self.lines.next(600))
        finally:
            self.process.wait(60)


def storm_settings(server: Any, **settings: Any) -> dict[str, Any]:
    return login_settings(slapd_settings(server, **settings))


def kinds(logins: list[list]) -> Counter:
    """Outcomes counted by kind: ``ok``, ``none``, or the exception's type."""
    return Counter(outcome.split(":")[0] for _start, _end, outcome in logins)


@pytest.mark.skipif(
    connection.vendor != "sqlite", reason="SQLite behaviour; runs in the suite's SQLite pass"
)
def test_logins_from_8_threads_wait_for_another_process_write_transaction(
    make_slapd, tmp_path, tmp_path_factory
):
    spec = synthetic(users=1000, groups=60, seed=19, passwords=1000)
    server = make_slapd(spec=spec)
    site = sqlite_site(_migrated_sqlite_template(tmp_path_factory), tmp_path)
    usernames = [user.key for user in spec.users if not user.disabled]
    storm = Storm(site, tmp_path, usernames, storm_settings(server))
    try:
        time.sleep(1)  # first logins: users, groups and memberships created
        # A write transaction held for 3 s (a batch of many users, on a slow disk), shorter
        # than SQLite's busy timeout (5 s): the logins' first writes meet it.
        holder = sqlite3.connect(site.sqlite_path, timeout=30, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        held_from = time.time()
        time.sleep(3)
        held_to = time.time()
        holder.execute("COMMIT")
        holder.close()
        time.sleep(1)
    finally:
        logins = storm.stop()
    # Logins that were writing when the transaction began waited for it, for 2.5 s or more.
    waited = [login for login in logins if login[0] < held_from + 0.5 and login[1] > held_to]
    assert kinds(logins) == {"ok": len(logins)}, [o for *_, o in logins if o != "ok"][:5]
    assert len(waited) >= THREADS // 2, (len(logins), len(waited))
    # Each user written once, linked to its entry, with its groups.
    [(users, linked, distinct, members)] = site.query(
        "SELECT count(*), (SELECT count(*) FROM adldap_auth_directoryuser), "
        "count(DISTINCT lower(username)), (SELECT count(DISTINCT user_id) FROM auth_user_groups) "
        "FROM auth_user"
    )
    assert users == linked == distinct == members >= len(waited), (users, linked, distinct, members)


def _when(value: Any) -> float:
    """A SQLite datetime column (text) as wall-clock seconds."""
    return datetime.fromisoformat(str(value).replace(" ", "T")).timestamp()


def logins_during_a_cold_full_run(
    server: Any,
    site: Site,
    directory: Path,
    passwords: int,
    threads: int = THREADS,
    **settings: Any,
) -> dict[str, Any]:
    """Run ``syncldap full`` on the empty ``site`` while ``threads`` threads log the first
    ``passwords`` users in; the figures of the logins made during the run, and of the run."""
    usernames = [user.key for user in server.spec.users[:passwords] if not user.disabled]
    site_settings = storm_settings(server, **settings)
    storm = Storm(site, directory, usernames, site_settings, threads)
    try:
        run = site.run_manage("syncldap", "full", "--json", settings=site_settings, timeout=1800)
    finally:
        logins = storm.stop()
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)
    [(started, finished)] = site.query("SELECT started_at, finished_at FROM adldap_auth_syncrun")
    begin, end = _when(started), _when(finished)
    during = [login for login in logins if login[0] >= begin and login[1] <= end]
    spans = sorted(stop - start for start, stop, _outcome in during)
    return {
        "run_status": summary["status"],
        "run_errors": summary["counts"].get("errors", 0),
        "run_seconds": round(end - begin, 2),
        "users_created": summary["counts"].get("users_created", 0),
        "logins_during_run": len(during),
        "outcomes": dict(kinds(during)),
        "failures": [outcome for *_, outcome in during if outcome != "ok"][:5],
        "login_ms_median": round(1000 * spans[len(spans) // 2], 1) if spans else None,
        "login_ms_p95": round(1000 * spans[int(len(spans) * 0.95)], 1) if spans else None,
        "login_ms_max": round(1000 * spans[-1], 1) if spans else None,
        "problems": summary.get("problems", [])[:3],
    }
