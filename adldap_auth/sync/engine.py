"""One batch run: the lock, the run record, the order of the steps and their failures."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from .. import signals
from ..callbacks import resolve_callback
from ..conf import (
    ConfigError,
    SyncConfig,
    default_group_names,
    get_config,
    without_bind_password,
)
from ..directory import DirectoryError
from ..directory.connection import DirectorySession, RootDSE, connection_config
from ..groups import GroupGraph, StoredNesting
from ..locking import LockLost, run_lock
from ..mapping import (
    MappingConfig,
    build_mapping_config,
    unknown_schema_attributes,
)
from ..membership import read_groups
from ..models import DirectoryGroup, SyncMarker, SyncRun
from ..nesting import (
    has_stored_nesting,
    mark_unsettled,
    memberships_unsettled,
    stored_member_lists,
    write_nesting,
)
from ..store import RunReport, Store
from ..tracking import TimestampHigh, choose_mode, choose_tracking, entry_changed
from .dirsync_feed import DirSyncSteps
from .guards import (
    check_group_read,
    linked_group_guids,
)
from .planner import MembershipPlanner
from .removals import RemovalSteps
from .results import FULL, INCREMENTAL, RemovalRefused, SyncOptions, SyncResult
from .users import UserSteps

logger = logging.getLogger("adldap_auth.sync")


def run_sync(options: SyncOptions | None = None) -> SyncResult:
    """Run one batch sync with the site's settings and return its summary.

    One run at a time across hosts (:mod:`adldap_auth.locking`): when another run holds the
    lock, raises :class:`~adldap_auth.locking.LockHeld` at once, having done and recorded
    nothing. Once the lock is taken, records left "running" by a run that died are closed.
    Settings with errors (those of ``manage.py check``) end the run at once, recorded as failed
    with error kind ``ConfigError``. Any failure of the run itself is recorded and returned as a
    failed result (see :meth:`SyncEngine.run`), never raised.
    """
    options = options or SyncOptions()
    try:
        get_config()
    except ConfigError:
        # Refused before the lock (which reads the settings too): recorded, nothing read.
        return SyncEngine(options).run()
    with run_lock() as lock:
        close_interrupted_runs()
        return SyncEngine(options, heartbeat=lock.heartbeat).run()


def close_interrupted_runs() -> int:
    """Mark as failed the run records still "running" (call only while holding the lock)."""
    return SyncRun.objects.filter(status=SyncRun.STATUS_RUNNING).update(
        status=SyncRun.STATUS_FAILED,
        finished_at=timezone.now(),
        error="interrupted: the process ended before the run finished",
    )


class SyncEngine(UserSteps, RemovalSteps, DirSyncSteps):
    """One batch run. Create, call :meth:`run` once, read the result."""

    def __init__(self, options: SyncOptions, heartbeat: Callable[[], None] | None = None):
        self.options = options
        self.heartbeat = heartbeat
        self.config: SyncConfig | None = None  # read when the run starts
        self.report = RunReport(changes=[] if options.collect_changes or options.dry_run else None)
        self.session: DirectorySession | None = None
        self.root: RootDSE | None = None
        self.mode = options.mode or FULL
        self.mode_reason = ""
        self.run_record: SyncRun | None = None
        self.error_kind = ""
        self.extra_sessions: list[DirectorySession] = []
        self.disabled_seen: set[str] = set()  # guids read as disabled in this run
        self.managed_group_ids: set[int] = set()  # Django groups whose memberships are synced
        self.unsettled = False  # a run died after writing memberships: recheck every user's

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> SyncResult:
        """Run once; the record ends "success", "partial" or "failed", never "running".

        Expected failures (directory, removal guard, database, lost lock) are recorded with
        their message; anything else (a setting the checks let through, a callback path that
        does not import, a bug) with its type and message, logged with the traceback. Ctrl-C
        and ``SystemExit`` are recorded as failed, then raised again.
        """
        started = time.monotonic()
        self.run_record = SyncRun.objects.create(
            mode=self.mode, dry_run=self.options.dry_run, started_at=timezone.now()
        )
        error = ""
        status = SyncRun.STATUS_SUCCESS
        try:
            self.config = get_config()
            self.session = DirectorySession.open(connection_config())
            self.run_record.server = self.session.uri
            self.root = self.session.root_dse()
            self._warn_if_privileged()
            self._run_body()
        except (ConfigError, DirectoryError, RemovalRefused, DatabaseError, LockLost) as exc:
            # DatabaseError: what the store could not isolate to one entry (lost connection,
            # a race it could not resolve). Batches already committed stay; nobody is removed.
            # LockLost: taken over (LDAP_SYNC_LOCK_STALE_AFTER), or its connection ended.
            # ConfigError: the settings have errors; 'manage.py check' shows the same ones.
            error = str(exc)
            self.error_kind = type(exc).__name__
            status = SyncRun.STATUS_FAILED
            logger.error("sync run failed: %s", error)
        except Exception as exc:
            error = without_bind_password(f"{type(exc).__name__}: {exc}")
            self.error_kind = type(exc).__name__
            status = SyncRun.STATUS_FAILED
            logger.exception("sync run failed: %s", error)
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: record, then let through
            self.error_kind = type(exc).__name__
            logger.error("sync run interrupted (%s)", self.error_kind)
            self._finish(
                SyncRun.STATUS_FAILED,
                f"interrupted ({self.error_kind})",
                time.monotonic() - started,
            )
            raise
        finally:
            for session in [self.session, *self.extra_sessions]:
                if session is not None:
                    session.close()
        if status == SyncRun.STATUS_SUCCESS and self.report.counts.get("errors"):
            status = SyncRun.STATUS_PARTIAL
        return self._finish(status, error, time.monotonic() - started)

    def _choose_mode(self, config: MappingConfig, setting: str | None = None) -> SyncMarker | None:
        """Full or incremental (and why), with ``setting`` or LDAP_SYNC_CHANGE_TRACKING;
        returns this server's marker, if any."""
        s = self.config
        self.tracking = choose_tracking(
            self.root,
            setting or s.CHANGE_TRACKING,
            config.member_attribute,
            config.identity_attribute,
        )
        marker = SyncMarker.objects.filter(server=self.session.uri).first()
        self.mode, self.mode_reason = choose_mode(
            self.options.mode,
            marker,
            self.root,
            self.tracking,
            incremental_allowed=bool(s.USER_INCREMENTAL or self.options.mode == INCREMENTAL),
            between_full=s.INCREMENTAL_BETWEEN_FULL,
        )
        if self.mode == INCREMENTAL and s.GROUP and not has_stored_nesting():
            self.mode = FULL
            self.mode_reason = "no stored group nesting to compare with (first run of this version)"
        logger.info("%s run against %s: %s", self.mode, self.session.uri, self.mode_reason)
        self.marker = marker if self.mode == INCREMENTAL else None
        if not self.options.dry_run:
            # What this run writes is this server's view, which may lag behind another DC's
            # (replication): another server's marker no longer describes Django's state, and an
            # incremental run from it would skip changes this run undid. Its next run is full.
            SyncMarker.objects.exclude(server=self.session.uri).delete()
        return marker

    def _open_store(self, config: MappingConfig) -> Store:
        s = self.config
        return Store(
            config,
            self.report,
            server=self.session.uri,
            dry_run=self.options.dry_run,
            set_unusable_password=s.USER_SET_UNUSABLE_PASSWORD,
            user_callbacks=[resolve_callback(path) for path in s.USER_CALLBACKS],
            defer_membership_removals=True,  # applied by _remove_missing, under the threshold
            defer_relinks=True,  # decided once the read is complete: _sync_deferred_users
            # settled again by write_nesting, at the end of a successful run
            before_membership_write=mark_unsettled
            if s.GROUP and not self.options.dry_run
            else None,
        )

    def _finish(self, status: str, error: str, seconds: float) -> SyncResult:
        record = self.run_record
        record.mode = self.mode
        record.mode_reason = self.mode_reason
        record.status = status
        record.error = error
        record.finished_at = timezone.now()
        record.counts = dict(self.report.counts)
        record.problems = self.report.problems
        record.ldap_searches = sum(
            s.search_count for s in [self.session, *self.extra_sessions] if s is not None
        )
        record.save()
        result = SyncResult(
            run_id=record.pk,
            mode=self.mode,
            status=status,
            server=record.server,
            dry_run=self.options.dry_run,
            counts=dict(self.report.counts),
            problems=list(self.report.problems),
            error=error,
            ldap_searches=record.ldap_searches,
            seconds=seconds,
            changes=self.report.changes,
            mode_reason=self.mode_reason,
            error_kind=self.error_kind,
        )
        # The record is saved: a receiver that raises is logged, and changes nothing of it.
        signals.send(signals.run_finished, SyncEngine, run=record, summary=result.as_dict())
        return result

    def _run_body(self) -> None:
        # The steps of the module docstring, in their order, in one place on purpose.
        s = self.config
        config = build_mapping_config(is_ad=self.root.is_ad)
        self._warn_unknown_attributes(config)
        marker = self._choose_mode(config)
        # A run that died after writing memberships and before storing its nesting left
        # memberships that neither the stored nesting nor (if it changed since) the directory
        # describes: compared against the stored nesting, they would stay. Read before this
        # run marks the state itself (and before the feed, which reads everything then).
        self.unsettled = bool(s.GROUP) and memberships_unsettled()
        self._follow_feed(config, marker)  # a change feed: changes or cookies, before writes
        self.high_water = TimestampHigh()
        if self.feed is not None and self.feed.nothing:
            self.report.counts["feed_unchanged"] = 1  # nothing read, nothing to write
            if not self.options.dry_run:
                self._save_marker(marker)
            return
        store = self._open_store(config)
        create_outside = bool(s.GROUP_MEMBERSHIP_CREATE_IF_NOT_EXISTS)
        group_ids: dict[str, int] = {}
        graph = GroupGraph([])
        present_groups: set[str] = set()
        changed_groups: set[str] = set()
        before: dict[str, StoredNesting] = {}
        if s.GROUP and self.feed is not None and self.feed.groups is not None:
            graph, changed_groups = self.feed.groups, self.feed.changed_groups
        elif s.GROUP:
            graph, changed_groups = self._read_groups(config)
        if s.GROUP:
            if self.mode == INCREMENTAL:
                before = stored_member_lists(changed_groups)
            # Synced now: the group scope, and the groups outside it that Django already
            # manages. Other groups outside it are created when a user turns out to be in one.
            linked = set(DirectoryGroup.objects.values_list("guid", flat=True))
            synced = [
                r for r in graph.records() if r.in_scope or (create_outside and r.guid in linked)
            ]
            present_groups = {r.guid for r in synced}
            check_group_read(
                present_groups,
                linked_group_guids(),
                s.REMOVAL_THRESHOLD,
                self.options.force_removals,
            )
            group_ids = store.sync_groups(synced)
        default_ids = set(
            store.ensure_plain_groups(
                default_group_names(s.GROUP_MEMBERSHIP_ADD_DEFAULT), create_outside
            ).values()
        )
        if s.USER:
            managed = set(DirectoryGroup.objects.values_list("group_id", flat=True)) | default_ids
            managed |= set(group_ids.values())  # the placeholders of a dry run's new groups
            planner = MembershipPlanner(
                self, config, graph, group_ids, default_ids, store, managed, create_outside
            )
            self.managed_group_ids = planner.managed
            present_users = self._sync_users(config, store, planner)
            if self.mode == INCREMENTAL and s.GROUP_MEMBERSHIP and not planner.legacy:
                self._resync_affected_memberships(
                    store, planner, present_users, changed_groups, before
                )
            present_guids = present_users.keys()  # a set view: no copy of a million guids
            self._remove_missing(store, present_guids)
            self._delete_after_grace(store, present_guids)
            present_groups |= planner.created
        if s.GROUP:
            store.remove_groups(present_groups, s.GROUP_REMOVAL_ACTION, s.REMOVAL_GRACE)
        if not self.options.dry_run:
            if s.GROUP:
                self.report.counts["nesting_rows_written"] = write_nesting(graph)
            self._save_marker(marker)

    # -- groups -------------------------------------------------------------------------------

    def _read_groups(self, config: MappingConfig) -> tuple[GroupGraph, set[str]]:
        """Every group of the membership scope (the graph needs them all, in the group scope or
        not: :mod:`adldap_auth.membership`), and which changed since the marker."""
        records = []
        changed: set[str] = set()
        tracking = self.tracking
        for read in read_groups(self.session, config, (tracking.attribute,)):
            stamp = read.entry.first(tracking.attribute)
            self.high_water.see(stamp)
            if read.guid and (
                self.marker is None
                or entry_changed(stamp, tracking, self.marker, self.config.INCREMENTAL_TIME_OFFSET)
            ):
                changed.add(read.guid)
            if read.record is None:
                self.report.problem("group %s skipped: %s", read.entry.dn, read.skipped)
                self.report.counts["groups_skipped"] += 1
            else:
                records.append(read.record)
            self._progress("groups", len(records))
        self.report.counts["groups_seen"] = sum(1 for r in records if r.in_scope)
        self.report.counts["groups_outside_scope_seen"] = sum(1 for r in records if not r.in_scope)
        if self.marker is None:
            changed = set()
        else:
            self.report.counts["groups_changed"] = len(changed)
        return GroupGraph(records), changed

    def _progress(self, phase: str, count: int) -> None:
        if self.options.progress and count % 100 == 0:
            self.options.progress(phase, count)

    def _warn_if_privileged(self) -> None:
        """Say so when the bind account administers the domain (AD's rootDSE tokenGroups)."""
        groups = self.root.privileged_groups if self.root else []
        if groups:
            self.report.warning(
                "the bind account %s is a member of %s: a sync only reads the directory; "
                "bind with a least-privilege reader account instead",
                self.config.BIND_DN,
                ", ".join(groups),
            )

    def _warn_unknown_attributes(self, config: MappingConfig) -> None:
        """Say so when an attribute mapped to a user or profile field is not in the server's
        schema (read once per run): a misspelling would otherwise leave the field empty."""
        schema = self.session.attribute_types(self.root.subschema_subentry)
        if schema is None:
            return
        for setting, attribute in unknown_schema_attributes(config, schema):
            self.report.warning(
                "%s maps %r, which is not an attribute type of the directory's schema: its "
                "field stays empty",
                setting,
                attribute,
            )

    # -- marker -------------------------------------------------------------------------------

    def _save_marker(self, marker: SyncMarker | None) -> None:
        """Remember where this run started, for the next incremental run on this server.

        Only while holding the lock; a marker saved meanwhile by another run (which could only
        happen if the lock failed) stops this run as LockLost, not with a database error."""
        if self.heartbeat:
            self.heartbeat()
        if marker is None:
            marker = SyncMarker(server=self.session.uri)
        marker.invocation_id = self.root.invocation_id or ""
        marker.highest_usn = self.root.highest_committed_usn
        if self.high_water.value is not None:
            marker.timestamp = self.high_water.value.isoformat()
        marker.feed_cookies = self.feed_cookies or {}
        if self.mode == FULL:
            marker.incrementals_since_full = 0
        else:
            marker.incrementals_since_full += 1
        try:
            with transaction.atomic():
                marker.save()
        except IntegrityError as error:
            raise LockLost(
                f"lock lost: another run saved the incremental marker of {marker.server} "
                "during this run; this run stops"
            ) from error
