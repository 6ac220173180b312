"""One size of the benchmark: a directory, its slapd, and a row group per database.

The order matters, since one directory serves every row group:

1. the ldapsearch floor (no database);
2. per database, before any change: the cold and unchanged ``syncldap full`` runs, the change
   feed's full run (which takes the cookies, on a database of its own) and the write floors;
3. the same 1% change of the directory, once, with a barrier write on the base entry
   afterwards (slapd 2.5 can leave its contextCSN behind the last writes of a burst until its
   next write: the feed would show them one write late);
4. per database: the incremental runs (timestamps; the change feed, then the feed again with
   nothing changed) and the logins.

The rows come out grouped by database, in :data:`ROW_ORDER`.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import floors
from benchmarks.databases import BenchDatabase
from benchmarks.harness import (
    CHANGE_FRACTION,
    DEPTH,
    GROUPS_PER_USER,
    PAGE_SIZE,
    PHOTO_RATIO,
    SEED,
    Expected,
    Options,
    Row,
    Runner,
    Size,
    bench_slapd_class,
    check_database,
)

#: The overlays of the benchmark's slapd: memberof, and syncprov for the change-feed rows.
OVERLAYS = ("memberof", "syncprov")
ROW_ORDER = ("cold", "unchanged", "incremental", "login", "feed_full", "feed_incremental",
             "feed_unchanged", "feed_settled", "floor_write", "floor_raw")  # fmt: skip
USER_ATTRIBUTES = [
    "uid", "givenName", "sn", "mail", "userAccountControl", "department", "title",
    "jpegPhoto", "entryUUID", "modifyTimestamp",
]  # fmt: skip
GROUP_ATTRIBUTES = ["cn", "member", "entryUUID", "modifyTimestamp"]
SYNC_COUNTS = ("users_created", "users_updated", "users_removed", "groups_created",
               "memberships_added", "memberships_removed", "photos_written", "users_seen",
               "memberships_rechecked_users", "feed_users_deleted")  # fmt: skip


@dataclass
class Group:
    """One database's rows: its databases (main, change feed, floors) and the rows measured."""

    vendor: str
    main: BenchDatabase
    feed: BenchDatabase
    rows: list[Row] = field(default_factory=list)

    def media(self, workdir: Path, feed: bool = False) -> str:
        return str(workdir / f"media-{self.vendor}{'-feed' if feed else ''}")


