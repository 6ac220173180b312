"""A batch run: read the directory, make Django match, record what happened.

Order of a full run, and why:

1. Read the rootDSE first, so an incremental marker never skips a change made during the run.
2. Read every group (paged, ranged ``member`` values) and build the group graph once; a read
   that lost too many managed groups fails the run here, before anything is written
   (:func:`check_group_read`).
3. Stream users a page at a time; map, write and add memberships in batches of
   ``LDAP_SYNC_WRITE_BATCH_SIZE``, each batch its own transaction (no lock held for minutes,
   no half-applied batch). Memberships found gone are only collected.
4. Only when every search completed: removals of memberships, users and groups, each guarded
   by ``LDAP_SYNC_REMOVAL_THRESHOLD``.

Any incomplete read (error, limit, timeout) ends the run as failed *before* step 4.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from . import signals
from .callbacks import removed_user_deactivate, removed_user_delete, resolve_callback
from .conf import default_group_names, removal_threshold, sync_settings
from .directory import DirectoryError
from .directory.connection import DirectorySession, RootDSE, connection_config
from .directory.readers import Scope, and_filter, member_filter, read_entries
from .groups import GroupGraph, StoredNesting, changed_nesting
from .locking import LockLost, run_lock
from .mapping import (
    MappingConfig,
    SkipEntry,
    UserRecord,
    build_mapping_config,
    entry_guid,
    map_user,
    member_key_of,
    primary_group_sid_of,
    unknown_schema_attributes,
    user_attribute_list,
    username_attribute,
)
from .membership import membership_scope, read_groups
from .models import DirectoryGroup, DirectoryUser, GroupNode, SyncMarker, SyncRun
from .nesting import (
    has_stored_nesting,
    load_stored_graph,
    mark_unsettled,
    memberships_unsettled,
    stored_member_lists,
    write_nesting,
)
from .store import MembershipTable, RunReport, Store
from .tracking import TimestampHigh, changed_filter, choose_mode, choose_tracking, entry_changed

logger = logging.getLogger("adldap_auth.sync")

FULL = SyncRun.MODE_FULL
INCREMENTAL = SyncRun.MODE_INCREMENTAL


class RemovalRefused(Exception):
    """Removals were held back by a safety rule; the message says which and how to proceed."""


@dataclass
class SyncOptions:
    mode: str | None = None  # "full", "incremental", or None (follow the settings)
    dry_run: bool = False
    force_removals: bool = False
    collect_changes: bool = False
    progress: Callable[[str, int], None] | None = None  # (phase, entries read so far)


@dataclass
class SyncResult:
    """The summary of a run, JSON-serialisable through :meth:`as_dict`."""

    run_id: int | None
    mode: str
    status: str
    server: str
    dry_run: bool
    counts: dict[str, int]
    problems: list[str]
    error: str
    ldap_searches: int
    seconds: float
    changes: list[str] | None = field(default=None, repr=False)
    mode_reason: str = ""
    error_kind: str = ""  # class name of the failure, e.g. "DirectoryUnavailable"

    @property
    def ok(self) -> bool:
        return self.status != SyncRun.STATUS_FAILED

    def as_dict(self) -> dict[str, Any]:
        data = {
            "run_id": self.run_id,
            "mode": self.mode,
            "mode_reason": self.mode_reason,
            "status": self.status,
            "server": self.server,
            "dry_run": self.dry_run,
            "counts": dict(sorted(self.counts.items())),
            "problems": self.problems,
            "error": self.error,
            "error_kind": self.error_kind,
            "ldap_searches": self.ldap_searches,
            "seconds": round(self.seconds, 3),
        }
        if self.changes is not None:
            data["changes"] = self.changes
        return data


def run_sync(options: SyncOptions | None = None) -> SyncResult:
    """Run one batch sync with the site's settings and return its summary.

    One run at a time across hosts (:mod:`adldap_auth.locking`): when another run holds the
    lock, raises :class:`~adldap_auth.locking.LockHeld` at once, having done and recorded
    nothing. Once the lock is taken, records left "running" by a run that died are closed.
    Any failure of the run itself is recorded and returned as a failed result (see
    :meth:`SyncEngine.run`), never raised.
    """
    with run_lock() as lock:
        close_interrupted_runs()
        engine = SyncEngine(options or SyncOptions(), heartbeat=lock.heartbeat)
        return engine.run()


def _without_secret(text: str) -> str:
    """``text`` with the bind password masked, should an unexpected error quote it."""
    password = sync_settings.BIND_PASS
    if isinstance(password, str) and password:
        text = text.replace(password, "********")
    return text


def close_interrupted_runs() -> int:
    """Mark as failed the run records still "running" (call only while holding the lock)."""
    return SyncRun.objects.filter(status=SyncRun.STATUS_RUNNING).update(
        status=SyncRun.STATUS_FAILED,
        finished_at=timezone.now(),
        error="interrupted: the process ended before the run finished",
    )


class SyncEngine:
    """One batch run. Create, call :meth:`run` once, read the result."""

    def __init__(self, options: SyncOptions, heartbeat: Callable[[], None] | None = None):
        self.options = options
        self.heartbeat = heartbeat
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
            self.session = DirectorySession.open(connection_config())
            self.run_record.server = self.session.uri
            self.root = self.session.root_dse()
            self._warn_if_privileged()
            self._run_body()
        except (DirectoryError, RemovalRefused, DatabaseError, LockLost) as exc:
            # DatabaseError: what the store could not isolate to one entry (lost connection,
            # a race it could not resolve). Batches already committed stay; nobody is removed.
            # LockLost: taken over (LDAP_SYNC_LOCK_STALE_AFTER), or its connection ended.
            error = str(exc)
            self.error_kind = type(exc).__name__
            status = SyncRun.STATUS_FAILED
            logger.error("sync run failed: %s", error)
        except Exception as exc:
            error = _without_secret(f"{type(exc).__name__}: {exc}")
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
        s = sync_settings
        config = build_mapping_config(is_ad=self.root.is_ad)
        self._warn_unknown_attributes(config)
        self.tracking = choose_tracking(self.root, s.CHANGE_TRACKING)
        marker = SyncMarker.objects.filter(server=self.session.uri).first()
        self.mode, self.mode_reason = choose_mode(
            self.options.mode,
            marker,
            self.root,
            self.tracking,
            incremental_allowed=bool(s.USER_INCREMENTAL or self.options.mode == INCREMENTAL),
            between_full=int(s.INCREMENTAL_BETWEEN_FULL),
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
        self.high_water = TimestampHigh()
        # A run that died after writing memberships and before storing its nesting left
        # memberships that neither the stored nesting nor (if it changed since) the directory
        # describes: compared against the stored nesting, they would stay. Read before this
        # run marks the state itself.
        self.unsettled = bool(s.GROUP) and memberships_unsettled()
        store = Store(
            config,
            self.report,
            server=self.session.uri,
            dry_run=self.options.dry_run,
            set_unusable_password=s.USER_SET_UNUSABLE_PASSWORD,
            user_callbacks=[resolve_callback(path) for path in s.USER_CALLBACKS],
            defer_membership_removals=True,  # applied by _remove_missing, under the threshold
            defer_relinks=True,  # decided once the read is complete: _sync_deferred_users
            # settled again by write_nesting, at the end of a successful run
            before_membership_write=mark_unsettled if s.GROUP and not self.options.dry_run else None,
        )
        create_outside = bool(s.GROUP_MEMBERSHIP_CREATE_IF_NOT_EXISTS)
        group_ids: dict[str, int] = {}
        graph = GroupGraph([])
        present_groups: set[str] = set()
        changed_groups: set[str] = set()
        before: dict[str, StoredNesting] = {}
        if s.GROUP:
            graph, changed_groups = self._read_groups(config)
            if self.mode == INCREMENTAL:
                before = stored_member_lists(changed_groups)
            # Synced now: the group scope, and the groups outside it that Django already
            # manages. Other groups outside it are created when a user turns out to be in one.
            linked = set(DirectoryGroup.objects.values_list("guid", flat=True))
            synced = [
                r for r in graph.records() if r.in_scope or (create_outside and r.guid in linked)
            ]
            present_groups = {r.guid for r in synced}
            check_group_read(present_groups, linked_group_guids(), s.REMOVAL_THRESHOLD, self.options.force_removals)
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
            self._remove_missing(store, set(present_users))
            self._delete_after_grace(store, set(present_users))
            present_groups |= planner.created
        if s.GROUP:
            store.remove_groups(present_groups, s.GROUP_REMOVAL_ACTION, removal_grace())
        if not self.options.dry_run:
            if s.GROUP:
                self.report.counts["nesting_rows_written"] = write_nesting(graph)
            self._save_marker(marker)

    # -- users --------------------------------------------------------------------------------

    def _sync_users(self, config, store, planner) -> dict[str, tuple[str, str | None]]:
        """Write users (all of them, or those changed) and their memberships, a batch at a time.

        Returns every user in scope: guid -> (member key, primary group SID). A full run gets it
        from the users it reads; an incremental run from an id-only sweep of the whole scope.
        """
        s = sync_settings
        present: dict[str, tuple[str, str | None]] = {}
        self.synced_user_guids: set[str] = set()
        scope = Scope(s.USER_SEARCH, s.USER_FILTER)
        if self.mode == INCREMENTAL:
            scope = Scope(
                s.USER_SEARCH,
                changed_filter(
                    self.tracking, self.marker, s.USER_FILTER, s.USER_FILTER_INCREMENTAL, s
                ),
            )
        attributes = [*user_attribute_list(config), self.tracking.attribute]
        records = self._read_users(config, scope, attributes, present)
        for batch in _chunks(records, int(s.WRITE_BATCH_SIZE)):
            if self.heartbeat:  # before each batch's writes: a lost lock stops the run here
                self.heartbeat()
            self._report_record_problems(batch)
            outcomes = store.sync_users(batch)
            self.report.counts["users_seen"] += len(batch)
            self.synced_user_guids.update(r.guid for r in batch)
            if s.GROUP_MEMBERSHIP:
                store.sync_memberships(planner.desired(outcomes), planner.managed)
            self._remove_disabled(store, batch)
        if self.mode == INCREMENTAL:
            present = self._sweep_users(config)
        self._sync_deferred_users(store, planner, present)
        return present

    def _sync_deferred_users(
        self, store: Store, planner: MembershipPlanner, present: dict[str, Any]
    ) -> None:
        """Re-created accounts (a username whose Django user is linked to another entry): only
        now that the whole scope was read does the run know whether the old entry is gone,
        so that the user moves to the new one (before removals, which would else remove it)."""
        outcomes = store.sync_deferred_users(present.keys())
        if not outcomes:
            return
        if sync_settings.GROUP_MEMBERSHIP:
            store.sync_memberships(planner.desired(outcomes), planner.managed)
        self._remove_disabled(store, [outcome.record for outcome in outcomes])

    def _read_users(self, config, scope, attributes, present) -> Iterator[UserRecord]:
        for entry in read_entries(self.session, scope, attributes):
            self.high_water.see(entry.first(self.tracking.attribute))
            guid = entry_guid(entry, config.identity_attribute)
            if guid:
                # Even a malformed entry is present: its Django user must never be removed.
                present[guid] = (member_key_of(entry, config), primary_group_sid_of(entry))
            try:
                yield map_user(entry, config)
            except SkipEntry as skip:
                if skip.exempt:
                    logger.debug("user %s skipped: %s", entry.dn, skip)
                    self.report.counts["users_exempt"] += 1
                else:
                    self.report.problem("user %s skipped: %s", entry.dn, skip)
                    self.report.counts["users_skipped"] += 1
            self._progress("users", len(present))

    def _sweep_users(self, config) -> dict[str, tuple[str, str | None]]:
        """Id, DN and primary group of every user in scope: finds deletions and moves."""
        s = sync_settings
        present: dict[str, tuple[str, str | None]] = {}
        attributes = [config.identity_attribute, self.tracking.attribute, "objectSid", "primaryGroupID"]
        if config.member_attribute == "memberuid":
            attributes.append(username_attribute(config))
        for entry in read_entries(self.session, Scope(s.USER_SEARCH, s.USER_FILTER), attributes):
            self.high_water.see(entry.first(self.tracking.attribute))
            guid = entry_guid(entry, config.identity_attribute)
            if guid:
                present[guid] = (member_key_of(entry, config), primary_group_sid_of(entry))
            self._progress("sweep", len(present))
        self.report.counts["users_swept"] = len(present)
        return present

    def _resync_affected_memberships(
        self,
        store: Store,
        planner: MembershipPlanner,
        present: dict[str, tuple[str, str | None]],
        changed_groups: set[str],
        before: dict[str, StoredNesting],
    ) -> None:
        """Incremental: memberships of users whose groups changed though their entry did not.

        Rechecked (see :func:`~adldap_auth.groups.changed_nesting`): users added to or removed
        from a changed group; users at any depth below a group whose own place moved, and users
        whose primary group is such a group or below one; users holding a managed group that
        was above a group gone from the membership scope (in the stored nesting), or a managed
        group that this run no longer manages.
        """
        graph = planner.graph
        moved, affected_keys, _new = changed_nesting(graph, before, changed_groups)
        affected_keys |= graph.members_affected_by(moved)
        primary_hit = {
            sid
            for sid in {pg for _key, pg in present.values() if pg}
            if (found := graph.find_by_sid(sid)) is not None and graph.ancestors(found.guid) & moved
        }
        # Changes spread over most groups affect most users: then every user is rechecked,
        # which ends in the same state (a recheck of an unaffected user changes nothing) without
        # reading who holds the groups (millions of rows at 100,000 users).
        # After a run that died unsettled (see _run_body), every user is rechecked too.
        recheck_all = self.unsettled or len(affected_keys) >= len(present) // 2
        if self.unsettled:
            logger.info("a run died after writing memberships: every user's are rechecked")
            self.report.counts["memberships_recheck_all"] = 1
        held = set() if recheck_all else set(user_ids_holding(store, self._lost_group_ids(planner)))
        if not (recheck_all or affected_keys or primary_hit or held):
            return
        # Disabled users are still in scope: a full run keeps their memberships current too.
        links = dict(DirectoryUser.objects.values_list("guid", "user_id"))
        wanted: dict[int, tuple[str, str | None]] = {}
        for guid, (member_key, primary_sid) in present.items():
            user_id = links.get(guid)
            if user_id is None or guid in self.synced_user_guids:
                continue
            if (
                recheck_all
                or member_key in affected_keys
                or primary_sid in primary_hit
                or user_id in held
            ):
                wanted[user_id] = (member_key, primary_sid)
        self.report.counts["memberships_rechecked_users"] = len(wanted)
        items = list(wanted.items())
        batch_size = int(sync_settings.WRITE_BATCH_SIZE)
        for start in range(0, len(items), batch_size):
            if self.heartbeat:
                self.heartbeat()
            batch = dict(items[start : start + batch_size])
            store.sync_memberships(planner.ids_by_key(batch), planner.managed)

    @staticmethod
    def _lost_group_ids(planner: MembershipPlanner) -> set[int]:
        """Managed groups whose holders may lose them without any user entry changing: those
        this run no longer manages, and those that were above a group now gone from the
        membership scope (its stored nesting tells which)."""
        links = DirectoryGroup.objects.values_list("guid", "group_id")
        by_guid = dict(links)
        lost = {group_id for guid, group_id in by_guid.items() if guid not in planner.present}
        stored = set(GroupNode.objects.values_list("guid", flat=True))
        gone = stored - {r.guid for r in planner.graph.records()}
        if gone:
            old = load_stored_graph()
            above = set().union(*(old.ancestors(guid) for guid in gone))
            lost |= {by_guid[guid] for guid in above if guid in by_guid}
        return lost

    def _report_record_problems(self, batch: list[UserRecord]) -> None:
        for record in batch:
            for problem in record.problems:
                self.report.warning("user %s: %s", record.dn, problem)

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
                or entry_changed(stamp, tracking, self.marker, sync_settings.INCREMENTAL_TIME_OFFSET)
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

    # -- removals -----------------------------------------------------------------------------

    def _remove_disabled(self, store: Store, batch: list[UserRecord]) -> None:
        disabled = [r.guid for r in batch if r.disabled]
        if not disabled:
            return
        self.disabled_seen.update(disabled)
        links = DirectoryUser.objects.select_related("user").filter(
            guid__in=disabled, removed_at__isnull=True
        )
        store.remove_users(links, self._removed_callbacks(), DirectoryUser.REASON_DISABLED)

    def _remove_missing(self, store: Store, present: set[str]) -> None:
        """The removals held back until the whole scope was read, if it is safe to make them:
        the memberships the batches found gone (see ``defer_membership_removals`` of
        :class:`~adldap_auth.store.Store`), then the removal callbacks for linked users gone
        from the scope. Both thresholds are checked before either is applied.

        Reached only when every search of the run completed: any incomplete read raised
        before this point, so a failed run removes no user and no membership.
        """
        if self.heartbeat:  # removals only by the lock's holder
            self.heartbeat()
        threshold, force = sync_settings.REMOVAL_THRESHOLD, self.options.force_removals
        candidates = store.removal_candidates(present)
        if candidates:
            active = DirectoryUser.objects.filter(removed_at__isnull=True).count()
            check_removal_threshold(len(candidates), active, len(present), threshold, force)
        pending = store.pending_membership_removals
        check_membership_removals(len(pending), store.managed_memberships, threshold, force)
        store.apply_membership_removals()
        if candidates:
            store.remove_users(
                candidates,
                self._removed_callbacks(),
                DirectoryUser.REASON_MISSING,
                managed_group_ids=self.managed_group_ids,
            )
        store.forget_gone_disabled_users(present, self.managed_group_ids)

    def _warn_if_privileged(self) -> None:
        """Say so when the bind account administers the domain (AD's rootDSE tokenGroups)."""
        groups = self.root.privileged_groups if self.root else []
        if groups:
            self.report.warning(
                "the bind account %s is a member of %s: a sync only reads the directory; "
                "bind with a least-privilege reader account instead",
                sync_settings.BIND_DN,
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

    def _removed_callbacks(self) -> list[Callable]:
        """The removal callbacks; with LDAP_SYNC_REMOVAL_GRACE, deactivate instead of delete
        (the delete callback runs later, in :meth:`_delete_after_grace`)."""
        callbacks = [resolve_callback(path) for path in sync_settings.REMOVED_USER_CALLBACKS]
        if removal_grace() is None or removed_user_delete not in callbacks:
            return callbacks
        first_step = [c for c in callbacks if c is not removed_user_delete]
        if removed_user_deactivate not in first_step:
            first_step.insert(callbacks.index(removed_user_delete), removed_user_deactivate)
        return first_step

    def _delete_after_grace(self, store: Store, present: set[str]) -> None:
        """LDAP_SYNC_REMOVAL_GRACE: the delete callback, for users removed (deactivated) longer
        ago than the grace period and still gone, or still disabled.

        Reached only after a complete read, like :meth:`_remove_missing`. An entry back in scope
        was restored by this run (``removed_at`` cleared), so it is not a candidate; an entry in
        scope that could not be mapped is never deleted. A disabled entry counts as still
        disabled only when this run read it (full runs read every entry; incremental runs only
        the changed ones).
        """
        grace = removal_grace()
        if grace is None:
            return
        callbacks = [resolve_callback(path) for path in sync_settings.REMOVED_USER_CALLBACKS]
        if removed_user_delete not in callbacks:
            return
        expired = DirectoryUser.objects.select_related("user").filter(
            removed_at__isnull=False, removed_at__lte=timezone.now() - grace
        )
        due = [
            link
            for link in expired
            if link.guid not in present
            or (
                link.removal_reason == DirectoryUser.REASON_DISABLED
                and link.guid in self.disabled_seen
            )
        ]
        if due:
            store.delete_removed_users(due, [removed_user_delete])

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


def user_ids_holding(store: Store, group_ids: set[int]) -> list[int]:
    """Users holding a Django membership of any of these groups."""
    if not group_ids:
        return []
    table = MembershipTable.of(store.User)
    return list(
        table.model.objects.filter(**{f"{table.group}__in": list(group_ids)})
        .values_list(table.user, flat=True)
        .distinct()
    )


class MembershipPlanner:
    """Each user's wanted set of Django group ids: the graph's closure (or the seed's filter),
    restricted to the groups Django manages.

    A group outside the group scope that a user turns out to be in is created here, with
    ``LDAP_SYNC_GROUP_MEMBERSHIP_CREATE_IF_NOT_EXISTS``, once per run, a batch of users at a
    time (``created`` lists them, ``managed`` grows with them).
    """

    def __init__(
        self,
        engine: SyncEngine,
        config: MappingConfig,
        graph: GroupGraph,
        group_ids: dict[str, int],
        default_ids: set[int],
        store: Store,
        managed: set[int],
        create_outside: bool,
    ) -> None:
        self.engine = engine
        self.config = config
        self.graph = graph
        self.group_ids = group_ids
        self.default_ids = default_ids
        self.store = store
        self.managed = managed
        self.create_outside = create_outside
        self.legacy = sync_settings.GROUP_MEMBERSHIP_MODE == "filter"
        self.present: set[str] = set(group_ids)  # guids of the groups managed in this run
        self.created: set[str] = set()
        self._unwritable: set[str] = set()
        self._lookup_session: DirectorySession | None = None

    def desired(self, outcomes: Iterable[Any]) -> dict[int, set[int]]:
        """Wanted group ids of each user of a written batch (by Django user id)."""
        guids = {
            outcome.user.pk: self.group_guids(outcome.record)
            for outcome in outcomes
            if outcome.user is not None and outcome.user.pk is not None
        }
        return self._ids(guids)

    def ids_by_key(self, users: dict[int, tuple[str, str | None]]) -> dict[int, set[int]]:
        """Graph mode: wanted group ids of users known by (member key, primary group SID)."""
        return self._ids(
            {user_id: self.graph.groups_for(key, sid) for user_id, (key, sid) in users.items()}
        )

    def group_guids(self, record: UserRecord) -> Iterable[str]:
        if not self.legacy:
            return self.graph.groups_for(record.member_key, record.primary_group_sid)
        return self._legacy_group_guids(record)

    def _ids(self, guids_by_user: dict[int, Iterable[str]]) -> dict[int, set[int]]:
        manageable = {
            user_id: self.graph.manageable(guids, self.create_outside)
            for user_id, guids in guids_by_user.items()
        }
        self._create({g for guids in manageable.values() for g in guids})
        ids = self.group_ids
        return {
            user_id: {ids[g] for g in guids if g in ids} | self.default_ids
            for user_id, guids in manageable.items()
        }

    def _create(self, guids: set[str]) -> None:
        """Sync the groups of ``guids`` that this run has not synced yet."""
        missing = [g for g in guids if g not in self.group_ids and g not in self._unwritable]
        if not missing:
            return
        written = self.store.sync_groups(self.graph.by_guid(g) for g in sorted(missing))
        self.group_ids.update(written)
        self.managed.update(written.values())
        self.present.update(written)
        self.created.update(written)
        self._unwritable.update(g for g in missing if g not in written)

    def _lookups(self) -> DirectorySession:
        """A second connection to the same server: the per-user searches of the seed's mode
        run while the paged user search is open, and a server may not interleave them."""
        if self._lookup_session is None:
            config = dataclasses.replace(connection_config(), uris=(self.engine.session.uri,))
            self._lookup_session = DirectorySession.open(config)
            self.engine.extra_sessions.append(self._lookup_session)
        return self._lookup_session

    def _legacy_group_guids(self, record: UserRecord) -> set[str]:
        """The seed's way: one search per user with LDAP_SYNC_GROUP_MEMBERSHIP_FILTER."""
        s = sync_settings
        filterstr = member_filter(s.GROUP_MEMBERSHIP_FILTER, record.dn)
        members = membership_scope(self.config)
        scope = Scope(members.base, and_filter(members.filterstr, filterstr))
        guids = set()
        for entry in read_entries(self._lookups(), scope, [self.config.identity_attribute]):
            guid = entry_guid(entry, self.config.identity_attribute)
            if guid:
                guids.add(guid)
        # Nesting counts whatever the filter (IN_CHAIN already gives it on AD), as at login.
        return self.graph.groups_above(guids, record.primary_group_sid)


def removal_grace() -> dt.timedelta | None:
    """LDAP_SYNC_REMOVAL_GRACE as a timedelta (the setting is seconds or a timedelta)."""
    value = sync_settings.REMOVAL_GRACE
    if value is None or isinstance(value, dt.timedelta):
        return value
    return dt.timedelta(seconds=value)


def check_removal_threshold(
    removing: int, active: int, present: int, threshold: Any, force: bool
) -> None:
    """Raise :class:`RemovalRefused` when a run would remove more users than allowed.

    An empty directory result while synced users exist is refused even with ``force``: it
    is far more often a wrong filter or base than a company that lost every employee.
    """
    if present == 0 and active > 0:
        raise RemovalRefused(
            f"the directory returned no users while {active} synced users exist; "
            "nobody was removed (check LDAP_SYNC_USER_SEARCH and LDAP_SYNC_USER_FILTER)"
        )
    _refuse_above_threshold(
        removing, active, "users", "synced users", threshold, force, "nobody was removed"
    )


def linked_group_guids() -> set[str]:
    """Ids of the directory groups Django manages now (linked, not retired)."""
    return set(DirectoryGroup.objects.filter(removed_at__isnull=True).values_list("guid", flat=True))


def check_group_read(present: set[str], linked: set[str], threshold: Any, force: bool) -> None:
    """Raise :class:`RemovalRefused` when the group read lost too many managed groups.

    Call it right after the groups are read, before anything is written: ``present`` holds
    the ids of the groups the run will keep managing, ``linked`` those of
    :func:`linked_group_guids`. Memberships are written a batch of users at a time, so a
    group read that returns nothing (a typo in LDAP_SYNC_GROUP_FILTER, an empty
    LDAP_SYNC_GROUP_SEARCH) must stop the run here, before the first batch strips every
    user of the lost groups; the same drop would then retire or delete the groups
    (LDAP_SYNC_GROUP_REMOVAL_ACTION). A read that finds none of the linked groups is refused
    whatever the threshold; ``force`` applies both.
    """
    if force or not linked:
        return
    gone = len(linked - present)
    if gone == len(linked):
        raise RemovalRefused(
            f"the directory returned none of the {len(linked)} synced groups; nothing was "
            "written (check LDAP_SYNC_GROUP_SEARCH and LDAP_SYNC_GROUP_FILTER). If they were "
            "all removed on purpose, run 'manage.py syncldap full --force-removals'."
        )
    _refuse_above_threshold(
        gone, len(linked), "synced groups are missing from the directory's answer and",
        "synced groups", threshold, force, "nothing was written",
    )  # fmt: skip


def check_membership_removals(removing: int, total: int, threshold: Any, force: bool) -> None:
    """Raise :class:`RemovalRefused` when a run would remove more memberships of managed
    groups than allowed (``total``: how many such memberships Django held before the run)."""
    _refuse_above_threshold(
        removing, total, "memberships", "managed memberships", threshold, force,
        "no membership and nobody was removed",
    )  # fmt: skip


def _refuse_above_threshold(
    removing: int, total: int, what: str, noun: str, threshold: Any, force: bool, outcome: str
) -> None:
    """The rule shared by every kind of removal: ``removing`` out of ``total`` against
    LDAP_SYNC_REMOVAL_THRESHOLD (read by :func:`~adldap_auth.conf.removal_threshold`)."""
    rule = removal_threshold(threshold)
    if force or rule is None or removing <= rule.limit(total):
        return
    raise RemovalRefused(
        f"{removing} {what} would be removed, more than LDAP_SYNC_REMOVAL_THRESHOLD "
        f"({rule.describe(total, noun)}); {outcome}. Check the directory, then run "
        "'manage.py syncldap full --force-removals' to apply them."
    )


def _chunks(items: Iterable[UserRecord], size: int) -> Iterator[list[UserRecord]]:
    batch: list[UserRecord] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch

