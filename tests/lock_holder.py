"""``python -m tests.lock_holder take|hold``: a process that takes the sync lock, for lock tests.

Runs with :mod:`tests.site_settings` (see :class:`tests.site.Site`). Prints one line first:
``ACQUIRED <pid>``, or ``HELD <message>`` and exits 3 when another run holds the lock.

- ``take``: release at once and exit 0.
- ``hold``: keep the lock until killed; when ``$ADLDAP_BEAT_FILE`` appears, send one heartbeat
  and print ``BEAT`` (still held) or ``LOST <message>`` (taken over), then exit 0.
"""

import os
import sys
import time

import django

django.setup()

from adldap_auth.locking import LockHeld, LockLost, RunLock  # noqa: E402


def main(action: str) -> int:
    lock = RunLock()
    try:
        lock.acquire()
    except LockHeld as held:
        print("HELD", held, flush=True)
        return 3
    print("ACQUIRED", os.getpid(), flush=True)
    if action == "take":
        lock.release()
        return 0
    beat_file = os.environ.get("ADLDAP_BEAT_FILE")
    while True:
        if beat_file and os.path.exists(beat_file):
            try:
                lock.heartbeat(force=True)
            except LockLost as lost:
                print("LOST", lost, flush=True)
                return 0
            print("BEAT", flush=True)
            lock.release()
            return 0
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