class SizeRun:
    """The directory of one size, its slapd, and what :meth:`run` measures on it."""

    def __init__(self, size: Size, options: Options) -> None:
        from tests.lab.generator import mutate, synthetic

        self.size, self.options, self.label = size, options, size.label
        self.workdir = options.out / f"run-{size.users}-{size.groups}"
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        self.runner = Runner(self.workdir, options.verbose, options.profile)
        self.databases: list[BenchDatabase] = []
        self.rows: list[Row] = []  # the rows of no database (ldapsearch) and the alternatives'
        started = time.perf_counter()
        self.spec = synthetic(
            size.users, size.groups, depth=DEPTH, groups_per_user=GROUPS_PER_USER,
            photo_ratio=PHOTO_RATIO, seed=SEED, passwords=min(size.users, options.logins * 2),
        )  # fmt: skip
        self.changed, self.changes = mutate(
            self.spec, fraction_users=CHANGE_FRACTION, fraction_memberships=CHANGE_FRACTION,
            seed=SEED + 1,
        )  # fmt: skip
        self.before, self.after = Expected.of(self.spec, links=True), Expected.of(self.changed)
        self.before_path = self.workdir / "expected-before.pickle"
        self.before.dump(self.before_path)
        self.say(
            f"{self.label}: generated {len(self.spec.users)} users, {len(self.spec.groups)} "
            f"groups, {self.before.membership_count} effective memberships in "
            f"{time.perf_counter() - started:.1f} s"
        )
        enabled_after = {row[0] for row in self.after.user_rows}
        self.login_users = [
            u.key for u in self.spec.users if u.password and u.key in enabled_after
        ][: options.logins]
        self.server: Any = None

    def say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    # -- the directory -------------------------------------------------------------------

    def start(self) -> None:
        from tests.lab import ldif

        started = time.perf_counter()
        # The session log holds every write of the 1% change: deletes come from it, not from
        # a present phase (a site sizes it to its change rate between runs the same way).
        self.server = bench_slapd_class()(
            self.spec, access_log=True, overlays=OVERLAYS,
            syncprov_sessionlog=max(1000, self.size.users),
        )  # fmt: skip
        self.server.start()
        self.say(
            f"{self.label}: slapd loaded with slapadd -q and started in "
            f"{time.perf_counter() - started:.1f} s"
        )
        self.ldap_info = {
            "uri": self.server.uri, "bind_dn": self.server.reader_dn,
            "bind_password": self.server.reader_password, "people_dn": ldif.PEOPLE_DN,
            "groups_dn": ldif.GROUPS_DN, "base_dn": self.server.base_dn, "page_size": PAGE_SIZE,
        }  # fmt: skip
        self.sync_settings = {
            **self.server.sync_settings(),
            "LDAP_SYNC_USER_EXTRA_PROFILES": ["testapp.Employee"],
            "LDAP_SYNC_USER_SHOW_PROGRESS": False,
            "LDAP_SYNC_BIND_PAGESIZE": PAGE_SIZE,
            "AUTHENTICATION_BACKENDS": ["adldap_auth.backends.ADLDAPBackend"],
        }
        self.feed_settings = {**self.sync_settings, "LDAP_SYNC_CHANGE_TRACKING": "contentsync"}

    def change(self) -> None:
        """The 1% change, then one write outside the scopes (the barrier, see the module)."""
        import ldap

        from tests.lab import ldif

        started = time.perf_counter()
        time.sleep(1.1)  # modifyTimestamp has a one-second resolution
        self.server.apply(self.spec, self.changed)
        admin = self.server.admin_connection()
        try:
            stamp = str(time.time()).encode()
            admin.modify_s(ldif.BASE_DN, [(ldap.MOD_REPLACE, "description", [stamp])])
        finally:
            admin.unbind_s()
        changes = self.changes
        self.say(
            f"{self.label}: changed {len(changes.users_changed)} users and "
            f"{len(changes.memberships_added) + len(changes.memberships_removed)} memberships "
            f"online in {time.perf_counter() - started:.1f} s"
        )

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if not self.options.keep:
            for database in self.databases:
                database.drop()
            for path in self.workdir.glob("media*"):
                shutil.rmtree(path, ignore_errors=True)

    # -- measuring -------------------------------------------------------------------------

    def database(self, vendor: str, stem: str) -> BenchDatabase:
        database = BenchDatabase.new(vendor, self.workdir, stem)
        database.create()
        self.databases.append(database)
        return database

    def migrate(self, python: str, kind: str, db: BenchDatabase, extra: dict | None = None) -> None:
        self.runner.run(
            python,
            {"kind": kind, "db": db.name, "django_db": db.django(), "scenario": "migrate",
             "ldap": self.ldap_info, **(extra or {})},
            f"{self.label} migrate {db.vendor} {Path(db.name).name}",
        )  # fmt: skip

    def measure(
        self,
        python: str,
        kind: str,
        db: BenchDatabase | None,
        scenario: str,
        title: str,
        key: str,
        expected: Expected | None,
        notes: Callable[[dict], str] = lambda data: "",
        **config: Any,
    ) -> Row:
        mark = self.server.log_position()
        where = {"db": db.name, "django_db": db.django()} if db else {"db": "unused.sqlite3"}
        child = self.runner.run(
            python,
            {"kind": kind, "scenario": scenario, "ldap": self.ldap_info, **where, **config},
            f"{self.label} {db.vendor if db else ''} {title}",
        )
        data = child.data
        # Django's statements; the driver floor counts its own, the ldapsearch floor none.
        counted_sql = scenario not in ("floor_raw", "floor_ldapsearch")
        return Row(
            size=self.label,
            scenario=title,
            database=db.vendor if db else "",
            seconds=data["seconds"],
            rss_mb=child.rss_mb,
            searches=len(self.server.searches(mark)),
            spy_searches=(
                data.get("spy_searches") if kind in ("adldap", "django_auth_ldap") else None
            ),
            sql=data["sql"] if counted_sql else data.get("raw_statements"),
            sql_writes=(
                data["sql_writes"]
                if counted_sql
                else (data["raw_statements"] - 2 if "raw_statements" in data else None)
            ),
            correctness=check_database(db, expected) if db and expected else "",
            notes=notes(data),
            key=key,
            facts={**data, "users": self.size.users, "groups": self.size.groups},
        )


