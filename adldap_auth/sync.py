"""A batch run: read the directory, make Django match, record what happened.

Order of a full run, and why:

1. Read the rootDSE first, so an incremental marker never skips a change made during the run.
2. Read every group (paged, ranged ``member`` values) and build the group graph once.
3. Stream users a page at a time; map, write and set memberships in batches of
   ``LDAP_SYNC_WRITE_BATCH_SIZE``, each batch its own transaction (no lock held for minutes,
   no half-applied batch).
4. Only when every search completed: removals, guarded by ``LDAP_SYNC_REMOVAL_THRESHOLD``.

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

from django.db import DatabaseError
from django.utils import timezone

from . import signals
from .callbacks import removed_user_deactivate, removed_user_delete, resolve_callback
from .conf import sync_settings
from .directory import DirectoryError, Entry
from .directory.connection import ConnectionConfig, DirectorySession, RootDSE
from .directory.decoding import domain_sid_and_rid, sid_to_str
from .directory.readers import Scope, and_filter, member_filter, read_entries
from .groups import GroupGraph, StoredNesting, changed_nesting
from .locking import LockLost, run_lock
from .mapping import (
    MappingConfig,
    SkipEntry,
    UserRecord,
    build_mapping_config,
    decode_identity,
    group_attribute_list,
    map_group,
    map_user,
    normalize_dn,
    user_attribute_list,
)
from .models import DirectoryGroup, DirectoryUser, SyncMarker, SyncRun
from .store import RunReport, Store
from .stored_groups import clear_stored_groups
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


def connection_config() -> ConnectionConfig:
    """The directory connection described by the ``LDAP_SYNC_*`` settings."""
    s = sync_settings
    return ConnectionConfig(
        uris=tuple(s.bind_uris),
        bind_dn=s.BIND_DN or "",
        bind_password=s.BIND_PASS or "",
        start_tls=s.START_TLS,
        ca_file=s.CA_FILE,
        require_cert=s.REQUIRE_CERT,
        network_timeout=float(s.NETWORK_TIMEOUT),
        operation_timeout=float(s.OPERATION_TIMEOUT),
        page_size=int(s.BIND_PAGESIZE),
        range_size=s.RANGE_SIZE,
    )


def entry_guid(entry: Entry, identity_attribute: str) -> str | None:
    """An entry's immutable id as stored in identity links, or None when it has none."""
    raw = entry.first(identity_attribute)
    if raw is None:
        return None
    try:
        return decode_identity(identity_attribute.lower(), raw)
    except ValueError:
        return None


def default_group_names(values: Iterable[Any]) -> list[str]:
    """LDAP_SYNC_GROUP_MEMBERSHIP_ADD_DEFAULT: names, or the seed's ``(dn, {"cn": [b"x"]})``."""
    names = []
    for value in values:
        if isinstance(value, str):
            names.append(value)
        else:
            _dn, attrs = value
            cn = attrs.get("cn") or attrs.get("CN")
            name = cn[0] if isinstance(cn, list | tuple) else cn
            names.append(name.decode() if isinstance(name, bytes) else str(name))
    return names


