"""Measurement: directories of a given size, scenarios in processes of their own, one table.

For each size (N users, M groups) the harness

1. generates a directory with the test lab's generator (``synthetic``: nesting depth 4, about
   5 direct groups per user, about 20% with a photo, 1% disabled) and loads it into a
   throwaway slapd with ``slapadd -q`` (:class:`BenchSlapd`: the entries carry modify
   timestamps one minute apart, the newest a day old, as in a directory in use, instead of
   the one second of the load, which would make the first incremental run re-read everything);
2. runs each scenario in its own process (:mod:`benchmarks.scenarios`), against its own
   database (a SQLite file; with ``--databases``, also a throwaway PostgreSQL or MariaDB
   one: :mod:`benchmarks.databases`), and measures: wall seconds of the scenario's work
   (inside the process, Django setup excluded), peak RSS (that process's ``VmHWM``: not ``wait4``'s ``ru_maxrss``, which
   counts the pages a forked child shares with this big process), LDAP searches (the
   slapd access log, cross-checked with a spy on python-ldap's ``search_ext``), SQL statements
   (``connection.execute_wrapper``; writes are INSERT/UPDATE/DELETE outside the run
   bookkeeping tables), and correctness: Django's active users, groups and *effective*
   memberships read back from the database and compared with the closure the lab spec
   computes (``DirectorySpec.expected_groups``, which shares no code with the sync);
3. prints one Markdown table, and checks the targets of issue #8 on ratios within the run.

Rows: ``syncldap full`` on an empty database (cold), again (unchanged), incremental after 1%
of the users and 1% of the memberships changed, and logins through ``ADLDAPBackend``; the
alternatives (django-auth-ldap's ``populate_user()`` loop with ``NestedGroupOfNamesType`` and
mirrored groups, django-python3-ldap's ``ldap_sync_users``, and django-auth-ldap logins) in a
virtualenv of their own under ``benchmarks/out/``; the floor: paged ``ldapsearch`` of the same
entries to /dev/null, a bare ``bulk_create`` of the same users, groups and effective
memberships, and the driver's load of every row a cold run writes (:mod:`benchmarks.floors`);
the change feed's rows (:mod:`benchmarks.size_run` has the order of a size).
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
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.databases import BenchDatabase

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
    database: str = ""  # sqlite, postgres, mariadb; "" for a row that writes no database
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
            self.database,
            self.scenario,
            "" if self.seconds is None else _seconds(self.seconds),
            "" if self.rss_mb is None else f"{self.rss_mb:.0f}",
            searches,
            sql,
            self.correctness,
            self.notes,
        ]


HEADER = ["size", "db", "scenario", "wall s", "peak RSS MB", "LDAP searches", "SQL (writes)",
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
    """What Django must hold: enabled users, every group, effective memberships by user; and,
    for the raw write floor, the rest of what a cold run writes (identity links, the stored
    nesting, the profiles' department and title)."""

    user_rows: list[tuple[str, str, str, str | None]]
    groups: list[str]
    memberships: dict[str, list[str]]
    #: (key, entryUUID, DN, department, title) of each enabled user
    user_links: list[tuple[str, str, str, str | None, str | None]] = field(default_factory=list)
    #: (name, entryUUID, DN, direct member keys, guids of the groups it is a direct member of)
    group_links: list[tuple[str, str, str, list[str], list[str]]] = field(default_factory=list)

    @classmethod
    def of(cls, spec: Any, links: bool = False) -> Expected:
        """``links``: also what the raw write floor loads (identity links, stored nesting)."""
        from tests.lab import ldif

        closure = spec.expected_groups()
        enabled = [u for u in spec.users if not u.disabled]
        expected = cls(
            user_rows=[(u.key, u.given_name, u.sn, u.mail) for u in enabled],
            groups=[g.name for g in spec.groups],
            memberships={u.key: sorted(closure[u.key]) for u in enabled if closure[u.key]},
        )
        if not links:
            return expected
        dns = ldif.DnMap(spec)
        guid = {g.name: ldif.entry_uuid("group", g.name).decode() for g in spec.groups}
        parents: dict[str, list[str]] = {}
        for group in spec.groups:
            for member in group.members:
                if member.startswith(ldif.GROUP_PREFIX):
                    parents.setdefault(member[len(ldif.GROUP_PREFIX) :], []).append(
                        guid[group.name]
                    )
        expected.user_links = [
            (u.key, ldif.entry_uuid("user", u.key).decode(), dns.users[u.key], u.department,
             u.title)
            for u in enabled
        ]  # fmt: skip
        expected.group_links = [
            (g.name, guid[g.name], dns.groups[g.name],
             sorted(dns.member(m).lower() for m in g.members), sorted(parents.get(g.name, [])))
            for g in spec.groups
        ]  # fmt: skip
        return expected

    @property
    def membership_count(self) -> int:
        return sum(len(names) for names in self.memberships.values())

    def dump(self, path: Path) -> None:
        with open(path, "wb") as handle:
            pickle.dump(dataclasses.asdict(self), handle, protocol=pickle.HIGHEST_PROTOCOL)


def check_database(db: BenchDatabase | Path, expected: Expected) -> str:
    """``ok``, or what differs: missing (-) and extra (+) users, groups and memberships.

    Users are the *active* Django users; memberships those of active users.
    """
    if isinstance(db, Path):
        db = BenchDatabase("sqlite", str(db))
    conn = db.connect()
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT username FROM auth_user WHERE is_active")
        active = {name for (name,) in cursor.fetchall()}
        cursor.execute("SELECT name FROM auth_group")
        groups = {name for (name,) in cursor.fetchall()}
        actual: dict[str, set[str]] = {}
        cursor.execute(
            "SELECT u.username, g.name FROM auth_user_groups ug "
            "JOIN auth_user u ON u.id = ug.user_id JOIN auth_group g ON g.id = ug.group_id "
            "WHERE u.is_active"
        )
        for username, group in cursor.fetchall():
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
    databases: list[str] = field(default_factory=lambda: ["sqlite"])


def run_size(size: Size, options: Options, alt_python: str | None, alt_note: str) -> list[Row]:
    """The rows of one size (:mod:`benchmarks.size_run`)."""
    from benchmarks import size_run

    return size_run.run_size(size, options, alt_python, alt_note)


# -- targets ---------------------------------------------------------------------------------


FEED_KEYS = ("feed_full", "feed_incremental", "feed_unchanged", "feed_settled")


@dataclass
class Target:
    size: str
    text: str
    met: bool | None  # None: not measured in this run
    detail: str

    def line(self) -> str:
        mark = {True: "met", False: "MISSED", None: "not measured"}[self.met]
        return f"- **{mark}** ({self.size}) {self.text}: {self.detail}"


def feed_targets(size: str, users: int, found: dict[str, Row]) -> list[Target]:
    """The change feed's targets: a 1% change at most 5% of the cold run at 10k users, 3%
    from 100k; nothing changed at most 1 s (the settled run: the one right after a change
    reads the groups that held renamed or deleted entries again)."""
    cold, incremental = found.get("feed_full"), found.get("feed_incremental")
    settled = found.get("feed_settled")
    targets = []
    if cold is not None and incremental is not None and users >= 10_000:
        limit = 0.03 if users >= 100_000 else 0.05
        ratio = incremental.seconds / cold.seconds
        targets.append(
            Target(
                size,
                f"change feed, 1% changed, at most {limit:.0%} of the cold run",
                ratio <= limit,
                f"{incremental.seconds:.2f} s = {ratio:.1%} of {cold.seconds:.1f} s",
            )
        )
    if settled is not None:
        targets.append(
            Target(
                size,
                "change feed, nothing changed, at most 1 s",
                settled.seconds <= 1.0,
                f"{settled.seconds:.2f} s, {settled.searches} searches",
            )
        )
    return targets


def check_targets(rows: list[Row]) -> list[Target]:
    targets: list[Target] = []
    # A row group per size and database; the ldapsearch floor (no database) serves them all.
    by_group: dict[tuple[str, str], dict[str, Row]] = {}
    shared: dict[str, dict[str, Row]] = {}
    for row in rows:
        if row.key == "floor_read" and not row.database:
            shared.setdefault(row.size, {})[row.key] = row
        elif row.key:
            by_group.setdefault((row.size, row.database), {})[row.key] = row
    for (size_label, database), own in by_group.items():
        found = {**shared.get(size_label, {}), **own}
        size = f"{size_label}, {database}" if database else size_label
        cold = found.get("cold")
        if cold is None:
            continue
        users, groups = cold.facts["users"], cold.facts["groups"]
        floor_parts = [found.get("floor_read"), found.get("floor_write")]
        if all(floor_parts) and users >= 10_000:
            floor = sum(part.seconds for part in floor_parts)
            ratio = cold.seconds / floor
            detail = f"{cold.seconds:.1f} s vs floor {floor:.1f} s = {ratio:.2f}x"
            raw = cold.facts.get("raw_floor_seconds")
            if raw:
                detail += f" (the driver's floor: {raw:.1f} s, {cold.seconds / raw:.1f}x)"
            targets.append(
                Target(size, "cold full sync at most 2x the floor (Django's)", ratio <= 2, detail)
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
        targets.extend(feed_targets(size, users, found))
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
            and row.key in ("cold", "unchanged", "incremental", "login", *FEED_KEYS, "floor_raw")
        ):
            size = f"{row.size}, {row.database}" if row.database else row.size
            targets.append(Target(size, f"correctness of '{row.scenario}'", False, row.correctness))
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
