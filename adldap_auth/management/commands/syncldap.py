"""``manage.py syncldap [full|incremental|watch]``: parse arguments, run the sync, print the
summary.

``watch`` follows the directory until SIGTERM or SIGINT (:mod:`adldap_auth.watch`), printing
one line per batch that changed something; it exits 0 when stopped, 1 when the lock was lost or
the settings have errors, 3 when another run holds the lock.

Exit status: 0 the run succeeded (or completed with per-entry problems: status "partial");
1 the run failed (recorded as failed); 2 wrong arguments; 3 another run holds the lock
(nothing was done or recorded).

``--verbosity 0`` (cron) prints nothing on success: no summary, and adldap-auth's INFO records
are kept off the site's console logging handlers for the run (see :func:`quiet_console`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
from collections.abc import Iterator

from django.core.management.base import BaseCommand, CommandError

from adldap_auth.conf import ConfigError, get_config
from adldap_auth.history import sync_status
from adldap_auth.locking import LockHeld
from adldap_auth.sync import SyncOptions, SyncResult, run_sync
from adldap_auth.watch import WatchOptions, WatchSummary, changed_anything, counts_text, watch

#: Exit status when another run holds the lock.
EXIT_LOCKED = 3

#: The loggers whose records ``--verbosity 0`` keeps off the terminal (below WARNING).
QUIET_LOGGERS = "adldap_auth"


def _below_warning_from_adldap_auth(record: logging.LogRecord) -> bool:
    """Filter: False (drop) for adldap-auth's DEBUG and INFO records."""
    quiet = record.name == QUIET_LOGGERS or record.name.startswith(QUIET_LOGGERS + ".")
    return not (quiet and record.levelno < logging.WARNING)


def _console_handlers() -> list[logging.Handler]:
    """The handlers that write adldap-auth's records to a terminal stream: stream handlers
    (not file handlers) on the ``adldap_auth`` loggers and on their ancestors."""
    loggers: list[logging.Logger] = [
        log
        for name, log in logging.root.manager.loggerDict.items()
        if isinstance(log, logging.Logger) and name.startswith(QUIET_LOGGERS + ".")
    ]
    log: logging.Logger | None = logging.getLogger(QUIET_LOGGERS)
    while log is not None:
        loggers.append(log)
        log = log.parent if log.propagate else None
    handlers: list[logging.Handler] = []
    for log in loggers:
        for handler in log.handlers:
            console = isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            )
            if console and handler not in handlers:
                handlers.append(handler)
    return handlers


@contextlib.contextmanager
def quiet_console(enabled: bool) -> Iterator[None]:
    """``--verbosity 0`` means silence on success, as cron expects: a console handler of the
    site's ``LOGGING`` (such as the documentation's example) would otherwise print the run's
    INFO lines (lock taken, run started, lock released), which cron mails. Warnings and
    errors still reach the console; file, syslog and other handlers keep every record."""
    if not enabled:
        yield
        return
    handlers = _console_handlers()
    for handler in handlers:
        handler.addFilter(_below_warning_from_adldap_auth)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(_below_warning_from_adldap_auth)