def run_sync(options: SyncOptions | None = None) -> SyncResult:
    """Run one batch sync with the site's settings and return its summary.

    One run at a time across hosts (:mod:`adldap_auth.locking`): when another run holds the
    lock, raises :class:`~adldap_auth.locking.LockHeld` at once, having done and recorded
    nothing. Once the lock is taken, records left "running" by a run that died are closed.
    """
    with run_lock() as lock:
        close_interrupted_runs()
        engine = SyncEngine(options or SyncOptions(), heartbeat=lock.heartbeat)
        started = time.monotonic()
        try:
            return engine.run()
        except LockLost as exc:  # taken over after a silence beyond LDAP_SYNC_LOCK_STALE_AFTER
            logger.error("sync run stopped: %s", exc)
            engine.error_kind = type(exc).__name__
            return engine._finish(SyncRun.STATUS_FAILED, str(exc), time.monotonic() - started)


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

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> SyncResult:
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
        except (DirectoryError, RemovalRefused, DatabaseError) as exc:
            # DatabaseError: what the store could not isolate to one entry (lost connection,
            # a race it could not resolve). Batches already committed stay; nobody is removed.
            error = str(exc)
            self.error_kind = type(exc).__name__
            status = SyncRun.STATUS_FAILED
            logger.error("sync run failed: %s", error)
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
        clear_stored_groups()  # logins of this process see the nesting this run stored
        signals.run_finished.send(SyncEngine, run=record, summary=result.as_dict())
        return result

    def _run_body(self) -> None:
        s = sync_settings
        config = build_mapping_config(is_ad=self.root.is_ad)
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
        logger.info("%s run against %s: %s", self.mode, self.session.uri, self.mode_reason)
        self.marker = marker if self.mode == INCREMENTAL else None
        self.high_water = TimestampHigh()
        store = Store(
            config,
            self.report,
            server=self.session.uri,
            dry_run=self.options.dry_run,
            set_unusable_password=s.USER_SET_UNUSABLE_PASSWORD,
            user_callbacks=[resolve_callback(path) for path in s.USER_CALLBACKS],
        )
        group_ids: dict[str, int] = {}
        graph = GroupGraph([])
        present_groups: set[str] = set()
        changed_groups: set[str] = set()
        before: dict[str, StoredNesting] = {}
        if s.GROUP:
            graph, present_groups, changed_groups = self._read_groups(config)
            if self.mode == INCREMENTAL:
                before = stored_nesting(changed_groups)  # read before sync_groups stores the new
            group_ids = store.sync_groups(graph.records(), graph.nesting())
        default_ids = set(
            store.ensure_plain_groups(
                default_group_names(s.GROUP_MEMBERSHIP_ADD_DEFAULT),
                s.GROUP_MEMBERSHIP_CREATE_IF_NOT_EXISTS,
            ).values()
        )
        if s.USER:
            managed = set(DirectoryGroup.objects.values_list("group_id", flat=True)) | default_ids
            planner = MembershipPlanner(self, config, graph, group_ids, default_ids)
            present_users = self._sync_users(config, store, planner, managed)
            if self.mode == INCREMENTAL and s.GROUP_MEMBERSHIP and not planner.legacy:
                self._resync_affected_memberships(
                    store, planner, managed, present_users, changed_groups, before
                )
            self._remove_missing(store, set(present_users))
            self._delete_after_grace(store, set(present_users))
        if s.GROUP:
            store.remove_groups(present_groups, s.GROUP_REMOVAL_ACTION)
        if not self.options.dry_run:
            self._save_marker(marker)

    # -- users --------------------------------------------------------------------------------

    def _sync_users(self, config, store, planner, managed) -> dict[str, tuple[str, str | None]]:
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
            self._report_record_problems(batch)
            outcomes = store.sync_users(batch)
            self.report.counts["users_seen"] += len(batch)
            self.synced_user_guids.update(r.guid for r in batch)
            if s.GROUP_MEMBERSHIP:
                store.sync_memberships(planner.desired(outcomes), managed)
            self._remove_disabled(store, batch)
            if self.heartbeat:
                self.heartbeat()
        if self.mode == INCREMENTAL:
            present = self._sweep_users(config)
        return present

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
            attributes.append(_username_attribute(config))
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
        managed: set[int],
        present: dict[str, tuple[str, str | None]],
        changed_groups: set[str],
        before: dict[str, StoredNesting],
    ) -> None:
        """Incremental: memberships of users whose groups changed though their entry did not.

        Rechecked (see :func:`~adldap_auth.groups.changed_nesting`): users added to or removed
        from a changed group; users at any depth below a group whose own place moved, and users
        whose primary group is such a group or below one; users holding a group that vanished,
        or a changed group whose former member list is unknown.
        """
        graph = planner.graph
        vanished = set(
            DirectoryGroup.objects.exclude(guid__in=[r.guid for r in graph.records()]).values_list(
                "group_id", flat=True
            )
        )
        moved, affected_keys, unknown = changed_nesting(graph, before, changed_groups)
        affected_keys |= graph.members_affected_by(moved)
        primary_hit = {
            sid
            for sid in {pg for _key, pg in present.values() if pg}
            if (found := graph.find_by_sid(sid)) is not None and graph.ancestors(found.guid) & moved
        }
        unknown_ids = {planner.group_ids[g] for g in unknown if g in planner.group_ids}
        # Changes spread over most groups affect most users: then every user is rechecked,
        # which ends in the same state (a recheck of an unaffected user changes nothing) without
        # reading who holds the groups (millions of rows at 100,000 users).
        recheck_all = len(affected_keys) >= len(present) // 2
        held = set() if recheck_all else set(user_ids_holding(store, unknown_ids | vanished))
        if not (recheck_all or affected_keys or primary_hit or held):
            return
        # Disabled users are still in scope: a full run keeps their memberships current too.
        links = dict(DirectoryUser.objects.values_list("guid", "user_id"))
        wanted: dict[int, set[int]] = {}
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
                wanted[user_id] = planner.ids_for(member_key, primary_sid)
        self.report.counts["memberships_rechecked_users"] = len(wanted)
        items = list(wanted.items())
        batch_size = int(sync_settings.WRITE_BATCH_SIZE)
        for start in range(0, len(items), batch_size):
            store.sync_memberships(dict(items[start : start + batch_size]), managed)

    def _report_record_problems(self, batch: list[UserRecord]) -> None:
        for record in batch:
            for problem in record.problems:
                self.report.warning("user %s: %s", record.dn, problem)

    # -- groups -------------------------------------------------------------------------------

    def _read_groups(self, config: MappingConfig) -> tuple[GroupGraph, set[str], set[str]]:
        """Every group in scope (the graph needs them all), and which changed since the marker."""
        s = sync_settings
        scope = Scope(s.GROUP_SEARCH, s.GROUP_FILTER)
        records = []
        present: set[str] = set()
        changed: set[str] = set()
        attributes = [*group_attribute_list(config), self.tracking.attribute]
        for entry in read_entries(self.session, scope, attributes, ranged=[config.member_attribute]):
            stamp = entry.first(self.tracking.attribute)
            self.high_water.see(stamp)
            guid = entry_guid(entry, config.identity_attribute)
            if guid:
                present.add(guid)
                if self.marker is None or entry_changed(
                    stamp, self.tracking, self.marker, sync_settings.INCREMENTAL_TIME_OFFSET
                ):
                    changed.add(guid)
            try:
                records.append(map_group(entry, config))
            except SkipEntry as skip:
                self.report.problem("group %s skipped: %s", entry.dn, skip)
                self.report.counts["groups_skipped"] += 1
            self._progress("groups", len(present))
        self.report.counts["groups_seen"] = len(records)
        if self.marker is not None:
            self.report.counts["groups_changed"] = len(changed)
        return GroupGraph(records), present, changed

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
        """Removal callbacks for linked users gone from the scope, if it is safe to run them.

        Reached only when every search of the run completed: any incomplete read raised
        before this point.
        """
        candidates = store.removal_candidates(present)
        if not candidates:
            return
        active = DirectoryUser.objects.filter(removed_at__isnull=True).count()
        check_removal_threshold(
            len(candidates),
            active,
            len(present),
            sync_settings.REMOVAL_THRESHOLD,
            self.options.force_removals,
        )
        store.remove_users(candidates, self._removed_callbacks(), DirectoryUser.REASON_MISSING)

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
        """Remember where this run started, for the next incremental run on this server."""
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
        marker.save()


