"""Crash safety (issue 19): a batch run killed (``SIGKILL``) or failed (directory stopped) at any
moment leaves a state from which the next *incremental* run alone gives exactly the directory's
state, and no enabled user is ever inactive meanwhile.

Each try changes the directory at random (:func:`tests.lab.generator.mutate`), starts
``manage.py syncldap`` in a site process (:class:`tests.site.Site`, sharing the test database:
a SQLite file, or PostgreSQL with ``ADLDAP_TEST_DB=postgres``), interrupts it at a random moment
of its run, sometimes changes the directory again (a revert of the change, or more changes),
then runs a plain ``syncldap incremental`` and compares the database with the directory's spec
(:meth:`~tests.lab.spec.DirectorySpec.expected_groups` for memberships). While any run goes, the
test samples the database: a user enabled in the directory and active before the run must never
be seen inactive.

The kill moment is uniform over the run's length, measured on this directory by uninterrupted
runs of each mode, counted from the run's record (so that Django's start-up is not a target).
The figures (tries, kills that landed mid-run, states left diverged, samples, violations,
recovery time) are printed at the end of each test (``pytest -s`` or ``-rP``).

Note: an entry removed as disabled (deactivated, groups kept) and later deleted from the
directory keeps its memberships, failed run or not: removals only look at users not removed
yet. The comparison tolerates that (inactive users hold no permission), pending a decision.
"""

from __future__ import annotations

import dataclasses
import json
import random
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from adldap_auth.sync import SyncOptions, run_sync
from tests.helpers import django_state, slapd_settings
from tests.lab.generator import mutate, synthetic
from tests.lab.slapd import LabSlapd
from tests.lab.spec import DirectorySpec
from tests.site import Site
from tests.slapd.test_sync_incremental import assert_matches_spec

USERS, GROUPS = 2000, 200
#: What happens to the directory between an interrupted run and the next one: nothing, the
#: changes the interrupted run was applying are undone, or other changes are made.
AFTER = ("none", "revert", "mutate")
SAMPLE_INTERVAL = 0.02


@dataclass
class Figures:
    """What a test measured, printed at its end."""

    tries: int = 0
    interrupted: int = 0  # the interruption landed while the run was going
    finished_first: int = 0  # the run ended before the chosen moment
    diverged: int = 0  # interrupted runs that left the database unlike the directory
    diverged_users: int = 0
    samples: int = 0
    violations: int = 0
    recoveries: int = 0
    recovery_seconds: list[float] = field(default_factory=list)
    run_seconds: dict[str, float] = field(default_factory=dict)

    def line(self, name: str) -> str:
        slowest = max(self.recovery_seconds, default=0.0)
        return (
            f"{name}: tries={self.tries} interrupted_mid_run={self.interrupted} "
            f"finished_first={self.finished_first} left_diverged={self.diverged} "
            f"({self.diverged_users} users) samples={self.samples} "
            f"violations={self.violations} recovered={self.recoveries}/{self.tries} "
            f"slowest_recovery={slowest:.1f}s run_lengths="
            + ",".join(f"{mode}:{seconds:.1f}s" for mode, seconds in self.run_seconds.items())
        )


@dataclass
class RunOutcome:
    returncode: int
    seconds: float  # from the run's record to the process's end
    interrupted: bool  # the interruption was made while the process was still running
    summary: dict[str, Any] | None
    stderr: str


