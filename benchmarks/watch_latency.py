"""How long a directory change takes to reach Django under ``syncldap watch`` (not a test).

    .venv/bin/python -m benchmarks.watch_latency                       # slapd, 10k users
    .venv/bin/python -m benchmarks.watch_latency --users 1000 --changes 40 --json out.json
    .venv/bin/python -m benchmarks.watch_latency --samba                # Samba AD, 2k, DirSync

Loads a slapd with the syncprov overlay (the lab generator, slapadd; the watch waits on its
persistent search), or with ``--samba`` the lab's Samba AD DC with the same generator's
company (``benchmarks.samba``; DirSync, the watch looking every ``--interval`` seconds), makes
a cold full run into a SQLite file, then runs :func:`adldap_auth.watch.watch` in this process while a second
thread writes ``--changes`` changes to the directory, one every ``--every`` seconds, in turn:

``field``
    a user's surname (``sn``) changes: done when the Django user's ``last_name`` has it;
``nested``
    a user joins a group that is a member of another group: done when the Django user is in
    the *parent* group (the membership arrives through the nesting);
``disable``
    a user's ``userAccountControl`` gets ACCOUNTDISABLE: done when the user is inactive;
``delete``
    a user's entry is deleted: done when the user is inactive.

The users disabled or deleted have a database session made beforehand (``Client.force_login``);
*session* is the moment that session's row is gone (the session store's rows are deleted in
the batch that removes the user).

Latency is measured from the end of the directory write (its LDAP response) to the end of
the first batch after which the database shows the change, checked after every batch (so it
includes the batch's own run time). Prints per kind and overall: count, median, p95, max in
seconds; the batches run and their total time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()

import ldap  # noqa: E402
from django.conf import settings  # noqa: E402

KINDS = ("field", "nested", "disable", "delete")


@dataclass
class Change:
    kind: str
    user: str
    done: Callable[[], bool]  # evaluated in the watch's thread, after a batch
    written_at: float = 0.0
    applied_at: float | None = None
    session_key: str | None = None
    session_ended_at: float | None = None


@dataclass
class Figures:
    changes: list[Change] = field(default_factory=list)
    batches: int = 0
    batch_seconds: float = 0.0
    full_seconds: float = 0.0
    modes: set[str] = field(default_factory=set)  # "incremental", or a full batch's reason

    def latencies(self, kind: str | None = None) -> list[float]:
        return [
            c.applied_at - c.written_at
            for c in self.changes
            if c.applied_at is not None and (kind is None or c.kind == kind)
        ]

    def sessions(self) -> list[float]:
        return [
            c.session_ended_at - c.written_at
            for c in self.changes
            if c.session_ended_at is not None
        ]


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def summary_line(name: str, values: list[float], expected: int) -> str:
    if not values:
        return f"{name:<9} 0/{expected} applied"
    return (
        f"{name:<9} {len(values)}/{expected} applied: median {statistics.median(values):.3f} s, "
        f"p95 {p95(values):.3f} s, max {max(values):.3f} s"
    )


class Changer(threading.Thread):
    """Writes the changes to the directory, one every ``every`` seconds (the LDAP side only:
    the database belongs to the watch's thread)."""

    def __init__(self, server: Any, changes: list[Change], writes: list, every: float) -> None:
        super().__init__(daemon=True)
        self.server, self.changes, self.writes, self.every = server, changes, writes, every
        self.started = threading.Event()
        self.finished = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.started.wait(600)
            conn = self.server.admin_connection()
            for change, write in zip(self.changes, self.writes, strict=True):
                write(conn)
                change.written_at = time.monotonic()
                time.sleep(self.every)
            conn.unbind_s()
        except BaseException as error:
            self.error = error
        finally:
            self.finished.set()


def plan_changes(server: Any, count: int, seed: int) -> tuple[list[Change], list]:
    """``count`` changes, the kinds in turn, each on a different user; and their writes."""
    from django.contrib.auth import get_user_model

    User = get_user_model()
    spec = server.spec
    rng = random.Random(seed)
    users = [u for u in spec.users if not u.disabled]
    rng.shuffle(users)
    parents: dict[str, list[str]] = {}
    for group in spec.groups:
        for member in group.members:
            if member.startswith("group:"):
                parents.setdefault(member[6:], []).append(group.name)
    nested = [g for g in spec.groups if g.name in parents]
    closure = spec.expected_groups()
    changes, writes = [], []
    for index in range(count):
        kind = KINDS[index % len(KINDS)]
        user = users[index]
        dn = server.user_dn(user.key)
        if kind == "field":
            surname = f"Changed{index}"
            done = _field_done(User, user.key, surname)
            write = _modify(dn, "sn", surname.encode())
        elif kind == "nested":
            group = next(
                g
                for g in rng.sample(nested, len(nested))
                if not set(parents[g.name]) <= closure[user.key]
            )
            parent = next(p for p in parents[group.name] if p not in closure[user.key])
            done = _group_done(User, user.key, parent)
            group_dn = server.group_dn(group.name)
            write = _modify(group_dn, "member", dn.encode(), ldap.MOD_ADD)
        elif kind == "disable":
            done = _inactive(User, user.key)
            write = _modify(dn, "userAccountControl", b"514")
        else:
            done = _inactive(User, user.key)
            write = _delete(dn)
        changes.append(Change(kind, user.key, done))
        writes.append(write)
    return changes, writes


def _modify(dn: str, attribute: str, value: bytes, op: int = ldap.MOD_REPLACE) -> Callable:
    return lambda conn: conn.modify_s(dn, [(op, attribute, [value])])


def _delete(dn: str) -> Callable:
    return lambda conn: conn.delete_s(dn)


def _field_done(User: Any, key: str, surname: str) -> Callable[[], bool]:
    return lambda: User.objects.filter(username=key, last_name=surname).exists()


def _group_done(User: Any, key: str, group: str) -> Callable[[], bool]:
    return lambda: User.objects.filter(username=key, groups__name=group).exists()


def _inactive(User: Any, key: str) -> Callable[[], bool]:
    return lambda: User.objects.filter(username=key, is_active=False).exists()


def make_sessions(changes: list[Change]) -> None:
    from django.contrib.auth import get_user_model
    from django.test import Client

    User = get_user_model()
    for change in changes:
        if change.kind in ("disable", "delete"):
            client = Client()
            client.force_login(User.objects.get(username=change.user))
            change.session_key = client.session.session_key


def measure(args: argparse.Namespace) -> Figures:
    from django.core.management import call_command

    workdir = Path(tempfile.mkdtemp(prefix="adldap-watch-bench-"))
    settings.DATABASES["default"]["NAME"] = str(workdir / "db.sqlite3")
    call_command("migrate", verbosity=0)
    if args.samba:
        return _on_samba(args, workdir)
    from benchmarks.harness import bench_slapd_class
    from tests.helpers import slapd_settings
    from tests.lab.generator import synthetic

    spec = synthetic(users=args.users, groups=args.groups, seed=args.seed)
    server = bench_slapd_class()(spec, overlays=("memberof", "syncprov"))
    server.start()
    try:
        values = slapd_settings(server, LDAP_SYNC_CHANGE_TRACKING="contentsync")
        return follow(server, values, args, workdir)
    finally:
        server.close()


def _on_samba(args: argparse.Namespace, workdir: Path) -> Figures:
    from benchmarks.samba import lab_dc, samba_spec
    from tests.helpers import samba_settings

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    out = REPO / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    with lab_dc(samba_spec(args.users, args.groups, 0), out, say) as dc:
        dc.grant_replication_right(dc.reader_dn)
        dc.grant_deleted_objects(dc.reader_dn)
        dc.add_tombstone()
        values = samba_settings(
            dc,
            LDAP_SYNC_CHANGE_TRACKING="dirsync",
            LDAP_SYNC_USER_SEARCH=dc.lab_dn,
            LDAP_SYNC_RANGE_SIZE=1500,
        )
        return follow(dc, values, args, workdir)


def follow(server: Any, values: dict, args: argparse.Namespace, workdir: Path) -> Figures:
    """The cold run, then the watch while the changes are written."""
    from django.contrib.sessions.models import Session
    from django.test import override_settings

    from adldap_auth.sync import SyncOptions, run_sync
    from adldap_auth.watch import WatchOptions, watch

    figures = Figures()
    values = {
        **values,
        "LDAP_SYNC_REMOVAL_THRESHOLD": None,
        "LDAP_SYNC_WATCH_INTERVAL": args.interval,
        "SESSION_ENGINE": "django.contrib.sessions.backends.db",
        "MEDIA_ROOT": str(workdir / "media"),
    }
    with override_settings(**values):
        started = time.monotonic()
        full = run_sync(SyncOptions(mode="full"))
        figures.full_seconds = time.monotonic() - started
        if not full.ok:
            raise SystemExit(f"the cold run failed: {full.error}")
        changes, writes = plan_changes(server, args.changes, args.seed)
        figures.changes = changes
        make_sessions(changes)
        changer = Changer(server, changes, writes, args.every)
        options = WatchOptions(interval=args.interval, duration=args.changes * args.every + 120)

        def on_batch(result: Any) -> None:
            figures.batches += 1
            figures.batch_seconds += result.seconds
            figures.modes.add(result.mode_reason if result.mode == "full" else result.mode)
            changer.started.set()
            now = time.monotonic()
            for change in changes:
                if not change.written_at:
                    continue
                if change.applied_at is None and change.done():
                    change.applied_at = now
                if (
                    change.session_key
                    and change.session_ended_at is None
                    and not Session.objects.filter(session_key=change.session_key).exists()
                ):
                    change.session_ended_at = now
            if changer.finished.is_set() and all(c.applied_at is not None for c in changes):
                options.stop.set()

        options.on_batch = on_batch
        changer.start()
        watch(options)
        changer.join(10)
        if changer.error:
            raise changer.error
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samba", action="store_true", help="the lab's Samba AD DC, DirSync")
    parser.add_argument("--users", type=int, default=None, help="default 10,000 (Samba 2,000)")
    parser.add_argument("--groups", type=int, default=None, help="default: users / 10")
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--every", type=float, default=1.0, help="seconds between changes")
    parser.add_argument("--interval", type=float, default=3.0, help="LDAP_SYNC_WATCH_INTERVAL")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    args.users = args.users or (2000 if args.samba else 10_000)
    args.groups = args.groups or max(1, args.users // 10)
    figures = measure(args)
    expected = {kind: sum(1 for c in figures.changes if c.kind == kind) for kind in KINDS}
    directory = "Samba AD (DirSync)" if args.samba else "slapd (syncprov)"
    print(
        f"{directory}, {args.users} users / {args.groups} groups, SQLite file; "
        f"{args.changes} changes, one every {args.every} s; watch interval {args.interval} s"
    )
    print(f"cold full run {figures.full_seconds:.1f} s")
    for kind in KINDS:
        print(summary_line(kind, figures.latencies(kind), expected[kind]))
    print(summary_line("all", figures.latencies(), len(figures.changes)))
    sessions = sum(1 for c in figures.changes if c.session_key)
    print(summary_line("session", figures.sessions(), sessions))
    print(f"{figures.batches} batches, {figures.batch_seconds:.1f} s of batch time")
    print(f"batch modes: {sorted(figures.modes)}")
    if args.json:
        data = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "changes": [
                {k: v for k, v in dataclasses.asdict(c).items() if k != "done"}
                for c in figures.changes
            ],
            "batches": figures.batches,
            "batch_seconds": figures.batch_seconds,
            "full_seconds": figures.full_seconds,
        }
        args.json.write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