def stored_nesting(group_guids: set[str]) -> dict[str, StoredNesting]:
    """DN and member list that the database holds of these groups (those it has)."""
    rows = DirectoryGroup.objects.filter(guid__in=list(group_guids)).values_list(
        "guid", "dn", "member_keys"
    )
    return {guid: StoredNesting(dn, keys) for guid, dn, keys in rows}


def user_ids_holding(store: Store, group_ids: set[int]) -> list[int]:
    """Users holding a Django membership of any of these groups."""
    if not group_ids:
        return []
    through = store.User.groups.through
    return list(
        through.objects.filter(group_id__in=list(group_ids))
        .values_list("user_id", flat=True)
        .distinct()
    )


def member_key_of(entry: Entry, config: MappingConfig) -> str:
    """How group member values name this entry (as :attr:`UserRecord.member_key`)."""
    if config.member_attribute == "memberuid":
        value = entry.text(_username_attribute(config)) or ""
        return value.lower()
    return normalize_dn(entry.dn)


def primary_group_sid_of(entry: Entry) -> str | None:
    raw_sid, raw_rid = entry.first("objectsid"), entry.first("primarygroupid")
    if raw_sid is None or raw_rid is None:
        return None
    try:
        return f"{domain_sid_and_rid(sid_to_str(raw_sid))[0]}-{int(raw_rid)}"
    except ValueError:
        return None


