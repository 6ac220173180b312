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
from django.contrib.auth import authenticate, get_user_model
from django.db import OperationalError, connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from adldap_auth.dbwrite import lock_conflict, write_transaction
from tests.backend_helpers import login_settings
from tests.helpers import slapd_settings
from tests.lab.generator import synthetic
from tests.lab.spec import LAB_PASSWORD
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


@pytest.mark.skipif(
    connection.vendor != "sqlite", reason="SQLite behaviour; runs in the suite's SQLite pass"
)
def test_a_cold_full_run_with_default_options_writes_every_user_while_8_threads_log_in(
    make_slapd, tmp_path, tmp_path_factory
):
    # Django's default SQLite OPTIONS (deferred transactions, 5 s busy timeout): the run's
    # batch transactions and the logins' read before they write, and would fail each
    # other's writes at once (the run `partial`, hundreds of users not written) if each did
    # not take the write lock first (adldap_auth.dbwrite.write_transaction).
    spec = synthetic(users=1000, groups=60, seed=19, passwords=1000)
    server = make_slapd(spec=spec)
    site = sqlite_site(_migrated_sqlite_template(tmp_path_factory), tmp_path)
    figures = logins_during_a_cold_full_run(server, site, tmp_path, passwords=1000)
    assert (figures["run_status"], figures["run_errors"]) == ("success", 0), figures
    assert figures["outcomes"] == {"ok": figures["logins_during_run"]}, figures
    [(users, linked)] = site.query(
        "SELECT count(*), (SELECT count(*) FROM adldap_auth_directoryuser) FROM auth_user"
    )
    enabled = sum(1 for user in spec.users if not user.disabled)
    assert users == linked == enabled, (users, linked, enabled, figures)


@pytest.mark.django_db(transaction=True)  # the retry is outside any transaction of the caller
def test_django_auth_ldap_user_save_meeting_the_lock_is_tried_again(slapd_lab, monkeypatch):
    # django-auth-ldap saves the user itself after our writes; on SQLite that save waits for
    # a batch transaction no longer than the busy timeout, then fails "database is locked".
    User = get_user_model()
    original, failures = User.save, []

    def save(user, *args: Any, **kwargs: Any) -> None:
        if len(failures) < 2:
            cause = sqlite3.OperationalError("database is locked")
            cause.sqlite_errorcode = sqlite3.SQLITE_BUSY
            failures.append(cause)
            raise OperationalError(str(cause)) from cause
        original(user, *args, **kwargs)

    monkeypatch.setattr(User, "save", save)
    with override_settings(**storm_settings(slapd_lab)):
        user = authenticate(username="alice", password=LAB_PASSWORD)
    assert len(failures) == 2 and user is not None and user.username == "alice"
    assert not lock_conflict(OperationalError("no such table: x"))


@pytest.mark.django_db(transaction=True)
def test_write_transaction_takes_the_write_lock_first_on_sqlite_only():
    outer, inner = CaptureQueriesContext(connection), CaptureQueriesContext(connection)
    with outer, write_transaction(), inner, write_transaction():
        pass  # the inner one is nested: a savepoint, nothing more
    taken = [q["sql"] for q in outer.captured_queries if "WHERE 0 = 1" in q["sql"]]
    expected = connection.vendor == "sqlite" and connection.transaction_mode is None
    assert len(taken) == (1 if expected else 0), outer.captured_queries
    assert not any("WHERE 0 = 1" in q["sql"] for q in inner.captured_queries)


def _when(value: Any) -> float:
    """A SQLite datetime column (text) as wall-clock seconds."""
    return datetime.fromisoformat(str(value).replace(" ", "T")).timestamp()


def logins_during_a_cold_full_run(
    server: Any,
    site: Site,
    directory: Path,
    passwords: int,
    threads: int = THREADS,
    run_options: dict[str, Any] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Run ``syncldap full`` on the empty ``site`` while ``threads`` threads log the first
    ``passwords`` users in; the figures of the logins made during the run, and of the run.
    ``run_options``: other database ``OPTIONS`` for the run's process only."""
    usernames = [user.key for user in server.spec.users[:passwords] if not user.disabled]
    site_settings = storm_settings(server, **settings)
    storm = Storm(site, directory, usernames, site_settings, threads)
    runner = site
    if run_options is not None:
        runner = Site({**site.db, "OPTIONS": run_options}, site.sqlite_path)
    try:
        run = runner.run_manage("syncldap", "full", "--json", settings=site_settings, timeout=1800)
    finally:
        logins = storm.stop()
    # The run's record, also when the run failed (exit status 1, no JSON summary).
    [(started, finished, status, counts, error, problems)] = site.query(
        "SELECT started_at, finished_at, status, counts, error, problems FROM adldap_auth_syncrun"
    )
    counts = site.json_value(counts)
    begin, end = _when(started), _when(finished)
    during = [login for login in logins if login[0] >= begin and login[1] <= end]
    spans = sorted(stop - start for start, stop, _outcome in during)
    return {
        "run_status": status,
        "run_exit": run.returncode,
        "run_error": error,
        "run_errors": counts.get("errors", 0),
        "run_seconds": round(end - begin, 2),
        "users_created": counts.get("users_created", 0),
        "logins_during_run": len(during),
        "outcomes": dict(kinds(during)),
        "failures": [outcome for *_, outcome in during if outcome != "ok"][:5],
        "login_ms_median": round(1000 * spans[len(spans) // 2], 1) if spans else None,
        "login_ms_p95": round(1000 * spans[int(len(spans) * 0.95)], 1) if spans else None,
        "login_ms_max": round(1000 * spans[-1], 1) if spans else None,
        "problems": site.json_value(problems)[:5],
    }
