"""``syncldap watch``: follow the directory and apply each change within seconds.

A watch is a long-running process (a systemd service, or a Celery task given a window) that
holds the run lock for as long as it runs and applies changes in *batches*. Each batch is one
incremental run (:class:`~adldap_auth.sync.SyncEngine`): the same code, guards and record as
``syncldap incremental``, so everything a run guarantees holds per batch:

- removals go through ``LDAP_SYNC_REMOVAL_THRESHOLD`` per batch, and a batch that cannot read
  the directory completely removes no one;
- a removed or disabled user's sessions end in the batch that removes them
  (:mod:`adldap_auth.sessions`);
- the change feed's cookies (or uSNChanged / timestamp marker) are saved at the end of each
  batch: a watch killed at any point resumes from the last completed batch, and a refused
  cookie or another server makes the next batch full.

Between batches it waits on a *doorbell* (:mod:`adldap_auth.watch.doorbells`): the server's
persistent Content Synchronization search on OpenLDAP with syncprov, a clock of
``LDAP_SYNC_WATCH_INTERVAL`` seconds elsewhere (DirSync, uSNChanged, timestamps). A failed
batch (server down, dropped connection) is retried with back-off, 1 s doubling up to 5 min,
on the same lock. A full batch runs every ``LDAP_SYNC_WATCH_FULL_INTERVAL`` seconds. Quiet
batches share one run record (:mod:`adldap_auth.watch.history`).

Stop it with SIGTERM or SIGINT (``manage.py syncldap watch``) or ``options.stop.set()``: it
stops between batches. A lost lock or settings with errors end it.
"""

from .history import BatchHistory, changed_anything, counts_text
from .loop import FATAL_ERRORS, Watcher, WatchOptions, WatchSummary, watch

__all__ = [
    "FATAL_ERRORS",
    "BatchHistory",
    "WatchOptions",
    "WatchSummary",
    "Watcher",
    "changed_anything",
    "counts_text",
    "watch",
]
