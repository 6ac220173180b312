"""``python -m benchmarks``: sync a generated directory of each size, print one Markdown table.

    .venv/bin/python -m benchmarks                                  # 1k/100, 10k/1k, 100k/10k
    .venv/bin/python -m benchmarks --sizes 1k --skip-alternatives --out /tmp/r.md
    .venv/bin/python -m benchmarks --sizes 2k --samba               # plus the Samba AD run

Sizes are ``<users>`` (groups = users / 10) or ``<users>/<groups>``; ``k`` means thousands.
The table goes to stdout and to ``--out`` (default ``benchmarks/RESULTS.md``) with the machine
it ran on; progress goes to stderr. Never part of the test suite's timing: the suite only runs
a tiny smoke size (``tests/test_bench_smoke.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import harness


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
    )
    started = time.monotonic()
    alt_python, alt_note = None, ""
    if options.alternatives and options.sizes:
        alt_python, alt_note = harness.alternatives_python(options.out)
        print(f"alternatives: {alt_note}" if alt_python else f"alternatives skipped: {alt_note}",
              file=sys.stderr)  # fmt: skip
    rows: list[harness.Row] = []
    for size in options.sizes:
        rows.extend(harness.run_size(size, options, alt_python, alt_note))
    if options.samba:
        from benchmarks import samba

        rows.extend(samba.run_samba(options))
    targets = harness.check_targets(rows)
    elapsed = time.monotonic() - started
    report = render(rows, targets, alt_python and alt_note, elapsed, argv or sys.argv[1:])
    print(report)
    if str(args.out) != "-":
        args.out.write_text(report)
        print(f"written to {args.out}", file=sys.stderr)
    return 0


def render(rows, targets, alternatives: str | None, elapsed: float, argv: list[str]) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"`python -m benchmarks {' '.join(argv)}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{elapsed / 60:.0f} min in all.",
        "",
        f"Machine: {harness.machine_description()}.",
    ]
    if alternatives:
        lines.append(f"Alternatives (own virtualenv): {alternatives}.")
    lines += [
        "",
        "Directory: the test lab's generator (`synthetic`: nesting depth 4, ~5 direct groups per "
        "user, ~20% with a photo, 1% disabled), loaded with `slapadd -q` into a throwaway slapd "
        "(memberof overlay, equality indexes); page size 200; SQLite file databases. Each row "
        "is one process: wall seconds of its work, its peak RSS, the SEARCH operations in the "
        "slapd access log (spy: python-ldap's count when it differs), SQL statements "
        "(writes: INSERT/UPDATE/DELETE outside the run's own bookkeeping rows), and the "
        "active users, groups and effective memberships in Django against the generator's "
        "closure (`ok`, or missing -/extra +).",
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