class CrashLab:
    """A slapd, a site database and the ``syncldap`` processes run against them."""

    def __init__(self, site: Site, server: LabSlapd, tmp_path: Path, figures: Figures) -> None:
        self.site = site
        self.server = server
        self.tmp_path = tmp_path
        self.figures = figures
        self.media_root = tmp_path / "media"
        self.settings = slapd_settings(
            server,
            MEDIA_ROOT=str(self.media_root),
            LDAP_SYNC_INCREMENTAL_TIME_OFFSET=0,
            LDAP_SYNC_REMOVAL_THRESHOLD=None,
            LDAP_SYNC_INCREMENTAL_BETWEEN_FULL=-1,
            LDAP_SYNC_WRITE_BATCH_SIZE=100,  # many commits: many moments to die between
            LDAP_SYNC_NETWORK_TIMEOUT=2,
            LDAP_SYNC_OPERATION_TIMEOUT=30,
        )
        self.count = 0

    # -- the database, read with plain SQL (the site's processes write it) --------------------

    def state(self) -> dict[str, dict[str, Any]]:
        """Every linked user: fields, activity, profile, photo bytes, group names."""
        users = self.site.query(
            "SELECT u.id, u.username, u.first_name, u.last_name, u.email, u.is_active, "
            "d.removal_reason FROM auth_user u JOIN adldap_auth_directoryuser d ON d.user_id = u.id"
        )
        self.removed_as_disabled = {row[1] for row in users if row[6] == "disabled"}
        profiles = {
            row[0]: row[1:]
            for row in self.site.query(
                "SELECT user_id, department, title, jpegphoto FROM testapp_employee"
            )
        }
        groups: dict[int, set[str]] = {}
        for user_id, name in self.site.query(
            "SELECT ug.user_id, g.name FROM auth_user_groups ug "
            "JOIN auth_group g ON g.id = ug.group_id"
        ):
            groups.setdefault(user_id, set()).add(name)
        state = {}
        for user_id, username, first, last, email, active, _reason in users:
            department, title, photo = profiles.get(user_id, (None, None, None))
            state[username] = {
                "first_name": first,
                "last_name": last,
                "email": email,
                "is_active": bool(active),
                "department": department or None,
                "title": title or None,
                "photo": (self.media_root / photo).read_bytes() if photo else None,
                "groups": groups.get(user_id, set()),
            }
        return state

    def differences(self) -> dict[str, tuple[Any, Any]]:
        """username -> (expected, found) for every user unlike the directory's spec.

        Enabled entries: active, with their fields, profile, photo and recursive groups.
        Disabled entries known to Django: inactive, kept current otherwise (a full run does).
        Entries gone from the directory: inactive, in no group (every group here is synced);
        but an entry deleted after it was removed as disabled keeps the groups it had, by the
        current removal rules (see the module's note), so only its activity is checked.
        """
        spec = self.server.spec
        closure = spec.expected_groups()
        state = self.state()
        wrong: dict[str, tuple[Any, Any]] = {}
        for user in spec.users:
            expected = {
                "first_name": user.given_name,
                "last_name": user.sn,
                "email": user.mail or "",
                "is_active": not user.disabled,
                "department": user.department,
                "title": user.title,
                "photo": user.photo,
                "groups": closure[user.key],
            }
            found = state.pop(user.key, None)
            if found is None and user.disabled:
                continue  # a disabled entry is never created
            if found != expected:
                wrong[user.key] = (expected, found)
        gone = {"is_active": False, "groups": set()}
        for username, found in state.items():
            if username in self.removed_as_disabled:
                found = {**found, "groups": set()}
            if {name: found[name] for name in gone} != gone:
                wrong[username] = (gone, found)
        return wrong

    def assert_matches_directory(self, context: str) -> None:
        wrong = self.differences()
        if wrong:
            shown = []
            for username, (expected, found) in sorted(wrong.items())[:5]:
                if found is None:
                    shown.append(f"{username}: missing")
                    continue
                diff = {k: (expected[k], found[k]) for k in expected if expected[k] != found[k]}
                if "groups" in diff:
                    want, got = diff["groups"]
                    diff["groups"] = f"missing {sorted(want - got)}, extra {sorted(got - want)}"
                diff.pop("photo", None) and diff.setdefault("photo", "differs")
                shown.append(f"{username}: {diff}")
            raise AssertionError(f"{context}: {len(wrong)} users unlike the directory: {shown}")

    def must_stay_active(self) -> set[str]:
        """Users active now whose entry is enabled in the directory: never to be deactivated."""
        enabled = {user.key for user in self.server.spec.users if not user.disabled}
        active = self.site.query(
            "SELECT u.username FROM auth_user u "
            "JOIN adldap_auth_directoryuser d ON d.user_id = u.id WHERE u.is_active"
        )
        return {row[0] for row in active} & enabled

    def _inactive(self) -> set[str]:
        rows = self.site.query(
            "SELECT u.username FROM auth_user u "
            "JOIN adldap_auth_directoryuser d ON d.user_id = u.id WHERE NOT u.is_active"
        )
        return {row[0] for row in rows}

    def _runs(self) -> int:
        return self.site.query("SELECT COUNT(*) FROM adldap_auth_syncrun")[0][0]

    # -- runs -------------------------------------------------------------------------------

    def run(
        self,
        mode: str,
        interrupt_after: float | None = None,
        interrupt: Callable[[subprocess.Popen], None] | None = None,
    ) -> RunOutcome:
        """Run ``syncldap <mode> --json``, sampling the database until the process ends.

        ``interrupt(process)`` is called ``interrupt_after`` seconds after the run's record
        appears (if the process is still running then). Violations fail the test at once.
        """
        self.count += 1
        out, err = self.tmp_path / f"run{self.count}.out", self.tmp_path / f"run{self.count}.err"
        keep_active = self.must_stay_active()
        runs_before = self._runs()
        with open(out, "w") as stdout, open(err, "w") as stderr:
            process = self.site.manage(
                "syncldap", mode, "--json", settings=self.settings, stdout=stdout, stderr=stderr
            )
        started: float | None = None
        interrupted = False
        violations: set[str] = set()
        try:
            deadline = time.monotonic() + 600
            while True:
                ended = process.poll() is not None
                violations |= self._inactive() & keep_active
                self.figures.samples += 1
                if ended:
                    break
                now = time.monotonic()
                if started is None and self._runs() > runs_before:
                    started = now
                if (
                    interrupt is not None
                    and not interrupted
                    and started is not None
                    and now - started >= (interrupt_after or 0.0)
                ):
                    interrupt(process)
                    interrupted = True
                assert now < deadline, f"syncldap {mode} did not end"
                time.sleep(SAMPLE_INTERVAL)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()  # a zombie's pid still exists: the next run must see it gone
        seconds = time.monotonic() - (started or time.monotonic())
        self.figures.violations += len(violations)
        assert not violations, (
            f"enabled users seen inactive during a {mode} run: {sorted(violations)}"
        )
        text = out.read_text()
        return RunOutcome(
            returncode=process.returncode,
            seconds=seconds,
            interrupted=interrupted and process.returncode != 0,
            summary=json.loads(text) if text.strip() else None,
            stderr=err.read_text(),
        )

    def run_ok(self, mode: str) -> RunOutcome:
        outcome = self.run(mode)
        assert outcome.returncode == 0, outcome.stderr[-3000:]
        assert outcome.summary["status"] == "success", outcome.summary
        assert outcome.summary["mode"] == mode, outcome.summary["mode_reason"]
        return outcome

    def change(self, seed: int) -> DirectorySpec:
        """Apply random changes to the directory; return the spec it held before."""
        before = self.server.spec
        after, changes = mutate(
            before, fraction_users=0.02, fraction_memberships=0.03, seed=seed,
            add_users=3, remove_users=3,
        )  # fmt: skip
        after = _renamed(after, {key: f"add{seed}x{key[3:]}" for key in changes.users_added})
        self.server.apply(before, after)
        return before

    def recover(self, context: str) -> None:
        """A plain incremental run alone must give exactly the directory's state."""
        outcome = self.run("incremental")
        assert outcome.returncode == 0, f"{context}: {outcome.stderr[-3000:]}"
        summary = outcome.summary
        assert summary["mode"] == "incremental", f"{context}: {summary['mode_reason']}"
        assert summary["status"] == "success", f"{context}: {summary}"
        self.assert_matches_directory(f"{context}, after the next incremental run")
        self.figures.recoveries += 1
        self.figures.recovery_seconds.append(outcome.seconds)

    def calibrate(self, seed: int) -> dict[str, float]:
        """The first run, then an uninterrupted incremental one after changes: how long a run
        of each mode lasts here (the span the interruptions are drawn from; the first run,
        which creates everything, is the longest full run)."""
        # The offline load stamped every entry with one second: changed a second later, the
        # directory gives the first run a newer marker, so that incremental runs do not read
        # every user again (timestamps are compared with >=).
        time.sleep(1.1)
        self.change(seed * 1000 + 1)
        lengths = {"full": self.run_ok("full").seconds}
        self.assert_matches_directory("first full run")
        self.change(seed * 1000)
        lengths["incremental"] = self.run_ok("incremental").seconds
        self.assert_matches_directory("uninterrupted incremental run")
        self.figures.run_seconds = lengths
        return lengths

    def interrupted_run(
        self,
        mode: str,
        interrupt: Callable[[subprocess.Popen], None],
        span: float,
        rng: random.Random,
        seed: int,
        resume: Callable[[], None] | None = None,
    ) -> tuple[RunOutcome, DirectorySpec, float]:
        """Change the directory, run ``mode`` and interrupt it at a random moment of ``span``
        seconds. A run that ended first (it converged: fine) is tried again after new changes,
        with half the span, up to four times. Returns the outcome, the spec before the last
        changes, and the moment. ``resume()`` follows every run (restarts what was stopped)."""
        for _attempt in range(4):
            before = self.change(seed)
            seed += 100_000
            moment = rng.uniform(0.0, span)
            outcome = self.run(mode, interrupt_after=moment, interrupt=interrupt)
            if resume is not None:
                resume()
            if outcome.interrupted:
                break
            self.figures.finished_first += 1
            self.assert_matches_directory(f"{mode} run that ended before its interruption")
            span = min(span, outcome.seconds) / 2
        self.figures.tries += 1
        if outcome.interrupted:
            self.figures.interrupted += 1
            wrong = self.differences()
            if wrong:
                self.figures.diverged += 1
                self.figures.diverged_users += len(wrong)
        return outcome, before, moment

    def try_interruptions(
        self,
        seed: int,
        tries: list[tuple[str, str]],
        kind: str,
        interrupt: Callable[[subprocess.Popen], None],
        check: Callable[[RunOutcome], None],
        resume: Callable[[], None] | None = None,
    ) -> None:
        """For each (mode, after) of ``tries``: an interrupted run of ``mode``; then, by
        ``after``, nothing, the directory's changes undone ("revert"), or more changes
        ("mutate"); then the next incremental run must give the directory's state."""
        rng = random.Random(seed)
        lengths = self.calibrate(seed)
        for number, (mode, after) in enumerate(tries):
            change_seed = seed * 1000 + 10 + number
            outcome, before, moment = self.interrupted_run(
                mode, interrupt, lengths[mode], rng, change_seed, resume
            )
            if outcome.interrupted:
                check(outcome)
            if after == "revert":
                self.server.apply(self.server.spec, before)
            elif after == "mutate":
                self.change(change_seed + 50)
            self.recover(
                f"seed {seed}, try {number}: {mode} run {kind} after {moment:.2f}s, then {after}"
            )


