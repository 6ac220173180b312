"""Fixtures shared by the suite: the lab directory servers (slapd and Samba AD), a "site"
in subprocesses sharing the test database, with a Redis broker (:mod:`tests.site`), and a
MEDIA_ROOT of each test's own; and the ``db`` marker of :data:`DATABASE_SENSITIVE`."""

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.lab.fixtures_samba",
    "tests.lab.fixtures_slapd",
    "tests.lab.fixtures_topology",
    "tests.site",
]

#: The modules whose outcome can depend on the database: the PostgreSQL and MariaDB passes of
#: ``make test`` run their tests (``-m db``); SQLite runs everything. A module left out reads,
#: parses or checks the same way on every database. A new module that writes through the store,
#: the login or the lock belongs here. Not marked even here: ``samba`` tests (they read AD
#: where their slapd twins read OpenLDAP, and write the same way) and ``slow`` ones (more seeds
#: or longer timeouts of a scenario whose quick form is marked).
DATABASE_SENSITIVE = {
    "tests/slapd/test_admin.py": "admin changelist queries and the sync-now action's writes",
    "tests/slapd/test_backend.py": "logins write users, groups and links; logins racing runs",
    "tests/slapd/test_backend_slapd.py": "the slapd-only logins: the same writes and races",
    "tests/samba/test_backend_samba.py": "the AD-only logins (samba: listed, never marked)",
    "tests/slapd/test_backend_django_auth_ldap.py": "django-auth-ldap's user and group writes",
    "tests/unit/test_nesting_rows.py": "the stored nesting's JSON rows, bulk inserts, updates",
    "tests/slapd/test_bad_input.py": "over-long and odd values against real column limits",
    "tests/slapd/test_case_insensitive_names.py": "MariaDB's case-insensitive collation",
    "tests/slapd/test_custom_user_models.py": "other user tables and group join tables",
    "tests/slapd/test_group_link_races.py": "concurrent writers, transactions, retries",
    "tests/slapd/test_locking.py": "the run lock: a row lock, or PostgreSQL's advisory lock",
    "tests/slapd/test_membership_scope.py": "bulk membership inserts (vendor statements)",
    "tests/slapd/test_profile_attributes.py": "profile rows written by runs and logins",
    "tests/slapd/test_security_adoption.py": "username and group-name lookups (collation)",
    "tests/slapd/test_security_guards.py": "removals, deletes and their thresholds",
    "tests/slapd/test_security_run_records.py": "run records written on failures, rollbacks",
    "tests/slapd/test_security_sessions.py": "database sessions deleted with their user",
    "tests/slapd/test_signals.py": "signals sent on commit",
    "tests/slapd/test_site_settings.py": "USE_TZ = False and ATOMIC_REQUESTS",
    "tests/slapd/test_sync_feed.py": "incremental runs from the change feed, their markers",
    "tests/slapd/test_watch.py": "watch batches, folded run records, sessions ended",
    "tests/system/test_watch_process.py": "a killed watch: its lock and what its batches left",
    "tests/slapd/test_sync_incremental.py": "incremental runs' updates and markers",
    "tests/slapd/test_sync_photos.py": "photo rows and files kept in step",
    "tests/slapd/test_usernames_mail.py": "usernames and mail under the collation",
    "tests/system/test_crash_lock.py": "the lock's database session ended mid-run",
    "tests/system/test_crash_safety.py": "killed runs: what each transaction left",
    "tests/system/test_faults.py": "database faults, rollbacks, killed batches",
    "tests/system/test_sqlite_logins.py": "logins during a run's write transaction",
    "tests/system/test_tasks.py": "a Celery worker writing to the shared database",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``db`` the tests of the :data:`DATABASE_SENSITIVE` modules, but for the Samba and
    the slow ones (after ``tests.lab.fixtures_samba`` has marked ``samba``: it runs first)."""
    for item in items:
        if item.nodeid.split("::", 1)[0] not in DATABASE_SENSITIVE:
            continue
        if not (item.get_closest_marker("samba") or item.get_closest_marker("slow")):
            item.add_marker(pytest.mark.db)


@pytest.fixture
def media(settings, tmp_path) -> Path:
    """A MEDIA_ROOT of the test's own, so that every file in it can be accounted for."""
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = str(root)
    return root


@pytest.fixture(autouse=True)
def _fresh_login_graphs():
    """Django's cache outlives each test's database: forget the nesting versions and graphs
    that a previous test stored there."""
    from django.core.cache import cache

    from adldap_auth.nesting import forget_loaded

    cache.clear()
    forget_loaded()
    yield
    cache.clear()
    forget_loaded()