def sync_notes(data: dict) -> str:
    counts = data.get("counts", {})
    shown = [f"{name.replace('_', ' ')} {counts[name]}" for name in SYNC_COUNTS if counts.get(name)]
    return ", ".join(shown) or "no change"


def login_notes(data: dict) -> str:
    text = (
        f"{data['logins']} logins: median {data['median_ms']:.1f} ms, "
        f"p95 {data['p95_ms']:.1f} ms; searches/login median "
        f"{data['searches_median']:g}, max {data['searches_max']} "
        f"(first login {data['searches_first']}, {data['first_ms']:.0f} ms)"
    )
    if data["failed"]:
        text += f"; {data['failed']} FAILED"
    return text


def feed_notes(data: dict) -> str:
    """A feed row that ran as a full run (cookie refused, feed unavailable) says so."""
    text = sync_notes(data)
    if data.get("mode") != "incremental":
        text += f"; RAN AS {data.get('mode')}: {data.get('mode_reason') or '?'}"
    return text


# -- the order of a size ---------------------------------------------------------------------


def run_size(size: Size, options: Options, alt_python: str | None, alt_note: str) -> list[Row]:
    """The rows of one size: the ldapsearch floor, a row group per database, the alternatives."""
    run = SizeRun(size, options)
    groups: list[Group] = []
    alternatives: list[Row] = []
    try:
        run.start()
        floor_read = floor_ldapsearch(run)
        for vendor in options.databases:
            groups.append(
                Group(vendor, run.database(vendor, "adldap"), run.database(vendor, "adldap-feed"))
            )
        for group in groups:
            before_change(run, group)
        dal_db = run_alternatives(run, alt_python, alt_note, alternatives)
        run.change()
        for group in groups:
            after_change(run, group)
        if dal_db is not None:
            alternatives.append(
                run.measure(
                    alt_python or "",
                    "django_auth_ldap",
                    dal_db,
                    "logins",
                    f"django-auth-ldap: {len(run.login_users)} logins through LDAPBackend",
                    "dal_login",
                    None,
                    login_notes,
                    logins=run.login_users,
                    password=_lab_password(),
                )  # fmt: skip
            )
    finally:
        run.close()
    rows = [floor_read]
    for group in groups:
        note_floor_ratio(group, floor_read)
        rows += sorted(group.rows, key=lambda row: ROW_ORDER.index(row.key))
    return rows + alternatives


def _lab_password() -> str:
    from tests.lab.spec import LAB_PASSWORD

    return LAB_PASSWORD


def floor_ldapsearch(run: SizeRun) -> Row:
    """The same user and group entries and attributes, paged ldapsearch to /dev/null."""
    from tests.lab import ldif

    settings = run.sync_settings
    return run.measure(
        sys.executable, "floor", None, "floor_ldapsearch",
        "floor: paged ldapsearch of users and groups > /dev/null", "floor_read", None,
        searches=[
            [ldif.PEOPLE_DN, settings["LDAP_SYNC_USER_FILTER"], USER_ATTRIBUTES],
            [ldif.GROUPS_DN, settings["LDAP_SYNC_GROUP_FILTER"], GROUP_ATTRIBUTES],
        ],
    )  # fmt: skip