def _renamed(spec: DirectorySpec, keys: dict[str, str]) -> DirectorySpec:
    """``spec`` with users renamed (``mutate`` names new users ``new000000``... every time)."""
    users = [
        dataclasses.replace(u, key=keys[u.key], mail=f"{keys[u.key]}@example.test")
        if u.key in keys
        else u
        for u in spec.users
    ]
    groups = [
        dataclasses.replace(g, members=[keys.get(m, m) for m in g.members])
        if any(m in keys for m in g.members)
        else g
        for g in spec.groups
    ]
    return DirectorySpec(users=users, groups=groups)


def _kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)


def _crash_lab(site_db: Site, make_slapd, tmp_path: Path, seed: int) -> CrashLab:
    server = make_slapd(spec=synthetic(users=USERS, groups=GROUPS, depth=4, seed=seed, cycles=1))
    return CrashLab(site_db, server, tmp_path, Figures())


def _killed(outcome: RunOutcome) -> None:
    assert outcome.returncode == -signal.SIGKILL, outcome.stderr[-3000:]


def _failed(outcome: RunOutcome) -> None:
    assert outcome.returncode == 1, outcome.stderr[-3000:]
    assert outcome.summary["status"] == "failed", outcome.summary
    assert outcome.summary["error_kind"] in {"DirectoryUnavailable", "IncompleteRead"}, (
        outcome.summary
    )


