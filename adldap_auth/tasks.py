"""Celery tasks (optional: only this module imports Celery).

``adldap_auth.tasks.syncldap(mode=None)`` runs the same code as ``manage.py syncldap``
(:func:`adldap_auth.sync.run_sync`) and returns the run's JSON summary
(:meth:`~adldap_auth.sync.SyncResult.as_dict`). ``mode`` is ``None`` (follow the settings: full
on the first run and every ``LDAP_SYNC_INCREMENTAL_BETWEEN_FULL`` incrementals), ``"full"`` or
``"incremental"``.

The same task is registered under django-adldap-sync's name ``adldap_sync.tasks.syncldap``, so a
beat schedule written for that package keeps working once ``adldap_sync`` is replaced by
``adldap_auth`` in ``INSTALLED_APPS`` (the worker must import this module: Celery's
``app.autodiscover_tasks()`` does, as for any Django app).

Outcomes:

- success or partial run: the summary (``status`` "success" or "partial");
- no directory server answered (:class:`~adldap_auth.directory.DirectoryUnavailable`, not a TLS
  set-up error): retried with exponential backoff (1, 2, 4... s plus jitter, at most 10 min
  apart), ``MAX_RETRIES`` times; each attempt is a failed run record; the last failure is raised;
- any other failure (invalid credentials, TLS, incomplete read, removals refused...): not
  retried, since retrying cannot fix it; the summary with ``status`` "failed" is returned and the
  run record holds the error;
- another run holds the lock: nothing is done or recorded; returns ``{"status": "skipped",
  "error": "another sync is running since ...", ...}``. Not retried: the running sync covers it.

``adldap_auth.tasks.syncldap_watch(duration=290)`` follows the directory for ``duration``
seconds (:mod:`adldap_auth.watch`), holding the run lock, and returns the watch's summary.
Scheduled by beat a little more often than its window (every 5 minutes for 290 s), it gives a
site without a long-running service changes applied within ``LDAP_SYNC_WATCH_INTERVAL`` most
of the time; a window started while the previous one still runs is skipped (the lock). The
worker must allow the window (``task_time_limit`` above it). A long-running
``manage.py syncldap watch`` service is the better choice where one can run (docs/operations.md).

Retry options can be changed per site with Celery's task annotations, e.g.
``CELERY_TASK_ANNOTATIONS = {"adldap_auth.tasks.syncldap": {"max_retries": 5}}``.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.utils.log import get_task_logger

from .directory import DirectoryUnavailable
from .locking import LockHeld
from .sync import SyncOptions, run_sync
from .watch import WatchOptions, watch

logger = get_task_logger("adldap_auth.tasks")

MODES = (None, "full", "incremental")
MAX_RETRIES = 3

#: ``SyncResult.error_kind`` values worth retrying, and the exception raised to retry them.
#: ``DirectoryTLSError`` (a subclass of DirectoryUnavailable) is left out: it needs a fix.
TRANSIENT_ERRORS: dict[str, type[Exception]] = {"DirectoryUnavailable": DirectoryUnavailable}

TASK_OPTIONS: dict[str, Any] = {
    "bind": True,
    "autoretry_for": (DirectoryUnavailable,),
    "retry_backoff": True,
    "retry_backoff_max": 600,
    "retry_jitter": True,
    "max_retries": MAX_RETRIES,
}


def skipped(held: LockHeld, mode: str | None) -> dict[str, Any]:
    """The summary of a task that found the lock taken: nothing done or recorded."""
    return {
        "status": "skipped",
        "mode": mode,
        "error": str(held),
        "lock_pid": held.owner.pid if held.owner else None,
        "lock_host": held.owner.host if held.owner else None,
        "lock_since": held.since.isoformat() if held.since else None,
    }


def run_task(task: Any, mode: str | None = None) -> dict[str, Any]:
    """The body of both task names: run the sync, return its summary, raise to retry."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    try:
        result = run_sync(SyncOptions(mode=mode))
    except LockHeld as held:
        logger.warning("syncldap task skipped: %s", held)
        return skipped(held, mode)
    summary = result.as_dict()
    transient = TRANSIENT_ERRORS.get(result.error_kind)
    if transient is not None:
        logger.warning(
            "syncldap task: %s (attempt %d of %d)",
            result.error,
            task.request.retries + 1,
            task.max_retries + 1,
        )
        raise transient(result.error)
    if not result.ok:
        logger.error("syncldap task: run #%s failed: %s", result.run_id, result.error)
    return summary


@shared_task(name="adldap_auth.tasks.syncldap", **TASK_OPTIONS)
def syncldap(self, mode: str | None = None) -> dict[str, Any]:
    """Synchronise from the directory; ``mode``: None (by settings), "full" or "incremental"."""
    return run_task(self, mode)


@shared_task(name="adldap_sync.tasks.syncldap", **TASK_OPTIONS)
def syncldap_legacy(self, mode: str | None = None) -> dict[str, Any]:
    """django-adldap-sync's task name, for existing beat schedules. Same as :func:`syncldap`."""
    return run_task(self, mode)


@shared_task(name="adldap_auth.tasks.syncldap_watch")
def syncldap_watch(duration: float = 290.0) -> dict[str, Any]:
    """Follow the directory for ``duration`` seconds; the watch's summary (``stopped_by``
    "duration" when all went well), or "skipped" when another run holds the lock."""
    if not duration or duration <= 0:
        raise ValueError(f"duration must be a number of seconds > 0, not {duration!r}")
    try:
        summary = watch(WatchOptions(duration=duration))
    except LockHeld as held:
        logger.warning("syncldap_watch task skipped: %s", held)
        return skipped(held, "watch")
    if not summary.ok:
        logger.error("syncldap_watch task stopped: %s", summary.stopped_by)
    return {"status": "stopped", **summary.as_dict()}
