"""``python -m benchmarks``: sync a generated directory of each size, print one Markdown table.

    .venv/bin/python -m benchmarks                                  # 1k/100, 10k/1k, 100k/10k
    .venv/bin/python -m benchmarks --sizes 1k --skip-alternatives --out /tmp/r.md
    .venv/bin/python -m benchmarks --sizes 2k --samba               # plus the Samba AD run
    .venv/bin/python -m benchmarks --sizes 10k --databases sqlite,postgres,mariadb --out -

Sizes are ``<users>`` (groups = users / 10) or ``<users>/<groups>``; ``k`` means thousands.
The table goes to stdout and to ``--out`` (default ``benchmarks/RESULTS.md``) with the machine
it ran on; progress goes to stderr. Never part of the test suite's timing: the suite only runs
a tiny smoke size (``tests/system/test_bench_smoke.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import databases, harness


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--sizes", default="1k,10k,100k", help="e.g. 1k,10k,100k or 200/20")
    parser.add_argument(
        "--skip-alternatives", action="store_true", help="only adldap-auth and the floor"
    )
    parser.add_argument(
        "--slow-alternatives-above",
        type=int,
        default=harness.SLOW_ALTERNATIVES_ABOVE,
        help="skip the alternatives above this many users (default %(default)s)",
    )
    parser.add_argument(
        "--databases",
        default="sqlite",
        help="our scenarios and the write floors on each: sqlite,postgres,mariadb "
        "(PostgreSQL at 127.0.0.1:5432 as postgres, MariaDB at 127.0.0.1:3306 as root; a "
        "throwaway database per row group; default %(default)s)",
    )
    parser.add_argument("--logins", type=int, default=100, help="logins per size (default 100)")
    parser.add_argument(
        "--samba",
        action="store_true",
        help="also the Samba AD run (needs the lab's Samba packages, root)",
    )
    parser.add_argument("--samba-users", type=int, default=2000)
    parser.add_argument("--no-slapd", action="store_true", help="only the Samba run")
    parser.add_argument(
        "--out",
        type=Path,
        default=harness.REPO / "benchmarks" / "RESULTS.md",
        help="Markdown file for the table (default %(default)s); '-' for none",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=harness.OUT,
        help="scratch space: databases, logs, the alternatives' venv",
    )
    parser.add_argument("--keep", action="store_true", help="keep the databases of each size")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="pyinstrument profile of our scenarios, next to their logs",
    )
    args = parser.parse_args(argv)  # fmt: skip

    options = harness.Options(
        sizes=[] if args.no_slapd else harness.parse_sizes(args.sizes),
        alternatives=not args.skip_alternatives,
        slow_alternatives_above=args.slow_alternatives_above,
        logins=args.logins,
        samba=args.samba,
        samba_users=args.samba_users,
        profile=args.profile,
        keep=args.keep,
        out=args.workdir,
        databases=databases.parse_databases(args.databases),
    )
    started = time.monotonic()
    alt_python, alt_note = None, ""
    if options.alternatives and (options.sizes or options.samba):
        alt_python, alt_note = harness.alternatives_python(options.out)
        print(f"alternatives: {alt_note}" if alt_python else f"alternatives skipped: {alt_note}",
              file=sys.stderr)  # fmt: skip
    rows: list[harness.Row] = []
    for size in options.sizes:
        rows.extend(harness.run_size(size, options, alt_python, alt_note))
    if options.samba:
        from benchmarks import samba

        rows.extend(samba.run_samba(options, alt_python, alt_note))
    targets = harness.check_targets(rows)
    elapsed = time.monotonic() - started
    report = render(
        rows, targets, alt_python and alt_note, elapsed, argv or sys.argv[1:], options.databases
    )
    print(report)
    if str(args.out) != "-":
        args.out.write_text(report)
        print(f"written to {args.out}", file=sys.stderr)
    return 0


def render(
    rows, targets, alternatives: str | None, elapsed: float, argv: list[str], vendors: list[str]
) -> str:
    servers = databases.server_versions(vendors)
    lines = [
        "# Benchmark results",
        "",
        f"`python -m benchmarks {' '.join(argv)}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{elapsed / 60:.0f} min in all.",
        "",
        f"Machine: {harness.machine_description()}{'; ' + servers if servers else ''}.",
    ]
    if alternatives:
        lines.append(f"Alternatives (own virtualenv): {alternatives}.")
    lines += [
        "",
        "**Directory**: the test lab's generator (`synthetic`: nesting depth 4, ~5 direct "
        "groups per user, ~20% with a photo, 1% disabled), loaded with `slapadd -q` into a "
        "throwaway slapd (memberof overlay; syncprov overlay for the change feed, with a "
        "checkpoint, a session log of max(1000, N) writes and an entryCSN index; equality "
        "indexes; modify timestamps one minute apart, the newest a day old, as in a directory "
        "in use); page size 200; a database of its own per row group (a SQLite file; with "
        "`--databases`, also a throwaway PostgreSQL or MariaDB database on the local server, "
        "its settings as installed); photos written to disk. The `AD` rows: the same "
        "generator plus one group of every user (ranged `member` values), in the lab's Samba "
        "AD DC.",
        "",
        "**Columns**: each row is one process. *db*: the database the row wrote (blank: "
        "none). *wall s*: the scenario's work, Django setup excluded. *peak RSS*: that "
        "process's VmHWM (ldapsearch's own for the ldapsearch floor). *LDAP searches*: SEARCH "
        "operations in the slapd access log (one per page, or per change-feed request), with "
        "python-ldap's count (a spy on `search_ext`) when it differs; on AD, the spy's. "
        "*SQL*: statements sent through Django (an `executemany` counts once; BEGIN, COMMIT "
        "and SAVEPOINT count), *w*: INSERT/UPDATE/DELETE outside the run's own bookkeeping "
        "rows (run record, marker, lock); for the driver floor, the statements it sent "
        "itself (a COPY, a multi-row INSERT or an `executemany` counts once; *w* without "
        "BEGIN and COMMIT). *correctness*: Django's active users, groups and effective "
        "(recursive) memberships read back from the database and compared with the "
        "generator's own closure (`DirectorySpec.expected_groups`, no code shared with the "
        "sync); `ok`, or missing -/extra +.",
        "",
        "**Rows**, per database: *cold* = `syncldap full` on an empty database (its note ends "
        "with its time over the raw floor: ldapsearch plus the driver load); *unchanged* = the "
        "same again; *incremental* = after 1% of the users (title, department and OU move, "
        "surname, mail, disabled flag, photo) and 1% of the direct memberships changed online "
        "(modifyTimestamp tracking); *logins* = `authenticate()` with passwords through the "
        "backend, in one process (the first one of the process reads what it caches). "
        '*Change feed* (`LDAP_SYNC_CHANGE_TRACKING = "contentsync"`, RFC 4533), on a '
        "database of its own: a cold full run, which also takes the feed's cookies; after the "
        "same 1% change (and one write on the base entry: slapd 2.5 can leave its contextCSN "
        "behind the last writes of a burst until the next write), an incremental run from "
        "the feed; then the feed again with nothing changed. The floor: OpenLDAP's "
        "`ldapsearch -E pr=200` of the same entries and attributes to /dev/null (once per "
        "size); Django's plain `bulk_create` of the same users, groups and effective "
        "memberships in one transaction; and the driver floor, the real limit of each "
        "database: every row the cold run writes (users, groups, effective memberships, "
        "identity links, the stored nesting, the profiles; not the photo files) through the "
        "driver in one transaction, PostgreSQL `COPY` (psycopg 3), MariaDB multi-row "
        "`INSERT`, SQLite `executemany`, into the tables Django made (indexes and constraints "
        "kept). The floors' peak RSS includes their input data. The alternatives (SQLite "
        "only) run in their own virtualenv, configured as their documentation says; "
        "django-auth-ldap's `populate_user()` loop lists the enabled users with one paged "
        "search first.",
        "",
        harness.markdown_table(rows),
        "",
        "## Targets (issue #8)",
        "",
        *(target.line() for target in targets),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
