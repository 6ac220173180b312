"""One benchmark scenario, in a process of its own: ``python -m benchmarks.scenarios CONFIG``.

``CONFIG`` is the JSON file the harness wrote (also named by ``BENCH_CONFIG`` for
:mod:`benchmarks.settings`); the scenario writes its measurements to ``config["result"]``.
Only the scenario's own work is timed (Django setup and loading input data are not). Counted
while timing:

- SQL statements, through ``connection.execute_wrapper`` (writes: INSERT, UPDATE, DELETE and
  REPLACE outside the run bookkeeping tables);
- LDAP searches, through a spy on python-ldap's ``SimpleLDAPObject.search_ext`` (the harness
  cross-checks them with the slapd access log, which also sees clients that do not use
  python-ldap, such as ldap3 and ldapsearch).

The peak RSS is measured by the harness (``wait4`` on this process), so it is per scenario.

This module runs in the project's virtualenv and in the alternatives' one: it imports
adldap-auth and the test lab only inside the scenarios that need them.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_WRITE = re.compile(r"^\s*(INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)
#: Tables every run writes by design (its own record, marker, lock): not counted as writes.
BOOKKEEPING_TABLES = ("adldap_auth_syncrun", "adldap_auth_syncmarker", "adldap_auth_synclock")
DISABLED_FILTER = "(userAccountControl:1.2.840.113556.1.4.803:=2)"


class Counters:
    """SQL statements and python-ldap searches sent while :meth:`active`."""

    def __init__(self) -> None:
        self.sql = 0
        self.sql_writes = 0
        self.searches = 0

    def _sql(self, execute, sql, params, many, context):
        self.sql += 1
        if _WRITE.match(sql) and not any(table in sql for table in BOOKKEEPING_TABLES):
            self.sql_writes += 1
        return execute(sql, params, many, context)

    @contextmanager
    def active(self) -> Iterator[Counters]:
        from django.db import connection

        restore: Callable[[], None] = lambda: None  # noqa: E731
        try:
            import ldap.ldapobject
        except ImportError:  # an alternative without python-ldap: the slapd log counts
            pass
        else:
            original = ldap.ldapobject.SimpleLDAPObject.search_ext
            counters = self

            def search_ext(obj, *args, **kwargs):
                counters.searches += 1
                return original(obj, *args, **kwargs)

            ldap.ldapobject.SimpleLDAPObject.search_ext = search_ext

            def restore() -> None:
                ldap.ldapobject.SimpleLDAPObject.search_ext = original

        try:
            with connection.execute_wrapper(self._sql):
                yield self
        finally:
            restore()


def _setup(config: dict[str, Any]) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
    import django

    django.setup()


# -- scenarios -----------------------------------------------------------------------------
# Each takes the config and the counters, does its timed work inside ``timed()`` and returns
# extra facts for the table (JSON values).


def migrate(config, counters, timed) -> dict:
    from django.core.management import call_command

    with timed():
        call_command("migrate", verbosity=0, interactive=False)
    return {}


def adldap_sync(config, counters, timed) -> dict:
    from adldap_auth.sync import SyncOptions, run_sync

    with timed():
        result = run_sync(SyncOptions(mode=config["mode"]))
    if not result.ok:
        raise SystemExit(f"sync failed: {result.error}")
    counts = {k: v for k, v in sorted(result.counts.items()) if v}
    return {
        "status": result.status,
        "mode": result.mode,
        "mode_reason": result.mode_reason,
        "run_searches": result.ldap_searches,
        "counts": counts,
        "problems": result.problems[:5],
    }


def logins(config, counters, timed) -> dict:
    """``config["logins"]`` password logins through ``authenticate()`` (the site's backends)."""
    from django.contrib.auth import authenticate

    latencies: list[float] = []
    searches: list[int] = []
    failed = 0
    with timed():
        for username in config["logins"]:
            before = counters.searches
            started = time.perf_counter()
            user = authenticate(None, username=username, password=config["password"])
            latencies.append(time.perf_counter() - started)
            searches.append(counters.searches - before)
            failed += user is None
    first_ms = round(latencies[0] * 1000, 2) if latencies else None
    latencies.sort()
    return {
        "logins": len(latencies),
        "failed": failed,
        "median_ms": round(statistics.median(latencies) * 1000, 2),
        "p95_ms": round(latencies[max(0, math.ceil(0.95 * len(latencies)) - 1)] * 1000, 2),
        "first_ms": first_ms,
        "searches_median": statistics.median(searches),
        "searches_max": max(searches),
        "searches_first": searches[0],
    }


def dal_populate_loop(config, counters, timed) -> dict:
    """django-auth-ldap's documented way to cover users who never log in: list the users,
    then ``LDAPBackend().populate_user(name)`` for each (NestedGroupOfNamesType, mirrored
    groups). The list is one paged search of the enabled users."""
    import ldap
    from django_auth_ldap.backend import LDAPBackend
    from ldap.controls import SimplePagedResultsControl

    ldap_config = config["ldap"]
    populated = missing = 0
    with timed():
        conn = ldap.initialize(ldap_config["uri"])
        conn.simple_bind_s(ldap_config["bind_dn"], ldap_config["bind_password"])
        names: list[str] = []
        page = SimplePagedResultsControl(True, size=ldap_config["page_size"], cookie=b"")
        while True:
            msgid = conn.search_ext(
                ldap_config["people_dn"],
                ldap.SCOPE_SUBTREE,
                f"(&(objectClass=inetOrgPerson)(!{DISABLED_FILTER}))",
                ["uid"],
                serverctrls=[page],
            )
            _t, data, _m, controls = conn.result3(msgid)
            names.extend(attrs["uid"][0].decode() for dn, attrs in data if dn)
            cookie = next((c.cookie for c in controls if c.controlType == page.controlType), b"")
            if not cookie:
                break
            page.cookie = cookie
        conn.unbind_s()
        backend = LDAPBackend()
        for name in names:
            if backend.populate_user(name) is None:
                missing += 1
            else:
                populated += 1
    return {"populated": populated, "not_found": missing}


def p3_sync_users(config, counters, timed) -> dict:
    from django.core.management import call_command

    with timed():
        call_command("ldap_sync_users", verbosity=0)
    return {}


def p3_format_username(model_fields: dict) -> str:
    """django-python3-ldap's LDAP_AUTH_FORMAT_USERNAME for the lab: the bind DN as given."""
    return model_fields["username"]


def p3_search_filters(ldap_fields: dict) -> list[str]:
    """django-python3-ldap's LDAP_AUTH_FORMAT_SEARCH_FILTERS: enabled users only, as the
    other rows (disabled accounts are not created)."""
    from django_python3_ldap.utils import format_search_filters

    return [*format_search_filters(ldap_fields), f"(!{DISABLED_FILTER})"]


def floor_ldapsearch(config, counters, timed) -> dict:
    """The same user and group entries, with the same attributes, streamed by OpenLDAP's
    paged ``ldapsearch`` to /dev/null: the cost of reading the directory and nothing else.

    Its peak RSS is ldapsearch's, measured by GNU time when installed (``tool_rss_kb``).
    """
    ldap_config = config["ldap"]
    gnu_time = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
    peaks = []
    with timed():
        for index, (base, filterstr, attributes) in enumerate(config["searches"]):
            report = f"{config['result']}.time{index}"
            prefix = [gnu_time, "-f", "%M", "-o", report] if gnu_time else []
            subprocess.run(
                [
                    *prefix, "ldapsearch", "-LLL", "-x", "-H", ldap_config["uri"],
                    "-D", ldap_config["bind_dn"], "-w", ldap_config["bind_password"],
                    "-b", base, "-E", f"pr={ldap_config['page_size']}/noprompt",
                    filterstr, *attributes,
                ],
                stdout=subprocess.DEVNULL,
                check=True,
            )  # fmt: skip
            if gnu_time:
                with open(report, encoding="utf-8") as handle:
                    peaks.append(int(handle.read().split()[-1]))
    return {"tool_rss_kb": max(peaks)} if peaks else {}


def floor_bulk_create(config, counters, timed) -> dict:
    """A bare ``bulk_create`` of the users, the groups and every *effective* membership, in
    one transaction: the cost of writing the result and nothing else."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import Group
    from django.db import transaction

    with open(config["expected_path"], "rb") as handle:
        expected = pickle.load(handle)
    User = get_user_model()
    through = User.groups.through
    unusable = make_password(None)
    with timed(), transaction.atomic():
        users = User.objects.bulk_create(
            [
                User(username=key, first_name=given, last_name=sn, email=mail or "",
                     password=unusable)
                for key, given, sn, mail in expected["user_rows"]
            ]
        )  # fmt: skip
        groups = Group.objects.bulk_create([Group(name=name) for name in expected["groups"]])
        user_ids = {user.username: user.pk for user in users}
        group_ids = {group.name: group.pk for group in groups}
        through.objects.bulk_create(
            [
                through(user_id=user_ids[key], group_id=group_ids[name])
                for key, names in expected["memberships"].items()
                for name in names
            ],
            batch_size=10_000,
        )
    return {}


def floor_raw(config, counters, timed) -> dict:
    """The rows a cold run writes, through the database driver: :mod:`benchmarks.floors`."""
    from django.db import connection

    from benchmarks import floors

    with open(config["expected_path"], "rb") as handle:
        expected = pickle.load(handle)
    connection.ensure_connection()
    vendor = {"postgresql": "postgres", "mysql": "mariadb"}.get(connection.vendor, "sqlite")
    with timed():
        loaded = floors.load(vendor, connection.connection, expected, config["ldap"]["uri"])
    return {"raw_statements": loaded["statements"], "raw_rows": loaded["rows"]}


SCENARIOS = {
    "migrate": migrate,
    "adldap_sync": adldap_sync,
    "logins": logins,
    "dal_populate_loop": dal_populate_loop,
    "p3_sync_users": p3_sync_users,
    "floor_ldapsearch": floor_ldapsearch,
    "floor_bulk_create": floor_bulk_create,
    "floor_raw": floor_raw,
}


def main(path: str) -> None:
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    _setup(config)
    probe = None
    if config.get("memory") is not None:  # memory by phase: benchmarks/memory.py
        from benchmarks import memory

        probe = memory.install(config["memory"])
    if config.get("profile"):
        _profile_start(config)
    counters = Counters()
    elapsed = 0.0

    @contextmanager
    def timed() -> Iterator[None]:
        nonlocal elapsed
        with counters.active():
            started = time.perf_counter()
            try:
                yield
            finally:
                elapsed += time.perf_counter() - started

    extra = SCENARIOS[config["scenario"]](config, counters, timed)
    if config.get("profile"):
        _profile_stop(config)
    result = {
        "vmhwm_kb": _vmhwm_kb(),
        "seconds": elapsed,
        "sql": counters.sql,
        "sql_writes": counters.sql_writes,
        "spy_searches": counters.searches,
        **extra,
    }
    if probe is not None:
        result["memory_phases"] = probe.report()
    with open(config["result"], "w", encoding="utf-8") as handle:
        json.dump(result, handle)


def _vmhwm_kb() -> int | None:
    """This process's peak resident set (kB), from /proc (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


_profiler: Any = None


def _profile_start(config: dict) -> None:
    """``--profile``: pyinstrument around the scenario, when it is installed (dev tooling)."""
    global _profiler
    try:
        from pyinstrument import Profiler
    except ImportError:
        print("pyinstrument is not installed: no profile", file=sys.stderr)
        return
    _profiler = Profiler(interval=0.005)
    _profiler.start()


def _profile_stop(config: dict) -> None:
    if _profiler is None:
        return
    _profiler.stop()
    with open(config["profile"], "w", encoding="utf-8") as handle:
        handle.write(_profiler.output_text(unicode=True, color=False, show_all=False))


if __name__ == "__main__":
    main(sys.argv[1])
