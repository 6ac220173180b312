"""The Active Directory path: the same rows against the test lab's Samba AD DC (``--samba``).

A generated company (default 2,000 users, 200 groups, nesting depth 4) plus one group of
every user ("All Staff"), so that its ``member`` values come in ranges
(``LDAP_SYNC_RANGE_SIZE = 1500``, Samba's MaxValRange), loaded into a DC of the lab
(:mod:`tests.lab.samba`). Loading AD over LDAP is slow (about 100 users/s), so the stopped DC
is kept as a template under ``benchmarks/out/`` and reused while it is fresh.

Samba's ports are machine-wide: the harness takes the lab's lock (``/tmp/adldap-samba.lock``),
waiting for a test session that holds it, and never touches another process.

Rows: ``syncldap full`` cold and unchanged, incremental (uSNChanged) after 1% of the users
changed their title and 1% of the memberships changed, logins through ``ADLDAPBackend``
(``tokenGroups``), and the paged ``ldapsearch`` floor. LDAP searches are python-ldap's
(a spy on ``search_ext``): Samba has no access log to read. Correctness: the generator's
closure, plus *Domain Users* (every user's primary group) and the built-in groups above it,
which the server itself names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks import harness

IN_CHAIN = "1.2.840.113556.1.4.1941"
RANGE_SIZE = 1500  # Samba's MaxValRange; Windows ranges by itself above it
BIG_GROUP = "All Staff"


def samba_spec(users: int, groups: int, logins: int) -> Any:
    from tests.lab.generator import synthetic
    from tests.lab.spec import GroupSpec

    spec = synthetic(
        users, groups, depth=harness.DEPTH, groups_per_user=harness.GROUPS_PER_USER,
        photo_ratio=harness.PHOTO_RATIO, seed=harness.SEED, passwords=logins,
    )  # fmt: skip
    # AD names users by CN within an OU: make "Anna Smith" unique with the login name.
    spec.users = [dataclasses.replace(u, cn=f"{u.given_name} {u.sn} {u.key}") for u in spec.users]
    spec.groups.append(GroupSpec(BIG_GROUP, members=[u.key for u in spec.users]))
    return spec


def changed_spec(spec: Any) -> tuple[Any, list[str], list[tuple[str, str, str]]]:
    """1% of the users get a new title, 1% of the memberships change (generator's mutate)."""
    from tests.lab.generator import TITLES, mutate

    new, changes = mutate(spec, fraction_users=0.0, fraction_memberships=0.01, seed=1)
    rng = random.Random(2)
    picked = rng.sample(range(len(new.users)), max(1, len(new.users) // 100))
    users = list(new.users)
    for index in picked:
        user = users[index]
        users[index] = dataclasses.replace(
            user, title=rng.choice([t for t in TITLES if t != user.title])
        )
    new.users = users
    membership_ops = [("add", g, m) for g, m in changes.memberships_added] + [
        ("delete", g, m) for g, m in changes.memberships_removed
    ]
    return new, [users[i].key for i in picked], membership_ops


def apply_changes(dc: Any, spec: Any, titled: list[str], membership_ops: list) -> None:
    import ldap

    from tests.lab.samba import group_dn_for, user_dn_for

    users = {u.key: u for u in spec.users}
    groups = {g.name: g for g in spec.groups}
    conn = dc.admin_connection()
    try:
        for key in titled:
            user = users[key]
            conn.modify_s(user_dn_for(user), [(ldap.MOD_REPLACE, "title", [user.title.encode()])])
        for kind, group, member in membership_ops:
            op = ldap.MOD_ADD if kind == "add" else ldap.MOD_DELETE
            dn = user_dn_for(users[member]).encode()
            conn.modify_s(group_dn_for(groups[group]), [(op, "member", [dn])])
    finally:
        conn.unbind_s()


def expected_state(dc: Any, spec: Any) -> harness.Expected:
    """The generator's closure, plus Domain Users and the groups above it (asked of the DC),
    and every group of the scope (the built-in ones too: the sync mirrors them)."""
    import ldap
    from ldap.filter import escape_filter_chars

    conn = dc.reader_connection()
    try:
        found = conn.search_s(dc.base_dn, ldap.SCOPE_SUBTREE, "(objectClass=group)", ["cn"])
        all_groups = sorted({attrs["cn"][0].decode() for dn, attrs in found if dn})
        domain_users = f"CN=Domain Users,CN=Users,{dc.base_dn}"
        above = conn.search_s(
            dc.base_dn,
            ldap.SCOPE_SUBTREE,
            f"(&(objectClass=group)(member:{IN_CHAIN}:={escape_filter_chars(domain_users)}))",
            ["cn"],
        )
    finally:
        conn.unbind_s()
    builtin = {"Domain Users"} | {attrs["cn"][0].decode() for dn, attrs in above if dn}
    expected = harness.Expected.of(spec)
    closure = spec.expected_groups()
    expected.groups = all_groups
    expected.memberships = {row[0]: sorted(closure[row[0]] | builtin) for row in expected.user_rows}
    return expected


def template_for(spec: Any, out: Path, say) -> Path:
    """A stopped DC loaded with ``spec``, built once (hold the lab lock)."""
    from tests.lab import samba

    path = out / f"samba-template-{samba.template_key(spec)}"
    meta = path / "lab.json"
    if meta.exists():
        age = time.time() - json.loads(meta.read_text())["created"]
        if 0 <= age < samba.TEMPLATE_MAX_AGE:
            return path
    for old in out.glob("samba-template-*"):
        shutil.rmtree(old, ignore_errors=True)
    say(f"samba: building a DC with {len(spec.users)} users (a few minutes, once) ...")
    started = time.monotonic()
    samba.clear_ports()
    staging = path.with_name(path.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    samba.build_template(spec, staging)
    staging.rename(path)
    say(f"samba: template built in {time.monotonic() - started:.0f} s")
    return path


def run_samba(
    options: harness.Options, alt_python: str | None = None, alt_note: str = ""
) -> list[harness.Row]:
    from tests.lab import samba

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    users = options.samba_users
    size = harness.Size(users, max(1, users // 10))
    label = f"AD {size.label}"
    spec = samba_spec(size.users, size.groups, min(users, options.logins))
    new_spec, titled, membership_ops = changed_spec(spec)
    workdir = options.out / f"run-samba-{users}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    runner = harness.Runner(workdir, options.verbose, options.profile)
    rows: list[harness.Row] = []
    say(f"{label}: waiting for the Samba lab lock {samba.LOCK_FILE} ...")
    try:
        with lab_dc(spec, options.out, say) as dc:
            rows = _measure(dc, spec, new_spec, titled, membership_ops, runner, label, options,
                            workdir, size, alt_python)  # fmt: skip
            if options.alternatives and alt_python is None:
                rows.append(harness.Row(label, "alternatives", notes=f"skipped: {alt_note}"))
    finally:
        if not options.keep:
            for path in workdir.glob("*.sqlite3"):
                path.unlink()
            shutil.rmtree(workdir / "media", ignore_errors=True)
    return rows


@contextlib.contextmanager
def lab_dc(spec: Any, out: Path, say) -> Iterator[Any]:
    """A running DC of the lab loaded with ``spec`` (from the template under ``out``, built
    once), holding the lab lock; stopped and removed at the end."""
    from tests.lab import samba

    with samba.lab_lock(notify=say):
        template = template_for(spec, out, say)
        samba.clear_ports()
        run_dir = Path(tempfile.mkdtemp(prefix=samba.RUN_PREFIX, dir=samba.RUN_PARENT))
        dc = samba.SambaDC(spec, template, run_dir)
        try:
            dc._copy_template()
            dc.start()
            yield dc
        finally:
            dc.close()


def _measure(
    dc, spec, new_spec, titled, membership_ops, runner, label, options, workdir, size, alt_python
):
    from tests.lab.spec import LAB_PASSWORD

    rows: list[harness.Row] = []
    range_requests = sum(
        max(0, math.ceil(len(group.members) / RANGE_SIZE) - 1) for group in spec.groups
    )
    before = expected_state(dc, spec)
    settings = {
        "LDAP_SYNC_BIND_URI": dc.uri,
        "LDAP_SYNC_BIND_DN": dc.reader_dn,
        "LDAP_SYNC_BIND_PASS": dc.reader_password,
        "LDAP_SYNC_BIND_SEARCH": dc.base_dn,
        "LDAP_SYNC_USER_SEARCH": dc.lab_dn,
        "LDAP_SYNC_USER_EXTRA_ATTRIBUTES": [
            "userAccountControl", "department", "title", "thumbnailPhoto",
        ],
        "LDAP_SYNC_USER_EXTRA_PROFILES": ["testapp.Employee"],
        "LDAP_SYNC_RANGE_SIZE": RANGE_SIZE,
        "LDAP_SYNC_BIND_PAGESIZE": harness.PAGE_SIZE,
        "LDAP_SYNC_USER_SHOW_PROGRESS": False,
        "AUTHENTICATION_BACKENDS": ["adldap_auth.backends.ADLDAPBackend"],
    }  # fmt: skip
    ldap_info = {
        "uri": dc.uri,
        "bind_dn": dc.reader_dn,
        "bind_password": dc.reader_password,
        "page_size": harness.PAGE_SIZE,
    }
    db = workdir / "adldap.sqlite3"
    common = {"kind": "adldap", "db": str(db), "settings": settings,
              "media": str(workdir / "media"), "ldap": ldap_info}  # fmt: skip
    runner.run(sys.executable, {**common, "scenario": "migrate"}, f"{label} migrate")

    def measure(scenario, title, key, expected, notes, **config) -> harness.Row:
        child = runner.run(sys.executable, {**common, "scenario": scenario, **config},
                           f"{label} {title}")  # fmt: skip
        data = child.data
        row = harness.Row(
            size=label, scenario=title, database="sqlite", seconds=data["seconds"],
            rss_mb=child.rss_mb,
            searches=data["spy_searches"], sql=data["sql"], sql_writes=data["sql_writes"],
            correctness=harness.check_database(db, expected) if expected else "",
            notes=notes(data), key=key,
            facts={**data, "users": size.users, "groups": size.groups, "ad": True,
                   "range_requests": range_requests},
        )  # fmt: skip
        rows.append(row)
        return row

    def sync_notes(data: dict) -> str:
        counts = data.get("counts", {})
        shown = [
            f"{name.replace('_', ' ')} {counts[name]}"
            for name in ("users_created", "users_updated", "groups_created", "memberships_added",
                         "memberships_removed", "photos_written", "users_seen", "groups_seen")
            if counts.get(name)
        ]  # fmt: skip
        return ", ".join(shown) or "no change"

    measure("adldap_sync", "adldap-auth: syncldap full, cold (empty DB)", "cold", before,
            lambda d: sync_notes(d) + "; ranged member values (All Staff: 1 range request)",
            mode="full")  # fmt: skip
    measure("adldap_sync", "adldap-auth: syncldap full, unchanged", "unchanged", before,
            sync_notes, mode="full")  # fmt: skip
    floor = runner.run(
        sys.executable,
        {**common, "kind": "floor", "db": str(workdir / "floor.sqlite3"),
         "scenario": "floor_ldapsearch",
         "searches": [
             [dc.lab_dn, "(&(objectCategory=person)(objectClass=user))",
              ["sAMAccountName", "givenName", "sn", "mail", "userAccountControl", "department",
               "title", "thumbnailPhoto", "objectGUID", "objectSid", "primaryGroupID",
               "uSNChanged"]],
             [dc.base_dn, "(objectClass=group)",
              ["cn", "member;range=0-1499", "objectGUID", "objectSid", "uSNChanged"]],
         ]},
        f"{label} floor",
    ).data  # fmt: skip
    rows.append(
        harness.Row(size=label, scenario="floor: paged ldapsearch of users and groups > /dev/null",
                    seconds=floor["seconds"],
                    rss_mb=(floor.get("tool_rss_kb") or floor["vmhwm_kb"]) / 1024,
                    notes="searches not counted (ldapsearch is not python-ldap)")
    )  # fmt: skip
    apply_changes(dc, new_spec, titled, membership_ops)
    after = expected_state(dc, new_spec)
    measure("adldap_sync", "adldap-auth: syncldap incremental (uSNChanged), 1% changed",
            "incremental", after, sync_notes, mode="incremental")  # fmt: skip
    login_users = [u.key for u in new_spec.users if u.password and not u.disabled]
    login_users = login_users[: options.logins]

    def login_notes(data: dict) -> str:
        text = (
            f"{data['logins']} logins: median {data['median_ms']:.1f} ms, p95 "
            f"{data['p95_ms']:.1f} ms; searches/login median {data['searches_median']:g}, "
            f"max {data['searches_max']}"
        )
        return text + (f"; {data['failed']} FAILED" if data["failed"] else "")

    measure("logins", f"adldap-auth: {len(login_users)} logins through ADLDAPBackend", "login",
            after, login_notes, logins=login_users, password=LAB_PASSWORD)  # fmt: skip
    if options.alternatives and alt_python is not None:
        dal_db = workdir / "django-auth-ldap.sqlite3"
        dal = {"kind": "django_auth_ldap", "db": str(dal_db), "settings": {},
               "ldap": {**ldap_info, "flavor": "ad", "people_dn": dc.lab_dn,
                        "groups_dn": dc.base_dn}}  # fmt: skip
        runner.run(alt_python, {**dal, "scenario": "migrate"}, f"{label} migrate (dal)")
        child = runner.run(
            alt_python,
            {**dal, "scenario": "logins", "logins": login_users, "password": LAB_PASSWORD},
            f"{label} django-auth-ldap logins",
        )
        rows.append(
            harness.Row(
                size=label,
                database="sqlite",
                scenario=f"django-auth-ldap: {len(login_users)} logins through LDAPBackend",
                seconds=child.data["seconds"], rss_mb=child.rss_mb,
                searches=child.data["spy_searches"], sql=child.data["sql"],
                sql_writes=child.data["sql_writes"],
                notes=login_notes(child.data).replace(
                    " logins:", " logins (NestedActiveDirectoryGroupType, MIRROR_GROUPS):", 1
                ),
                key="dal_login", facts=child.data,
            )
        )  # fmt: skip
    return rows
