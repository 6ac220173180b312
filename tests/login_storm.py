"""``python -m tests.login_storm``: password logins from several threads, in a site process.

For the tests of logins during a batch run (:mod:`tests.system.test_sqlite_logins`). Runs with
:mod:`tests.site_settings` (see :class:`tests.site.Site`), configured by environment variables:

- ``ADLDAP_STORM_USERS``: the usernames to log in (comma-separated), in turn;
- ``ADLDAP_STORM_THREADS``: how many threads log in at once (default 8);
- ``ADLDAP_STORM_STOP``: a file; the threads stop when it appears;
- ``ADLDAP_STORM_MAX``: at most this many logins per thread (default: no limit);
- ``ADLDAP_STORM_WHERE``: when set, an exception's outcome also names the adldap_auth and
  django_auth_ldap frames it went through.

Prints ``READY`` once Django is set up, then, at the end, one line of JSON: every login as
``[start, end, outcome]`` (wall-clock seconds; outcome ``"ok"``, ``"none"`` when
``authenticate()`` returned None, or the exception's type and message).
"""

import json
import os
import threading
import time

import django

django.setup()

from django.contrib.auth import authenticate  # noqa: E402
from django.db import connection  # noqa: E402

from tests.lab.spec import LAB_PASSWORD  # noqa: E402


def storm(users: list[str], threads: int, stop_file: str, most: int | None) -> list[list]:
    """Log in ``users`` in turn from ``threads`` threads until ``stop_file`` exists."""
    logins: list[list] = []
    lock = threading.Lock()

    def worker(number: int) -> None:
        done = 0
        try:
            while not os.path.exists(stop_file) and (most is None or done < most):
                username = users[(number + done * threads) % len(users)]
                start = time.time()
                try:
                    user = authenticate(None, username=username, password=LAB_PASSWORD)
                    outcome = "ok" if user is not None else "none"
                except Exception as error:  # noqa: BLE001 - counted, the point of the test
                    outcome = f"{type(error).__name__}: {error}"
                    if os.environ.get("ADLDAP_STORM_WHERE"):
                        import traceback

                        frames = traceback.extract_tb(error.__traceback__)
                        outcome += " @ " + " < ".join(
                            f"{f.filename.rsplit('/', 2)[-2]}/{f.name}:{f.lineno}"
                            for f in reversed(frames)
                            if "adldap_auth" in f.filename or "django_auth_ldap" in f.filename
                        )
                with lock:
                    logins.append([start, time.time(), outcome])
                done += 1
        finally:
            connection.close()

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return logins


def main() -> None:
    users = os.environ["ADLDAP_STORM_USERS"].split(",")
    threads = int(os.environ.get("ADLDAP_STORM_THREADS", "8"))
    most = os.environ.get("ADLDAP_STORM_MAX")
    print("READY", flush=True)
    logins = storm(users, threads, os.environ["ADLDAP_STORM_STOP"], int(most) if most else None)
    print(json.dumps(logins), flush=True)


if __name__ == "__main__":
    main()