def _report(lab: CrashLab, name: str) -> None:
    print(lab.figures.line(name))
    assert lab.figures.recoveries == lab.figures.tries == lab.figures.interrupted


@pytest.mark.parametrize("seed", [0])
def test_killed_runs_leave_a_state_the_next_incremental_run_repairs(
    site_db, make_slapd, tmp_path, seed
):
    lab = _crash_lab(site_db, make_slapd, tmp_path, seed)
    tries = [("incremental", "none"), ("full", "revert"), ("incremental", "revert")]
    lab.try_interruptions(seed, tries, "killed", _kill, _killed)
    _report(lab, f"kill[{site_db.vendor}, seed {seed}]")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_many_killed_runs_leave_a_state_the_next_incremental_run_repairs(
    site_db, make_slapd, tmp_path, seed
):
    lab = _crash_lab(site_db, make_slapd, tmp_path, seed)
    choose = random.Random(seed).choice
    tries = [(choose(["full", "incremental"]), choose(AFTER)) for _ in range(10)]
    lab.try_interruptions(seed, tries, "killed", _kill, _killed)
    _report(lab, f"kill[{site_db.vendor}, seed {seed}]")


@pytest.mark.parametrize("seed", [0])
def test_a_run_failed_by_a_stopped_directory_leaves_a_state_the_next_incremental_repairs(
    site_db, make_slapd, tmp_path, seed
):
    lab = _crash_lab(site_db, make_slapd, tmp_path, seed)

    def stop(_process: subprocess.Popen) -> None:
        lab.server.stop()

    # A full run reads users a page at a time between its writes: stopped there, it has
    # written memberships of changes that are then undone.
    tries = [("full", "revert"), ("incremental", "revert")]
    lab.try_interruptions(
        seed, tries, "failed (directory stopped)", stop, _failed, resume=lab.server.start
    )
    _report(lab, f"stop[{site_db.vendor}, seed {seed}]")