def _username_attribute(config: MappingConfig) -> str:
    return next(a for a, f in config.user_attributes.items() if f == config.username_field)


class MembershipPlanner:
    """Each user's wanted set of Django group ids: the graph's closure, or the seed's filter."""

    def __init__(self, engine, config, graph, group_ids, default_ids):
        self.engine = engine
        self.config = config
        self.graph = graph
        self.group_ids = group_ids
        self.default_ids = default_ids
        self.legacy = sync_settings.GROUP_MEMBERSHIP_MODE == "filter"
        self._lookup_session: DirectorySession | None = None

    def desired(self, outcomes) -> dict[int, set[int]]:
        wanted: dict[int, set[int]] = {}
        for outcome in outcomes:
            if outcome.user is None or outcome.user.pk is None:
                continue
            guids = self.group_guids(outcome.record)
            ids = {self.group_ids[g] for g in guids if g in self.group_ids}
            wanted[outcome.user.pk] = ids | self.default_ids
        return wanted

    def ids_for(self, member_key: str, primary_group_sid: str | None) -> set[int]:
        """Graph mode only: the wanted group ids of a user known by member key and SID."""
        guids = self.graph.groups_for(member_key, primary_group_sid)
        return {self.group_ids[g] for g in guids if g in self.group_ids} | self.default_ids

    def group_guids(self, record: UserRecord) -> Iterable[str]:
        if not self.legacy:
            return self.graph.groups_for(record.member_key, record.primary_group_sid)
        return self._legacy_group_guids(record)

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
        scope = Scope(s.GROUP_SEARCH, and_filter(s.GROUP_FILTER, filterstr))
        guids = set()
        for entry in read_entries(self._lookups(), scope, [self.config.identity_attribute]):
            guid = entry_guid(entry, self.config.identity_attribute)
            if guid:
                guids.add(guid)
        if record.primary_group_sid:
            primary = self.graph.find_by_sid(record.primary_group_sid)
            if primary is not None:
                guids |= self.graph.ancestors(primary.guid)
        return guids


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
    if force or threshold is None:
        return
    if isinstance(threshold, str) and threshold.strip().endswith("%"):
        limit = active * float(threshold.strip()[:-1]) / 100
        shown = f"{threshold.strip()} of {active} synced users"
    else:
        limit = int(threshold)
        shown = str(limit)
    if removing > limit:
        raise RemovalRefused(
            f"{removing} users would be removed, more than LDAP_SYNC_REMOVAL_THRESHOLD "
            f"({shown}); nobody was removed. Check the directory, then run "
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