def before_change(run: SizeRun, group: Group) -> None:
    """Cold and unchanged full runs, the change feed's first full run, the write floors."""
    me, before = sys.executable, run.before
    ours = {"settings": run.sync_settings, "media": group.media(run.workdir)}
    feed = {"settings": run.feed_settings, "media": group.media(run.workdir, feed=True)}
    run.migrate(me, "adldap", group.main, ours)
    for title, key in (("cold (empty DB)", "cold"), ("unchanged", "unchanged")):
        group.rows.append(
            run.measure(
                me,
                "adldap",
                group.main,
                "adldap_sync",
                f"adldap-auth: syncldap full, {title}",
                key,
                before,
                sync_notes,
                mode="full",
                **ours,
            )  # fmt: skip
        )
    run.migrate(me, "adldap", group.feed, feed)
    group.rows.append(
        run.measure(
            me,
            "adldap",
            group.feed,
            "adldap_sync",
            "adldap-auth: syncldap full, cold, change feed on (takes the cookies)",
            "feed_full",
            before,
            sync_notes,
            mode="full",
            **feed,
        )  # fmt: skip
    )
    write_floors(run, group)


def write_floors(run: SizeRun, group: Group) -> None:
    """Django's bulk_create of the users, groups and memberships; the driver's load of every
    row the cold run writes. Each on an empty database of its own."""
    me, before = sys.executable, run.before
    ours = {"settings": run.sync_settings, "media": group.media(run.workdir)}
    django_floor = run.database(group.vendor, "floor")
    run.migrate(me, "floor", django_floor)
    group.rows.append(
        run.measure(
            me,
            "floor",
            django_floor,
            "floor_bulk_create",
            "floor (Django): bulk_create users, groups, effective memberships",
            "floor_write",
            before,
            lambda data: f"{before.membership_count} memberships",
            expected_path=str(run.before_path),
        )  # fmt: skip
    )
    raw_floor = run.database(group.vendor, "floor-raw")
    run.migrate(me, "adldap", raw_floor, ours)
    group.rows.append(
        run.measure(
            me,
            "adldap",
            raw_floor,
            "floor_raw",
            f"floor (driver): {floors.statement_label(group.vendor)} of the cold run's rows",
            "floor_raw",
            before,
            lambda data: (
                f"{data['raw_rows']} rows: users, groups, effective memberships, "
                "identity links, stored nesting, profiles; one transaction"
            ),
            expected_path=str(run.before_path),
            **ours,
        )  # fmt: skip
    )


def after_change(run: SizeRun, group: Group) -> None:
    """The incremental runs after the 1% change (timestamps; the feed, twice), the logins."""
    me, after = sys.executable, run.after
    ours = {"settings": run.sync_settings, "media": group.media(run.workdir)}
    feed = {"settings": run.feed_settings, "media": group.media(run.workdir, feed=True)}
    group.rows.append(
        run.measure(
            me,
            "adldap",
            group.main,
            "adldap_sync",
            "adldap-auth: syncldap incremental, 1% changed",
            "incremental",
            after,
            sync_notes,
            mode="incremental",
            **ours,
        )  # fmt: skip
    )
    group.rows.append(
        run.measure(
            me,
            "adldap",
            group.main,
            "logins",
            f"adldap-auth: {len(run.login_users)} logins through ADLDAPBackend",
            "login",
            after,
            login_notes,
            logins=run.login_users,
            password=_lab_password(),
            **ours,
        )  # fmt: skip
    )
    for title, key in (
        ("syncldap incremental via change feed, 1% changed", "feed_incremental"),
        # The run after a change reads again the groups that held renamed or deleted
        # entries (docs/sync.md); the one after it is a directory that did not change.
        ("change feed, nothing changed (the run after the change)", "feed_unchanged"),
        ("change feed, nothing changed (settled)", "feed_settled"),
    ):
        group.rows.append(
            run.measure(
                me,
                "adldap",
                group.feed,
                "adldap_sync",
                f"adldap-auth: {title}",
                key,
                after,
                feed_notes,
                mode="incremental",
                **feed,
            )  # fmt: skip
        )


