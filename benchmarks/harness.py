"""Measurement: directories of a given size, scenarios in processes of their own, one table.

For each size (N users, M groups) the harness

1. generates a directory with the test lab's generator (``synthetic``: nesting depth 4, about
   5 direct groups per user, about 20% with a photo, 1% disabled) and loads it into a
   throwaway slapd with ``slapadd -q`` (:class:`BenchSlapd`: the entries carry modify
   timestamps one minute apart, the newest a day old, as in a directory in use, instead of
   the one second of the load, which would make the first incremental run re-read everything);
2. runs each scenario in its own process (:mod:`benchmarks.scenarios`), against its own
   SQLite file, and measures: wall seconds of the scenario's work (inside the process, Django
   setup excluded), peak RSS (that process's ``VmHWM``: not ``wait4``'s ``ru_maxrss``, which
   counts the pages a forked child shares with this big process), LDAP searches (the
   slapd access log, cross-checked with a spy on python-ldap's ``search_ext``), SQL statements
   (``connection.execute_wrapper``; writes are INSERT/UPDATE/DELETE outside the run
   bookkeeping tables), and correctness: Django's active users, groups and *effective*
   memberships read back from the SQLite file and compared with the closure the lab spec
   computes (``DirectorySpec.expected_groups``, which shares no code with the sync);
3. prints one Markdown table, and checks the targets of issue #8 on ratios within the run.

Rows: ``syncldap full`` on an empty database (cold), again (unchanged), incremental after 1%
of the users and 1% of the memberships changed, and logins through ``ADLDAPBackend``; the
alternatives (django-auth-ldap's ``populate_user()`` loop with ``NestedGroupOfNamesType`` and
mirrored groups, django-python3-ldap's ``ldap_sync_users``, and django-auth-ldap logins) in a
virtualenv of their own under ``benchmarks/out/``; the floor: paged ``ldapsearch`` of the same
entries to /dev/null, and a bare ``bulk_create`` of the same users, groups and effective
memberships.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import platform
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
PAGE_SIZE = 200
DEPTH = 4
GROUPS_PER_USER = 5
PHOTO_RATIO = 0.2
SEED = 0
CHANGE_FRACTION = 0.01
#: Sizes at which the slow alternatives are skipped unless asked for (hours of populate_user).
SLOW_ALTERNATIVES_ABOVE = 20_000


@dataclass(frozen=True)
class Size:
    users: int
    groups: int

    @property
    def label(self) -> str:
        return f"{_short(self.users)}/{_short(self.groups)}"


def _short(number: int) -> str:
    if number >= 1_000_000 and number % 1_000_000 == 0:
        return f"{number // 1_000_000}m"
    return f"{number // 1000}k" if number >= 1000 and number % 1000 == 0 else str(number)


def parse_sizes(text: str) -> list[Size]:
    """``1k,10k,100k,1m`` (groups = users / 10) or explicit ``200/20``."""
    sizes = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        users_text, _, groups_text = part.partition("/")
        users = _number(users_text)
        groups = _number(groups_text) if groups_text else max(1, users // 10)
        sizes.append(Size(users, groups))
    return sizes


def _number(text: str) -> int:
    text = text.strip().lower()
    if text.endswith("m"):
        return int(float(text[:-1]) * 1_000_000)
    if text.endswith("k"):
        return int(float(text[:-1]) * 1000)
    return int(text)


@dataclass
class Row:
    size: str
    scenario: str
    seconds: float | None = None
    rss_mb: float | None = None
    searches: int | None = None
    spy_searches: int | None = None
    sql: int | None = None
    sql_writes: int | None = None
    correctness: str = ""
    notes: str = ""
    key: str = ""  # for target checks: "cold", "unchanged", "incremental", "login"...
    facts: dict[str, Any] = field(default_factory=dict)

    def cells(self) -> list[str]:
        searches = "" if self.searches is None else str(self.searches)
        if self.spy_searches is not None and self.searches not in (None, self.spy_searches):
            searches += f" (spy {self.spy_searches})"
        sql = ""
        if self.sql is not None:
            sql = (
                f"{self.sql} ({self.sql_writes} w)"
                if self.sql_writes is not None
                else str(self.sql)
            )
        return [
            self.size,
            self.scenario,
            "" if self.seconds is None else _seconds(self.seconds),
            "" if self.rss_mb is None else f"{self.rss_mb:.0f}",
            searches,
            sql,
            self.correctness,
            self.notes,
        ]


HEADER = ["size", "scenario", "wall s", "peak RSS MB", "LDAP searches", "SQL (writes)",
          "correctness", "notes"]  # fmt: skip


def _seconds(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def markdown_table(rows: Iterable[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---"] * len(HEADER)) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row.cells()) + " |")
    return "\n".join(lines)


# -- the expected state ----------------------------------------------------------------------


@dataclass
class Expected:
    """What Django must hold: enabled users, every group, effective memberships by user."""

    user_rows: list[tuple[str, str, str, str | None]]
    groups: list[str]
    memberships: dict[str, list[str]]

    @classmethod
    def of(cls, spec: Any) -> Expected:
        closure = spec.expected_groups()
        enabled = [u for u in spec.users if not u.disabled]
        return cls(
            user_rows=[(u.key, u.given_name, u.sn, u.mail) for u in enabled],
            groups=[g.name for g in spec.groups],
            memberships={u.key: sorted(closure[u.key]) for u in enabled if closure[u.key]},
        )

    @property
    def membership_count(self) -> int:
        return sum(len(names) for names in self.memberships.values())

    def dump(self, path: Path) -> None:
        with open(path, "wb") as handle:
            pickle.dump(dataclasses.asdict(self), handle, protocol=pickle.HIGHEST_PROTOCOL)


def check_database(db: Path, expected: Expected) -> str:
    """``ok``, or what differs: missing (-) and extra (+) users, groups and memberships.

    Users are the *active* Django users; memberships those of active users.
    """
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        active = {
            name for (name,) in conn.execute("SELECT username FROM auth_user WHERE is_active")
        }
        groups = {name for (name,) in conn.execute("SELECT name FROM auth_group")}
        actual: dict[str, set[str]] = {}
        for username, group in conn.execute(
            "SELECT u.username, g.name FROM auth_user_groups ug "
            "JOIN auth_user u ON u.id = ug.user_id JOIN auth_group g ON g.id = ug.group_id "
            "WHERE u.is_active"
        ):
            actual.setdefault(username, set()).add(group)
    finally:
        conn.close()
    want_users = {row[0] for row in expected.user_rows}
    want_groups = set(expected.groups)
    missing = extra = 0
    for user in want_users | set(actual):
        want = set(expected.memberships.get(user, ()))
        have = actual.get(user, set())
        missing += len(want - have)
        extra += len(have - want)
    parts = []
    for label, lost, added in (
        ("users", len(want_users - active), len(active - want_users)),
        ("groups", len(want_groups - groups), len(groups - want_groups)),
        ("memberships", missing, extra),
    ):
        if lost or added:
            parts.append(f"{label} -{lost}/+{added}")
    return "ok" if not parts else "; ".join(parts)


# -- the directory ---------------------------------------------------------------------------


def bench_slapd_class() -> type:
    """:class:`tests.lab.slapd.LabSlapd` whose offline load backdates the entries."""
    from tests.lab import ldif
    from tests.lab.slapd import LabSlapd

    class BenchSlapd(LabSlapd):
        """Entries modified one a minute over the weeks before yesterday (newest last)."""

        def load_offline(self, spec: Any) -> None:
            if self.running or self._loaded:
                raise RuntimeError("slapadd loads a new server before its first start")
            self.prepare()
            entries = list(
                ldif.spec_entries(
                    spec,
                    member_of="memberof" in self.overlays,
                    operational=True,
                    photo_attribute=self.photo_attribute,
                )
            )
            newest = datetime.now(UTC) - timedelta(days=1)
            count = len(entries)
            stamped = []
            for index, (dn, attrs) in enumerate(entries):
                moment = newest - timedelta(minutes=count - 1 - index)
                stamp = moment.strftime("%Y%m%d%H%M%SZ").encode()
                stamped.append(
                    (dn, {**attrs, "createTimestamp": [stamp], "modifyTimestamp": [stamp]})
                )
            self._slapadd(ldif.to_ldif(stamped), ["-q", "-b", self.suffix])
            self._loaded = True
            self._set_spec(spec)

    return BenchSlapd


# -- processes -------------------------------------------------------------------------------


@dataclass
class ChildResult:
    data: dict[str, Any]
    rss_mb: float
    returncode: int


class Runner:
    """Runs scenario processes and keeps their files in ``workdir``."""

    def __init__(self, workdir: Path, verbose: bool = False, profile: bool = False) -> None:
        self.workdir = workdir
        self.verbose = verbose
        self.profile = profile
        self.counter = 0

    def run(self, python: str, config: dict[str, Any], label: str) -> ChildResult:
        self.counter += 1
        stem = f"{self.counter:02d}-{config['scenario']}"
        config_path = self.workdir / f"{stem}.json"
        result_path = self.workdir / f"{stem}.result.json"
        log_path = self.workdir / f"{stem}.log"
        config = {**config, "result": str(result_path)}
        if self.profile and config.get("kind") == "adldap" and config["scenario"] != "migrate":
            config["profile"] = str(self.workdir / f"{stem}.profile.txt")
        config_path.write_text(json.dumps(config, indent=1))
        env = {
            **os.environ,
            "BENCH_CONFIG": str(config_path),
            "DJANGO_SETTINGS_MODULE": "benchmarks.settings",
            "PYTHONPATH": str(REPO),
        }
        self._say(f"  {label} ...")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [python, "-m", "benchmarks.scenarios", str(config_path)],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            _pid, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0 or not result_path.exists():
            tail = log_path.read_text(errors="replace")[-3000:]
            raise ScenarioFailed(f"{label} failed (exit {proc.returncode}):\n{tail}")
        data = json.loads(result_path.read_text())
        # The process's own high-water mark (VmHWM). Not wait4's ru_maxrss: a forked child
        # starts with this (big) process's pages, and exec records that as its maximum.
        # For a row whose work is another program (ldapsearch): that program's peak.
        peak_kb = data.get("tool_rss_kb") or data.get("vmhwm_kb")
        rss_mb = (peak_kb or usage.ru_maxrss) / 1024
        self._say(f"  {label}: {data['seconds']:.2f} s, {rss_mb:.0f} MB")
        return ChildResult(data, rss_mb, proc.returncode)

    def _say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


class ScenarioFailed(RuntimeError):
    pass


# -- the alternatives' virtualenv -----------------------------------------------------------


def alternatives_python(out: Path = OUT) -> tuple[str | None, str]:
    """The Python of a virtualenv with Django, django-auth-ldap and django-python3-ldap (the
    project's versions of Django, django-auth-ldap and python-ldap), made on first use.

    Returns ``(python, description)``, or ``(None, why)`` when it cannot be made.
    """
    pins = []
    for name in ("Django", "django-auth-ldap", "python-ldap"):
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    wanted = [*pins, "django-python3-ldap"]
    venv = out / "alt-venv"
    python = venv / "bin" / "python"
    stamp = venv / "requirements.txt"
    if not (python.exists() and stamp.exists() and stamp.read_text() == "\n".join(wanted)):
        shutil.rmtree(venv, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        print(f"  creating {venv} ({', '.join(wanted)}) ...", file=sys.stderr, flush=True)
        base = getattr(sys, "_base_executable", sys.executable)
        for command in (
            [base, "-m", "venv", str(venv)],
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *wanted,
            ],
        ):
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                why = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
                return None, f"{' '.join(command[:4])}... failed: {why[0]}"
        stamp.write_text("\n".join(wanted))
    versions = subprocess.run(
        [str(python), "-c",
         "from importlib.metadata import version as v; print(', '.join(f'{n} {v(n)}' for n in "
         "('Django', 'django-auth-ldap', 'django-python3-ldap', 'python-ldap', 'ldap3')))"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return str(python), versions.stdout.strip()


# -- one size --------------------------------------------------------------------------------


@dataclass
class Options:
    sizes: list[Size]
    alternatives: bool = True
    slow_alternatives_above: int = SLOW_ALTERNATIVES_ABOVE
    logins: int = 100
    samba: bool = False
    samba_users: int = 2000
    verbose: bool = False
    profile: bool = False
    keep: bool = False
    out: Path = OUT


def run_size(size: Size, options: Options, alt_python: str | None, alt_note: str) -> list[Row]:
    from tests.lab import ldif
    from tests.lab.generator import mutate, synthetic
    from tests.lab.spec import LAB_PASSWORD

    workdir = options.out / f"run-{size.users}-{size.groups}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    runner = Runner(workdir, options.verbose, options.profile)
    say = runner._say
    label = size.label
    rows: list[Row] = []

    started = time.perf_counter()
    spec = synthetic(
        size.users, size.groups, depth=DEPTH, groups_per_user=GROUPS_PER_USER,
        photo_ratio=PHOTO_RATIO, seed=SEED, passwords=min(size.users, options.logins * 2),
    )  # fmt: skip
    changed, changes = mutate(
        spec, fraction_users=CHANGE_FRACTION, fraction_memberships=CHANGE_FRACTION, seed=SEED + 1
    )
    before, after = Expected.of(spec), Expected.of(changed)
    before_path = workdir / "expected-before.pickle"
    before.dump(before_path)
    say(
        f"{label}: generated {len(spec.users)} users, {len(spec.groups)} groups, "
        f"{before.membership_count} effective memberships in {time.perf_counter() - started:.1f} s"
    )
    enabled_after = {row[0] for row in after.user_rows}
    login_users = [u.key for u in spec.users if u.password and u.key in enabled_after]
    login_users = login_users[: options.logins]

    server = bench_slapd_class()(spec, access_log=True)
    started = time.perf_counter()
    server.start()
    say(
        f"{label}: slapd loaded with slapadd -q and started in {time.perf_counter() - started:.1f} s"
    )
    try:
        ldap_info = {
            "uri": server.uri,
            "bind_dn": server.reader_dn,
            "bind_password": server.reader_password,
            "people_dn": ldif.PEOPLE_DN,
            "groups_dn": ldif.GROUPS_DN,
            "base_dn": server.base_dn,
            "page_size": PAGE_SIZE,
        }
        sync_settings = {
            **server.sync_settings(),
            "LDAP_SYNC_USER_EXTRA_PROFILES": ["testapp.Employee"],
            "LDAP_SYNC_USER_SHOW_PROGRESS": False,
            "LDAP_SYNC_BIND_PAGESIZE": PAGE_SIZE,
            "AUTHENTICATION_BACKENDS": ["adldap_auth.backends.ADLDAPBackend"],
        }

        def measure(
            python: str,
            kind: str,
            db: Path,
            scenario: str,
            title: str,
            key: str,
            expected: Expected | None,
            notes: Callable[[dict], str] = lambda data: "",
            **config: Any,
        ) -> Row:
            mark = server.log_position()
            child = runner.run(
                python,
                {"kind": kind, "db": str(db), "scenario": scenario, "ldap": ldap_info, **config},
                f"{label} {title}",
            )
            searches = len(server.searches(mark))
            data = child.data
            row = Row(
                size=label,
                scenario=title,
                seconds=data["seconds"],
                rss_mb=child.rss_mb,
                searches=searches,
                spy_searches=(
                    data.get("spy_searches") if kind in ("adldap", "django_auth_ldap") else None
                ),
                sql=data["sql"] if kind != "floor" or scenario == "floor_bulk_create" else None,
                sql_writes=data["sql_writes"],
                correctness=check_database(db, expected) if expected is not None else "",
                notes=notes(data),
                key=key,
                facts={**data, "users": size.users, "groups": size.groups},
            )
            if scenario == "floor_ldapsearch":
                row.sql = row.sql_writes = None
            rows.append(row)
            return row

        def prepare_db(python: str, kind: str, db: Path, extra: dict | None = None) -> None:
            runner.run(
                python,
                {"kind": kind, "db": str(db), "scenario": "migrate", "ldap": ldap_info,
                 **(extra or {})},
                f"{label} migrate {db.name}",
            )  # fmt: skip

        me = sys.executable
        ours = workdir / "adldap.sqlite3"
        ours_config = {"settings": sync_settings, "media": str(workdir / "media")}
        prepare_db(me, "adldap", ours, ours_config)

        def sync_notes(data: dict) -> str:
            counts = data.get("counts", {})
            shown = [
                f"{name.replace('_', ' ')} {counts[name]}"
                for name in ("users_created", "users_updated", "users_removed", "groups_created",
                             "memberships_added", "memberships_removed", "photos_written",
                             "users_seen", "memberships_rechecked_users")
                if counts.get(name)
            ]  # fmt: skip
            return ", ".join(shown) or "no change"

        measure(me, "adldap", ours, "adldap_sync", "adldap-auth: syncldap full, cold (empty DB)",
                "cold", before, sync_notes, mode="full", **ours_config)  # fmt: skip
        measure(me, "adldap", ours, "adldap_sync", "adldap-auth: syncldap full, unchanged",
                "unchanged", before, sync_notes, mode="full", **ours_config)  # fmt: skip

        # The floor: reading the same entries, writing the same rows, nothing else.
        user_attributes = [
            "uid", "givenName", "sn", "mail", "userAccountControl", "department", "title",
            "jpegPhoto", "entryUUID", "modifyTimestamp",
        ]  # fmt: skip
        group_attributes = ["cn", "member", "entryUUID", "modifyTimestamp"]
        measure(
            me, "floor", workdir / "floor-ldapsearch.sqlite3", "floor_ldapsearch",
            "floor: paged ldapsearch of users and groups > /dev/null", "floor_read", None,
            searches=[
                [ldif.PEOPLE_DN, sync_settings["LDAP_SYNC_USER_FILTER"], user_attributes],
                [ldif.GROUPS_DN, sync_settings["LDAP_SYNC_GROUP_FILTER"], group_attributes],
            ],
        )  # fmt: skip
        floor_db = workdir / "floor.sqlite3"
        prepare_db(me, "floor", floor_db)
        measure(
            me, "floor", floor_db, "floor_bulk_create",
            "floor: bulk_create users, groups, effective memberships", "floor_write", before,
            lambda data: f"{before.membership_count} memberships", expected_path=str(before_path),
        )  # fmt: skip

        # The alternatives, on the same directory.
        run_alternatives = options.alternatives and alt_python is not None
        slow_ok = size.users <= options.slow_alternatives_above
        dal_db = workdir / "django-auth-ldap.sqlite3"
        if not options.alternatives:
            pass
        elif alt_python is None:
            rows.append(Row(label, "alternatives", notes=f"skipped: {alt_note}"))
        elif not slow_ok:
            rows.append(
                Row(label, "django-auth-ldap populate_user() loop; django-python3-ldap",
                    notes=f"skipped at this size (above {options.slow_alternatives_above} "
                          "users; --slow-alternatives-above to run them)")
            )  # fmt: skip
        if run_alternatives and slow_ok:
            prepare_db(alt_python, "django_auth_ldap", dal_db)
            for title, key in (
                ("cold (empty DB)", "dal_cold"),
                ("unchanged rerun", "dal_unchanged"),
            ):
                measure(
                    alt_python, "django_auth_ldap", dal_db, "dal_populate_loop",
                    f"django-auth-ldap: populate_user() loop, {title}", key, before,
                    lambda data: "NestedGroupOfNamesType, MIRROR_GROUPS; no profiles/photos",
                )  # fmt: skip
            p3_db = workdir / "django-python3-ldap.sqlite3"
            p3_settings = {
                "LDAP_AUTH_URL": [server.uri],
                "LDAP_AUTH_USE_TLS": False,
                "LDAP_AUTH_SEARCH_BASE": ldif.PEOPLE_DN,
                "LDAP_AUTH_OBJECT_CLASS": "inetOrgPerson",
                "LDAP_AUTH_USER_FIELDS": {
                    "username": "uid", "first_name": "givenName", "last_name": "sn",
                    "email": "mail",
                },
                "LDAP_AUTH_USER_LOOKUP_FIELDS": ["username"],
                "LDAP_AUTH_FORMAT_USERNAME": "benchmarks.scenarios.p3_format_username",
                "LDAP_AUTH_FORMAT_SEARCH_FILTERS": "benchmarks.scenarios.p3_search_filters",
                "LDAP_AUTH_CONNECTION_USERNAME": server.reader_dn,
                "LDAP_AUTH_CONNECTION_PASSWORD": server.reader_password,
            }  # fmt: skip
            prepare_db(alt_python, "python3_ldap", p3_db, {"settings": p3_settings})
            for title, key in (("cold (empty DB)", "p3_cold"), ("unchanged rerun", "p3_unchanged")):
                measure(
                    alt_python, "python3_ldap", p3_db, "p3_sync_users",
                    f"django-python3-ldap: ldap_sync_users, {title}", key, before,
                    lambda data: "users only: no groups, no memberships",
                    settings=p3_settings,
                )  # fmt: skip

        # 1% of the users and 1% of the memberships change; then the incremental run.
        started = time.perf_counter()
        time.sleep(1.1)  # modifyTimestamp has a one-second resolution
        server.apply(spec, changed)
        say(
            f"{label}: changed {len(changes.users_changed)} users and "
            f"{len(changes.memberships_added) + len(changes.memberships_removed)} memberships "
            f"online in {time.perf_counter() - started:.1f} s"
        )
        measure(me, "adldap", ours, "adldap_sync", "adldap-auth: syncldap incremental, 1% changed",
                "incremental", after, sync_notes, mode="incremental", **ours_config)  # fmt: skip

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

        measure(me, "adldap", ours, "logins",
                f"adldap-auth: {len(login_users)} logins through ADLDAPBackend", "login", after,
                login_notes, logins=login_users, password=LAB_PASSWORD, **ours_config)  # fmt: skip
        if run_alternatives and slow_ok:
            measure(
                alt_python, "django_auth_ldap", dal_db, "logins",
                f"django-auth-ldap: {len(login_users)} logins through LDAPBackend", "dal_login",
                None, login_notes, logins=login_users, password=LAB_PASSWORD,
            )  # fmt: skip
    finally:
        server.close()
        if not options.keep:
            for path in workdir.glob("*.sqlite3"):
                path.unlink()
            shutil.rmtree(workdir / "media", ignore_errors=True)
    return rows


# -- targets ---------------------------------------------------------------------------------


@dataclass
class Target:
    size: str
    text: str
    met: bool | None  # None: not measured in this run
    detail: str

    def line(self) -> str:
        mark = {True: "met", False: "MISSED", None: "not measured"}[self.met]
        return f"- **{mark}** ({self.size}) {self.text}: {self.detail}"


def check_targets(rows: list[Row]) -> list[Target]:
    targets: list[Target] = []
    by_size: dict[str, dict[str, Row]] = {}
    for row in rows:
        if row.key:
            by_size.setdefault(row.size, {})[row.key] = row
    for size, found in by_size.items():
        cold = found.get("cold")
        if cold is None:
            continue
        users, groups = cold.facts["users"], cold.facts["groups"]
        floor_parts = [found.get("floor_read"), found.get("floor_write")]
        if all(floor_parts) and users >= 10_000:
            floor = sum(part.seconds for part in floor_parts)
            ratio = cold.seconds / floor
            targets.append(
                Target(
                    size,
                    "cold full sync at most 2x the floor",
                    ratio <= 2,
                    f"{cold.seconds:.1f} s vs floor {floor:.1f} s = {ratio:.2f}x",
                )
            )
        dal = found.get("dal_cold")
        if dal is not None and users >= 10_000:
            ratio = dal.seconds / cold.seconds
            detail = f"{dal.seconds:.0f} s vs {cold.seconds:.1f} s = {ratio:.1f}x"
            if all(floor_parts):
                floor = sum(part.seconds for part in floor_parts)
                detail += f" (the floor itself: {dal.seconds / floor:.1f}x)"
            targets.append(
                Target(
                    size,
                    "cold full sync at least 20x faster than the django-auth-ldap loop",
                    ratio >= 20,
                    detail,
                )
            )
        unchanged = found.get("unchanged")
        if unchanged is not None:
            ratio = unchanged.seconds / cold.seconds
            targets.append(
                Target(
                    size,
                    "unchanged full rerun at most half the cold run, zero write statements",
                    ratio <= 0.5 and unchanged.sql_writes == 0,
                    f"{unchanged.seconds:.2f} s = {ratio:.2f}x cold, {unchanged.sql_writes} writes",
                )
            )
        incremental = found.get("incremental")
        if incremental is not None:
            ratio = incremental.seconds / cold.seconds
            targets.append(
                Target(
                    size,
                    "incremental with 1% changed at most 10% of the cold run",
                    ratio <= 0.10,
                    f"{incremental.seconds:.2f} s = {ratio:.1%} of cold",
                )
            )
        for key in ("cold", "unchanged"):
            row = found.get(key)
            if row is not None and row.searches is not None:
                counts = row.facts.get("counts", {})
                read_users = (
                    sum(counts.get(k, 0) for k in ("users_seen", "users_exempt", "users_skipped"))
                    or users
                )
                read_groups = counts.get("groups_seen", 0) + counts.get("groups_skipped", 0)
                ranges = row.facts.get("range_requests", 0)
                bound = (math.ceil(read_users / PAGE_SIZE) + math.ceil((read_groups or groups) /
                         PAGE_SIZE) + ranges + 3)  # fmt: skip
                targets.append(
                    Target(
                        size,
                        f"LDAP searches of a full run ({key}) <= "
                        f"ceil(N/page) + ceil(M/page) + ranges ({ranges}) + 3",
                        row.searches <= bound,
                        f"{row.searches} <= {bound}",
                    )
                )
        if users >= 100_000:
            peak = max(
                found[k].rss_mb for k in ("cold", "unchanged", "incremental", "login") if k in found
            )
            targets.append(
                Target(
                    size,
                    "peak RSS at 100k users under 1 GB",
                    peak < 1024,
                    f"{peak:.0f} MB (largest of our rows)",
                )
            )
        login = found.get("login")
        if login is not None:
            most = login.facts["searches_max"]
            warm = login.facts["searches_median"]
            targets.append(
                Target(
                    size,
                    "login at most 3 searches after the bind",
                    most <= 3,
                    f"median {warm:g}, max {most} (the first login of a "
                    "process reads the group graph)"
                    if most > 3
                    else f"median {warm:g}, max {most}",
                )
            )
            dal_login = found.get("dal_login")
            if dal_login is not None:
                ours_ms, theirs_ms = login.facts["median_ms"], dal_login.facts["median_ms"]
                targets.append(
                    Target(
                        size,
                        "login median latency no worse than django-auth-ldap's",
                        ours_ms <= theirs_ms,
                        f"{ours_ms:.1f} ms vs {theirs_ms:.1f} ms",
                    )
                )
    for row in rows:
        if (
            row.correctness
            and row.correctness != "ok"
            and row.key in ("cold", "unchanged", "incremental", "login")
        ):
            targets.append(
                Target(row.size, f"correctness of '{row.scenario}'", False, row.correctness)
            )
    return targets


# -- the machine -----------------------------------------------------------------------------


def machine_description() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    os_name = platform.platform()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    slapd = subprocess.run(["/usr/sbin/slapd", "-VVV"], capture_output=True, text=True, check=False)
    slapd_version = next(
        (
            line.split("$OpenLDAP:")[-1].split("(")[0].strip()
            for line in (slapd.stderr + slapd.stdout).splitlines()
            if "slapd" in line
        ),
        "slapd ?",
    )
    versions = ", ".join(
        f"{name} {_version(name)}" for name in ("Django", "django-auth-ldap", "python-ldap")
    )
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory} RAM, {os_name}; Python "
        f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}, {versions}; "
        f"OpenLDAP {slapd_version}"
    )


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"