@pytest.mark.django_db
def test_memberships_written_by_a_failed_run_are_undone_with_the_directory_change(make_slapd):
    """Deterministic case of the property above: an incremental run adds a membership, then
    fails (the removals it found exceed LDAP_SYNC_REMOVAL_THRESHOLD); the directory change is
    undone. The stored member lists equal the directory again, so only the mark the failed run
    left makes the next incremental run find the membership it must take back."""
    loaded = synthetic(users=60, groups=8, depth=2, seed=4)
    server = make_slapd(spec=loaded)
    # Changed a second after the load, the directory gives the full run a marker newer than
    # the load's stamps, so that incremental runs read only what changes afterwards.
    spec = _renamed(loaded, {})
    spec.groups[0] = dataclasses.replace(spec.groups[0], description="changed after the load")
    leaves = [g for g in spec.groups if not any(m.startswith("group:") for m in g.members)]
    shrunk, joined = leaves[0], leaves[1]
    leavers = [m for m in shrunk.members if not m.startswith("group:")][:5]
    joiner = next(
        u.key for u in spec.users if not u.disabled and u.key not in joined.members + leavers
    )
    changed = DirectorySpec(
        users=spec.users,
        groups=[
            dataclasses.replace(g, members=[m for m in g.members if m not in leavers])
            if g is shrunk
            else dataclasses.replace(g, members=[*g.members, joiner])
            if g is joined
            else g
            for g in spec.groups
        ],
    )
    settings = slapd_settings(
        server,
        LDAP_SYNC_INCREMENTAL_TIME_OFFSET=0,
        LDAP_SYNC_INCREMENTAL_BETWEEN_FULL=-1,
        LDAP_SYNC_REMOVAL_THRESHOLD=3,
    )
    with override_settings(**settings):
        time.sleep(1.1)
        server.apply(loaded, spec)
        assert run_sync(SyncOptions(mode="full")).ok
        server.apply(spec, changed)
        failed = run_sync(SyncOptions(mode="incremental"))
        assert failed.error_kind == "RemovalRefused", failed.error
        assert joined.name in django_state()[joiner]["groups"]  # written before the refusal
        server.apply(changed, spec)  # the change is undone
        result = run_sync(SyncOptions(mode="incremental"))
    assert result.mode == "incremental" and result.ok, result.error
    assert_matches_spec(server)
    assert result.counts["memberships_recheck_all"] == 1
