"""The watch loop: hold the run lock, run a batch, wait for the next change, again."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import DatabaseError
from django.utils import timezone

from ..conf import ConfigError, get_config
from ..directory import DirectoryError
from ..directory.connection import DirectorySession, connection_config
from ..locking import LockLost, RunLock, run_lock
from ..mapping import build_mapping_config
from ..models import SyncMarker, SyncRun
from ..sync import FULL, INCREMENTAL, SyncEngine, SyncOptions, SyncResult, close_interrupted_runs
from ..sync.feed import feed_scope
from ..tracking import CONTENT_SYNC, FEED_SCOPES
from . import database
from .doorbells import Clock, Doorbell, PersistentSearch
from .history import BatchHistory, changed_anything, counts_text

logger = logging.getLogger("adldap_auth.watch")

#: The wait after a failed batch: doubled after each failure in a row, at most MAX_BACKOFF.
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 300.0
#: How often a waiting watch checks that it still holds the lock (and beats its heartbeat): a
#: lost lock is noticed this soon, for one small query each time.
LOCK_CHECK_SECONDS = 10.0
#: Failures a later batch cannot fix: the watch ends (a restart after the fix resumes it).
FATAL_ERRORS = frozenset({"LockLost", "ConfigError"})


@dataclass
class WatchOptions:
    interval: float | None = None  # None: LDAP_SYNC_WATCH_INTERVAL
    full_interval: float | None = None  # None: LDAP_SYNC_WATCH_FULL_INTERVAL
    duration: float | None = None  # stop after this many seconds (a Celery task's window)
    max_batches: int | None = None
    stop: threading.Event = field(default_factory=threading.Event)  # set: stop after the batch
    on_batch: Callable[[SyncResult], None] | None = None


@dataclass
class WatchSummary:
    batches: int = 0
    changed: int = 0  # batches that wrote something or reported problems
    failed: int = 0
    full: int = 0
    stopped_by: str = ""  # "stop", "duration", "max_batches", or the fatal error kind
    last: SyncResult | None = None

    @property
    def ok(self) -> bool:
        return self.stopped_by not in FATAL_ERRORS

    def as_dict(self) -> dict:
        return {
            "batches": self.batches,
            "changed": self.changed,
            "failed": self.failed,
            "full": self.full,
            "stopped_by": self.stopped_by,
            "last": self.last.as_dict() if self.last else None,
        }


def watch(options: WatchOptions | None = None) -> WatchSummary:
    """Follow the directory until ``options.stop`` is set (or the duration or batch count
    is reached, or the lock is lost), holding the run lock all along.

    Raises :class:`~adldap_auth.locking.LockHeld` at once when another run holds the lock.
    Settings with errors end the watch at once, recorded as a failed run, as ``run_sync`` does.
    """
    options = options or WatchOptions()
    try:
        get_config()
    except ConfigError:
        result = SyncEngine(SyncOptions(mode=INCREMENTAL)).run()  # recorded, nothing read
        return WatchSummary(batches=1, failed=1, stopped_by="ConfigError", last=result)
    with run_lock() as lock:
        close_interrupted_runs()
        return Watcher(options, lock).follow()


class Watcher:
    """One watch (see :mod:`adldap_auth.watch`). Create with the held lock, call :meth:`follow`."""

    def __init__(self, options: WatchOptions, lock: RunLock) -> None:
        settings = get_config()
        self.options = options
        self.lock = lock
        self.interval = options.interval or settings.WATCH_INTERVAL
        self.full_interval = options.full_interval or settings.WATCH_FULL_INTERVAL
        self.started = time.monotonic()
        self.summary = WatchSummary()
        self.history = BatchHistory()
        self.doorbell: Doorbell = Clock()
        self.listener: DirectorySession | None = None  # the persistent searches' connection
        self.backoff = 0.0
        self.last_wait_rang = False  # the doorbell, not the clock, started the last batch
        self.lock_checked = time.monotonic()
        self.next_full = self.started + _seconds_to_next_full(self.full_interval)

    def follow(self) -> WatchSummary:
        logger.info("watch started: a look every %.1f s at most", self.interval)
        try:
            while not (reason := self._stop_reason()):
                result = self._batch()
                if result.error_kind in FATAL_ERRORS:
                    reason = result.error_kind
                    break
                if self._stop_reason():
                    continue
                try:
                    self._wait(result)
                except LockLost as lost:
                    logger.error("watch stops: %s", lost)
                    reason = "LockLost"
                    break
        finally:
            self._close_doorbell(keep_listener=False)
        self.summary.stopped_by = reason
        logger.info("watch stopped (%s) after %d batches", reason, self.summary.batches)
        return self.summary

    def _stop_reason(self) -> str:
        if self.options.stop.is_set():
            return "stop"
        if self.options.duration and time.monotonic() - self.started >= self.options.duration:
            return "duration"
        if self.options.max_batches and self.summary.batches >= self.options.max_batches:
            return "max_batches"
        return ""

    def _batch(self) -> SyncResult:
        mode = FULL if time.monotonic() >= self.next_full else INCREMENTAL
        database.drop_stale_connections()
        try:
            result = SyncEngine(SyncOptions(mode=mode), heartbeat=self.lock.heartbeat).run()
        except DatabaseError as error:
            # Not even the run record could be written (the database restarted, a proxy
            # dropped an idle connection): a failed batch, retried with the back-off on a
            # new connection, rather than the end of the watch.
            logger.error("watch batch could not use the database: %s", error)
            database.close_connections()
            result = database.failed_batch(mode, error)
        summary = self.summary
        summary.batches += 1
        summary.last = result
        if result.ok and result.mode == FULL:
            summary.full += 1
            self.next_full = time.monotonic() + self.full_interval
        if not result.ok:
            summary.failed += 1
        elif changed_anything(result):
            summary.changed += 1
            logger.info("watch batch %s: %s", result.run_id, counts_text(result))
        self.history.add(result)
        if self.options.on_batch:
            self.options.on_batch(result)
        return result

    def _wait(self, result: SyncResult) -> None:
        """Until the next batch: the back-off after a failure, else the doorbell."""
        tick = self._check_lock
        if not result.ok:
            self._close_doorbell(keep_listener=False)  # the server may be gone
            self.backoff = min(MAX_BACKOFF, max(FIRST_BACKOFF, self.backoff * 2))
            logger.warning(
                "watch batch failed (%s); next try in %.0f s", result.error, self.backoff
            )
            self.doorbell.wait(self._bounded(self.backoff), self.options.stop, tick)
            return
        self.backoff = 0.0
        self._close_doorbell(keep_listener=True)
        rung_for_nothing = result.counts.get("feed_unchanged") and self.last_wait_rang
        self.doorbell = self._doorbell(result, after_refresh_only=bool(rung_for_nothing))
        self.last_wait_rang = self.doorbell.wait(
            self._bounded(self.interval), self.options.stop, tick
        )

    def _close_doorbell(self, *, keep_listener: bool) -> None:
        """Stop waiting on the doorbell; close its connection too unless it may serve the
        next one (still sound and ``keep_listener``)."""
        self.doorbell.close()
        broken = self.doorbell.broken
        self.doorbell = Clock()
        if self.listener is not None and (broken or not keep_listener):
            self.listener.close()
            self.listener = None

    def _check_lock(self) -> None:
        """While waiting: the lock's check and heartbeat, every LOCK_CHECK_SECONDS."""
        if time.monotonic() - self.lock_checked >= LOCK_CHECK_SECONDS:
            self.lock.heartbeat()
            self.lock_checked = time.monotonic()

    def _bounded(self, seconds: float) -> float:
        if not self.options.duration:
            return seconds
        return max(0.0, min(seconds, self.started + self.options.duration - time.monotonic()))

    def _doorbell(self, result: SyncResult, *, after_refresh_only: bool) -> Doorbell:
        """A persistent search from the stored cookies on a contentsync server, else a clock."""
        settings = get_config()
        if settings.CHANGE_TRACKING != CONTENT_SYNC:
            return Clock()
        marker = SyncMarker.objects.filter(server=result.server).first()
        cookies = marker.feed_cookies if marker else {}
        if not all(isinstance(cookies.get(scope), str) for scope in FEED_SCOPES):
            return Clock()  # the server has no feed: the runs fell back to timestamps
        mapping = build_mapping_config(is_ad=False)
        scopes = [FEED_SCOPES[0]] + ([FEED_SCOPES[1]] if settings.GROUP else [])
        searches = [(*feed_scope(s, settings, mapping), cookies[s]) for s in scopes]
        try:
            if self.listener is None:
                self.listener = DirectorySession.open(connection_config())
            return PersistentSearch(searches, self.listener, after_refresh_only=after_refresh_only)
        except DirectoryError as error:
            if self.listener is not None:
                self.listener.close()
                self.listener = None
            logger.warning(
                "watch: no persistent search (%s); looking every %.1f s", error, self.interval
            )
            return Clock()


def _seconds_to_next_full(full_interval: float) -> float:
    """Seconds until a full run is due: ``full_interval`` after the last full run that
    completed (0 when there is none)."""
    last = (
        SyncRun.objects.filter(
            mode=SyncRun.MODE_FULL,
            dry_run=False,
            status__in=[SyncRun.STATUS_SUCCESS, SyncRun.STATUS_PARTIAL],
        )
        .order_by("-finished_at")
        .values_list("finished_at", flat=True)
        .first()
    )
    if last is None:
        return 0.0
    due = last + timedelta(seconds=full_interval)
    return max(0.0, (due - timezone.now()).total_seconds())
