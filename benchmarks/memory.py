"""Memory of one sync run by phase: where a cold or unchanged full run's peak comes from.

In a scenario process (``config["memory"]``, see :func:`install`), the engine's steps are
wrapped; each top-level step records its wall time, the process's resident set at its start
and end, and its own peak: Linux's ``VmHWM`` after ``/proc/self/clear_refs`` was reset at the
step's start (so the peak of that step alone, not of the process). With ``trace``, also
``tracemalloc``'s current and peak Python allocations, and the source lines holding the most
memory at the step's end (tracing costs 2-3x the wall time: use it for the breakdown only).

The driver, outside the test suite::

    .venv/bin/python -m benchmarks.memory --size 100k            # cold and unchanged rows
    .venv/bin/python -m benchmarks.memory --size 1m --rows cold  # 1M users / 100k groups
    .venv/bin/python -m benchmarks.memory --size 10k --trace     # with tracemalloc lines
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import shutil
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

#: (module, class or None, attribute, phase label): the steps of a run, in their order.
PHASES = [
    ("adldap_auth.sync.engine", "SyncEngine", "_read_groups", "group read + GroupGraph"),
    ("adldap_auth.store", "Store", "sync_groups", "group rows"),
    ("adldap_auth.sync.engine", "SyncEngine", "_sync_users", "users: stream, planner, writes"),
    ("adldap_auth.sync.engine", "SyncEngine", "_remove_missing", "removals (sets of guids)"),
    ("adldap_auth.store", "Store", "remove_groups", "group removals"),
    ("adldap_auth.sync.engine", None, "write_nesting", "write_nesting"),
]


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class Probe:
    """The records of the wrapped steps (only the outermost one when they nest)."""

    def __init__(self, trace: bool) -> None:
        self.trace = trace
        self.depth = 0
        self.phases: list[dict[str, Any]] = []
        self.start_rss_kb = _status_kb("VmRSS")
        if trace:
            tracemalloc.start(1)

    def wrap(self, function: Any, label: str) -> Any:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self.depth:
                return function(*args, **kwargs)
            self.depth += 1
            record: dict[str, Any] = {"phase": label, "rss_start_mb": _status_kb("VmRSS") / 1024}
            peak_known = _reset_peak()
            if self.trace:
                record["traced_start_mb"] = tracemalloc.get_traced_memory()[0] / 2**20
                tracemalloc.reset_peak()
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                record["seconds"] = time.perf_counter() - started
                record["rss_end_mb"] = _status_kb("VmRSS") / 1024
                record["rss_peak_mb"] = _status_kb("VmHWM") / 1024 if peak_known else None
                if self.trace:
                    current, peak = tracemalloc.get_traced_memory()
                    record["traced_end_mb"] = current / 2**20
                    record["traced_peak_mb"] = peak / 2**20
                    record["top_lines"] = _top_lines()
                self.phases.append(record)
                self.depth -= 1

        return wrapper

    def report(self) -> dict[str, Any]:
        """The phases, and the process's peak: VmHWM is reset at each step's start, so the
        process's own high-water mark is the largest of the steps' and of the time since."""
        peaks = [p["rss_peak_mb"] for p in self.phases if p["rss_peak_mb"] is not None]
        peak = max([*peaks, _status_kb("VmHWM") / 1024])
        return {
            "start_rss_mb": self.start_rss_kb / 1024,
            "peak_rss_mb": peak,
            "phases": self.phases,
        }


def _top_lines(limit: int = 8) -> list[str]:
    stats = tracemalloc.take_snapshot().statistics("lineno")
    return [
        f"{stat.size / 2**20:.1f} MB {stat.count} blocks "
        f"{stat.traceback[0].filename.split('/site-packages/')[-1].split('/wt-scale/')[-1]}:"
        f"{stat.traceback[0].lineno}"
        for stat in stats[:limit]
    ]


def install(options: dict[str, Any]) -> Probe:
    """Wrap the steps of :data:`PHASES` in this process (a scenario's, after Django setup)."""
    probe = Probe(bool(options.get("trace")))
    for module_name, class_name, attribute, label in PHASES:
        owner: Any = importlib.import_module(module_name)
        if class_name:
            owner = getattr(owner, class_name)
        setattr(owner, attribute, probe.wrap(getattr(owner, attribute), label))
    return probe


# -- the driver -----------------------------------------------------------------------------


def render(title: str, report: dict[str, Any]) -> str:
    lines = [
        f"{title}: process RSS {report['start_rss_mb']:.0f} MB before the run",
        "",
        "| phase | s | RSS at start MB | peak MB | RSS at end MB | Python traced start/peak/end MB |",
        "|---|---|---|---|---|---|",
    ]
    for phase in report["phases"]:
        traced = ""
        if "traced_peak_mb" in phase:
            traced = (
                f"{phase['traced_start_mb']:.0f} / {phase['traced_peak_mb']:.0f} / "
                f"{phase['traced_end_mb']:.0f}"
            )
        peak = phase["rss_peak_mb"]
        lines.append(
            f"| {phase['phase']} | {phase['seconds']:.1f} | {phase['rss_start_mb']:.0f} | "
            f"{'?' if peak is None else f'{peak:.0f}'} | {phase['rss_end_mb']:.0f} | {traced} |"
        )
    for phase in report["phases"]:
        if phase.get("top_lines"):
            lines += ["", f"held at the end of '{phase['phase']}':"]
            lines += [f"    {line}" for line in phase["top_lines"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks import harness

    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    parser.add_argument("--size", default="100k", help="users (groups = users / 10): 10k, 1m")
    parser.add_argument("--rows", default="cold,unchanged", help="cold, unchanged or both")
    parser.add_argument("--trace", action="store_true", help="tracemalloc too (slower)")
    parser.add_argument("--no-check", action="store_true", help="skip the correctness check")
    parser.add_argument("--workdir", type=Path, default=harness.OUT / "memory")
    parser.add_argument("--out", type=Path, help="append the tables to this file")
    args = parser.parse_args(argv)
    (size,) = harness.parse_sizes(args.size)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    text = run(size, rows, args.trace, not args.no_check, args.workdir)
    print(text)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write(text + "\n")
    return 0


def run(size: Any, rows: list[str], trace: bool, check: bool, workdir: Path) -> str:
    from benchmarks import harness
    from tests.lab.generator import synthetic

    workdir = workdir / f"run-{size.users}-{size.groups}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    runner = harness.Runner(workdir)
    started = time.perf_counter()
    spec = synthetic(
        size.users, size.groups, depth=harness.DEPTH, groups_per_user=harness.GROUPS_PER_USER,
        photo_ratio=harness.PHOTO_RATIO, seed=harness.SEED, passwords=0,
    )  # fmt: skip
    expected = harness.Expected.of(spec) if check else None
    runner._say(f"{size.label}: generated in {time.perf_counter() - started:.0f} s")
    server = harness.bench_slapd_class()(spec, access_log=False)
    started = time.perf_counter()
    server.start()
    del spec
    runner._say(f"{size.label}: slapd loaded and started in {time.perf_counter() - started:.0f} s")
    out = [f"## {size.label}"]
    try:
        settings = {
            **server.sync_settings(),
            "LDAP_SYNC_USER_EXTRA_PROFILES": ["testapp.Employee"],
            "LDAP_SYNC_USER_SHOW_PROGRESS": False,
            "LDAP_SYNC_BIND_PAGESIZE": harness.PAGE_SIZE,
        }
        db = workdir / "adldap.sqlite3"
        config = {"kind": "adldap", "db": str(db), "ldap": {}, "settings": settings,
                  "media": str(workdir / "media")}  # fmt: skip
        runner.run(sys.executable, {**config, "scenario": "migrate"}, "migrate")
        for row in rows:
            child = runner.run(
                sys.executable,
                {**config, "scenario": "adldap_sync", "mode": "full",
                 "memory": {"trace": trace}},
                f"{size.label} {row}",
            )  # fmt: skip
            correctness = harness.check_database(db, expected) if expected else "not checked"
            peak = child.data["memory_phases"]["peak_rss_mb"]  # the child's VmHWM was reset
            out += [
                "",
                f"**{row}**: {child.data['seconds']:.1f} s, peak RSS {peak:.0f} MB, "
                f"correctness {correctness}; counts {json.dumps(child.data.get('counts', {}))}",
                "",
                render(row, child.data["memory_phases"]),
            ]
    finally:
        server.close()
        for path in workdir.glob("*.sqlite3"):
            path.unlink()
        shutil.rmtree(workdir / "media", ignore_errors=True)
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
