"""``python -m tests.measure_sqlite_logins USERS GROUPS [PASSWORDS]``: logins from 8 threads
during a cold ``syncldap full`` on SQLite, at any size; prints the figures as JSON.

The measurement of :mod:`tests.system.test_sqlite_logins`, against a throwaway lab slapd loaded with
``synthetic(USERS, GROUPS)`` (the first PASSWORDS users, default 2,000, can log in).
``$ADLDAP_STORM_DB_OPTIONS``: the SQLite database's ``OPTIONS`` as JSON (e.g.
``{"transaction_mode": "IMMEDIATE"}``); ``$ADLDAP_STORM_SETTINGS``: more ``LDAP_SYNC_*``
settings as JSON; ``$ADLDAP_STORM_THREADS``: login threads (default 8);
``$ADLDAP_STORM_RUN_DB_OPTIONS``: other ``OPTIONS`` for the run's process only;
``$ADLDAP_STORM_LOG``: where to keep the log of the logins' process. Run with
``DJANGO_SETTINGS_MODULE=tests.settings``.
"""

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import django

django.setup()

from tests.lab.generator import synthetic  # noqa: E402
from tests.lab.slapd import LabSlapd  # noqa: E402
from tests.site import Site  # noqa: E402
from tests.system.test_sqlite_logins import logins_during_a_cold_full_run, sqlite_site  # noqa: E402


def main(argv: list[str]) -> None:
    users, groups = int(argv[0]), int(argv[1])
    passwords = int(argv[2]) if len(argv) > 2 else min(users, 2000)
    options = json.loads(os.environ.get("ADLDAP_STORM_DB_OPTIONS", "{}"))
    settings = json.loads(os.environ.get("ADLDAP_STORM_SETTINGS", "{}"))
    threads = int(os.environ.get("ADLDAP_STORM_THREADS", "8"))
    run_options = os.environ.get("ADLDAP_STORM_RUN_DB_OPTIONS")
    work = Path(tempfile.mkdtemp(prefix="adldap-storm-"))
    try:
        template = work / "template.sqlite3"
        migrate = Site({"ENGINE": "django.db.backends.sqlite3", "NAME": str(template)}, template)
        done = migrate.run_manage("migrate", "--run-syncdb", "-v", "0")
        assert done.returncode == 0, done.stderr
        spec = synthetic(users=users, groups=groups, seed=19, passwords=passwords)
        with LabSlapd(spec) as server:
            figures = logins_during_a_cold_full_run(
                server,
                sqlite_site(template, work, **options),
                work,
                passwords,
                threads,
                json.loads(run_options) if run_options else None,
                **settings,
            )
        print(json.dumps(figures, indent=1))
        if os.environ.get("ADLDAP_STORM_LOG"):
            shutil.copyfile(work / "storm.log", os.environ["ADLDAP_STORM_LOG"])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