class Command(BaseCommand):
    help = (
        "Synchronise users, groups and memberships from the directory (LDAP_SYNC_* settings). "
        "One run at a time across hosts: a run started while another holds the lock exits at "
        "once. Exit status: 0 success (also 'partial': completed with per-entry problems), "
        "1 failed, 2 wrong arguments, 3 another sync is running (nothing done or recorded). "
        "--status prints the last runs, the incremental marker of each server and the lock."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "mode",
            nargs="?",
            choices=["full", "incremental", "watch"],
            help="full: read everything; incremental: only what changed; watch: follow the "
            "directory until SIGTERM, applying changes within seconds. Default: by settings.",
        )
        parser.add_argument(
            "--interval",
            type=float,
            metavar="SECONDS",
            help="watch: seconds between two looks at most (default LDAP_SYNC_WATCH_INTERVAL).",
        )
        parser.add_argument(
            "--duration",
            type=float,
            metavar="SECONDS",
            help="watch: stop after this many seconds (default: until SIGTERM or SIGINT).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Print the planned changes; write nothing."
        )
        parser.add_argument(
            "--force-removals",
            action="store_true",
            help="Apply removals even above LDAP_SYNC_REMOVAL_THRESHOLD (this run only).",
        )
        parser.add_argument("--json", action="store_true", help="Print the summary as JSON.")
        parser.add_argument(
            "--status",
            action="store_true",
            help="Print the last runs, the incremental marker per server and the lock; sync nothing.",
        )
        parser.add_argument(
            "--last",
            type=int,
            default=10,
            metavar="N",
            help="With --status: how many runs to list (default 10).",
        )

    def handle(self, *args, **options) -> None:
        if options["status"]:
            if options["mode"] or options["dry_run"] or options["force_removals"]:
                raise CommandError("--status takes no mode, --dry-run or --force-removals")
            self._print_status(options["last"], options["json"])
            return
        if options["mode"] == "watch":
            self._watch(options)
            return
        if options["interval"] is not None or options["duration"] is not None:
            raise CommandError("--interval and --duration are options of 'watch'")
        try:
            progress_setting = get_config().USER_SHOW_PROGRESS
        except ConfigError:  # the run records and reports it
            progress_setting = False
        show_progress = (
            progress_setting
            and not options["json"]
            and options["verbosity"] >= 1
            and self.stderr.isatty()
        )
        try:
            with quiet_console(options["verbosity"] == 0):
                result = run_sync(
                    SyncOptions(
                        mode=options["mode"],
                        dry_run=options["dry_run"],
                        force_removals=options["force_removals"],
                        progress=self._progress if show_progress else None,
                    )
                )
        except LockHeld as held:
            raise CommandError(f"{held}; nothing was done", returncode=EXIT_LOCKED) from None
        if show_progress:
            self.stderr.write("")
        if options["json"]:
            self.stdout.write(json.dumps(result.as_dict(), indent=2))
        else:
            self._print_summary(result, options["verbosity"])
        if not result.ok:
            raise CommandError(f"sync failed: {result.error}", returncode=1)

    def _watch(self, options: dict) -> None:
        if options["dry_run"] or options["force_removals"]:
            raise CommandError("watch takes no --dry-run or --force-removals")
        for name in ("interval", "duration"):
            if options[name] is not None and options[name] <= 0:
                raise CommandError(f"--{name} must be a number of seconds > 0")
        verbosity = options["verbosity"]
        watch_options = WatchOptions(
            interval=options["interval"],
            duration=options["duration"],
            on_batch=lambda result: self._print_batch(result, verbosity),
        )
        stop = watch_options.stop

        def stop_between_batches(_signum: int, _frame: object) -> None:
            if stop.is_set():  # asked twice: stop now, the batch is recorded as interrupted
                raise KeyboardInterrupt
            stop.set()

        previous = {
            signum: signal.signal(signum, stop_between_batches)
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            with quiet_console(verbosity == 0):
                summary = watch(watch_options)
        except LockHeld as held:
            raise CommandError(f"{held}; nothing was done", returncode=EXIT_LOCKED) from None
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        self._print_watch_summary(summary, options["json"], verbosity)
        if not summary.ok:
            error = summary.last.error if summary.last else summary.stopped_by
            raise CommandError(f"watch stopped: {error}", returncode=1)

    def _print_batch(self, result: SyncResult, verbosity: int) -> None:
        if verbosity == 0 or not (changed_anything(result) or verbosity >= 2):
            return
        counts = counts_text(result)
        line = f"{result.mode} batch #{result.run_id}: {result.status}"
        line += f" ({result.error})" if result.error else f", {counts or 'nothing changed'}"
        self.stdout.write(f"{line}, {result.seconds:.2f} s")

    def _print_watch_summary(self, summary: WatchSummary, as_json: bool, verbosity: int) -> None:
        if as_json:
            self.stdout.write(json.dumps(summary.as_dict(), indent=2))
        elif verbosity >= 1:
            self.stdout.write(
                f"watch stopped ({summary.stopped_by}): {summary.batches} batches, "
                f"{summary.changed} with changes, {summary.failed} failed, {summary.full} full"
            )

    def _progress(self, phase: str, count: int) -> None:
        self.stderr.write(f"\r{phase}: {count:,} read", ending="")
        self.stderr.flush()

    def _print_summary(self, result: SyncResult, verbosity: int) -> None:
        if verbosity == 0:
            return
        title = f"{result.mode} sync{' (dry run)' if result.dry_run else ''}"
        self.stdout.write(f"{title} from {result.server or '-'}: {result.status}")
        rows = [
            ("users", "users_seen", "users_created", "users_updated", "users_removed"),
            ("groups", "groups_seen", "groups_created", "groups_updated", "groups_removed"),
            ("memberships", None, "memberships_added", None, "memberships_removed"),
        ]
        self.stdout.write(f"{'':<12}{'seen':>9}{'created':>9}{'updated':>9}{'removed':>9}")
        for label, *keys in rows:
            cells = "".join(f"{result.counts.get(key, 0) if key else '':>9}" for key in keys)
            self.stdout.write(f"{label:<12}{cells}")
        extra = {
            k: v
            for k, v in sorted(result.counts.items())
            if v and not any(k in keys for _label, *keys in rows)
        }
        if extra:
            self.stdout.write("also: " + ", ".join(f"{k}={v}" for k, v in extra.items()))
        self.stdout.write(
            f"{result.ldap_searches} LDAP searches, {result.seconds:.2f} s, run #{result.run_id}"
        )
        if result.changes and (result.dry_run or verbosity >= 2):
            self.stdout.write("changes:")
            for line in result.changes:
                self.stdout.write(f"  {line}")
        if result.problems and verbosity >= 1:
            self.stdout.write(f"problems ({len(result.problems)} shown):")
            for line in result.problems:
                self.stdout.write(f"  {line}")

    def _print_status(self, limit: int, as_json: bool) -> None:
        status = sync_status(limit)
        if as_json:
            self.stdout.write(json.dumps(status, indent=2))
            return
        lock = status["lock"]
        if lock["held"]:
            self.stdout.write(
                f"lock: held since {lock['since'] or '?'} by {lock['owner'] or 'unknown'} "
                f"(last heartbeat {lock['heartbeat'] or '?'})"
            )
        else:
            self.stdout.write("lock: free")
        self.stdout.write("")
        self.stdout.write(f"last {len(status['runs'])} runs:")
        if not status["runs"]:
            self.stdout.write("  (none)")
        for run in status["runs"]:
            seconds = f"{run['seconds']:.1f} s" if run["seconds"] is not None else "-"
            state = "interrupted" if run["interrupted"] else run["status"]
            counts = run["counts"]
            self.stdout.write(
                f"  #{run['id']} {run['started_at']} {run['mode']}"
                f"{' (dry run)' if run['dry_run'] else ''} {run['server'] or '-'}: {state}, "
                f"{seconds}, users +{counts.get('users_created', 0)} "
                f"~{counts.get('users_updated', 0)} -{counts.get('users_removed', 0)}, "
                f"errors {counts.get('errors', 0)}"
            )
            if run["error"]:
                self.stdout.write(f"      error: {run['error']}")
        self.stdout.write("")
        self.stdout.write("incremental markers:")
        if not status["markers"]:
            self.stdout.write("  (none: the next run is full)")
        for marker in status["markers"]:
            position = (
                f"USN {marker['highest_usn']} (invocationId {marker['invocation_id']})"
                if marker["highest_usn"] is not None
                else f"timestamp {marker['timestamp'] or '-'}"
            )
            self.stdout.write(
                f"  {marker['server']}: {position}, {marker['incrementals_since_full']} "
                f"incrementals since the last full run, updated {marker['updated_at']}"
            )