def note_floor_ratio(group: Group, floor_read: Row) -> None:
    """The cold row's "x floor": its time over the raw floor (ldapsearch + the driver load)."""
    found = {row.key: row for row in group.rows}
    cold, raw = found.get("cold"), found.get("floor_raw")
    if cold is None or raw is None or not cold.seconds:
        return
    floor = (floor_read.seconds or 0) + (raw.seconds or 0)
    cold.facts["raw_floor_seconds"] = floor
    cold.notes += (
        f"; {cold.seconds / floor:.1f}x raw floor (ldapsearch + driver load {floor:.2f} s)"
    )


def run_alternatives(
    run: SizeRun, alt_python: str | None, alt_note: str, rows: list[Row]
) -> BenchDatabase | None:
    """django-auth-ldap's populate_user() loop and django-python3-ldap's ldap_sync_users,
    cold and unchanged, on SQLite files (their virtualenv has no other driver). Returns
    django-auth-ldap's database when its logins are to be measured after the change."""

    options, label = run.options, run.label
    if not options.alternatives:
        return None
    if alt_python is None:
        rows.append(Row(label, "alternatives", notes=f"skipped: {alt_note}"))
        return None
    if run.size.users > options.slow_alternatives_above:
        rows.append(
            Row(label, "django-auth-ldap populate_user() loop; django-python3-ldap",
                notes=f"skipped at this size (above {options.slow_alternatives_above} users; "
                      "--slow-alternatives-above to run them)")
        )  # fmt: skip
        return None
    dal_db = run.database("sqlite", "django-auth-ldap")
    run.migrate(alt_python, "django_auth_ldap", dal_db)
    for title, key in (("cold (empty DB)", "dal_cold"), ("unchanged rerun", "dal_unchanged")):
        rows.append(
            run.measure(
                alt_python,
                "django_auth_ldap",
                dal_db,
                "dal_populate_loop",
                f"django-auth-ldap: populate_user() loop, {title}",
                key,
                run.before,
                lambda data: "NestedGroupOfNamesType, MIRROR_GROUPS; no profiles/photos",
            )  # fmt: skip
        )
    p3_settings = python3_ldap_settings(run.server)
    p3_db = run.database("sqlite", "django-python3-ldap")
    run.migrate(alt_python, "python3_ldap", p3_db, {"settings": p3_settings})
    for title, key in (("cold (empty DB)", "p3_cold"), ("unchanged rerun", "p3_unchanged")):
        rows.append(
            run.measure(
                alt_python,
                "python3_ldap",
                p3_db,
                "p3_sync_users",
                f"django-python3-ldap: ldap_sync_users, {title}",
                key,
                run.before,
                lambda data: "users only: no groups, no memberships",
                settings=p3_settings,
            )  # fmt: skip
        )
    return dal_db


def python3_ldap_settings(server: Any) -> dict[str, Any]:
    """django-python3-ldap's settings for the lab's slapd."""
    from tests.lab import ldif

    return {
        "LDAP_AUTH_URL": [server.uri],
        "LDAP_AUTH_USE_TLS": False,
        "LDAP_AUTH_SEARCH_BASE": ldif.PEOPLE_DN,
        "LDAP_AUTH_OBJECT_CLASS": "inetOrgPerson",
        "LDAP_AUTH_USER_FIELDS": {
            "username": "uid", "first_name": "givenName", "last_name": "sn", "email": "mail",
        },
        "LDAP_AUTH_USER_LOOKUP_FIELDS": ["username"],
        "LDAP_AUTH_FORMAT_USERNAME": "benchmarks.scenarios.p3_format_username",
        "LDAP_AUTH_FORMAT_SEARCH_FILTERS": "benchmarks.scenarios.p3_search_filters",
        "LDAP_AUTH_CONNECTION_USERNAME": server.reader_dn,
        "LDAP_AUTH_CONNECTION_PASSWORD": server.reader_password,
    }  # fmt: skip
