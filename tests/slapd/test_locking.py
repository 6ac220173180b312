"""One batch run at a time, across processes: on the suite's database (SQLite or PostgreSQL).

The cross-process tests start real processes on a database they share with the test (a SQLite
file, or the PostgreSQL test database), so the lock is exercised exactly as two hosts would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from adldap_auth.locking import LockHeld, LockLost, LockOwner, RunLock, run_lock
from adldap_auth.models import SyncLock, SyncMarker, SyncRun
from adldap_auth.sync import SyncOptions, run_sync
from tests.helpers import slapd_settings
from tests.lab.generator import synthetic
from tests.site import Lines, wait_for

pytestmark = pytest.mark.django_db

#: A directory nobody answers on: a run that gets the lock fails at once, without any server.
NOWHERE = {
    "LDAP_SYNC_BIND_URI": "ldap://127.0.0.1:9",
    "LDAP_SYNC_BIND_DN": "cn=reader,dc=example,dc=test",
    "LDAP_SYNC_BIND_PASS": "x",
    "LDAP_SYNC_BIND_SEARCH": "dc=example,dc=test",
    "LDAP_SYNC_NETWORK_TIMEOUT": 1,
}


def first_line(process: subprocess.Popen, timeout: float = 60) -> str:
    """The next line a lock holder prints (waits for it)."""
    lines = getattr(process, "_lines", None)
    if lines is None:
        lines = process._lines = Lines(process)
    return lines.next(timeout)


# -- in one process ---------------------------------------------------------------------------


def test_second_lock_is_refused_with_who_and_since():
    with run_lock() as lock:
        assert lock.held
        with pytest.raises(LockHeld) as refused:
            RunLock().acquire()
    message = str(refused.value)
    assert message.startswith("another sync is running since ")
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
    assert refused.value.owner.pid == os.getpid()
    assert abs(refused.value.since - timezone.now()) < timedelta(minutes=1)


def test_released_lock_can_be_taken_again_and_release_is_idempotent():
    lock = RunLock()
    lock.acquire()
    lock.release()
    lock.release()
    with run_lock():
        pass
    assert not RunLock().probe().held


def test_probe_reports_the_holder():
    assert RunLock().probe().held is False
    with run_lock():
        state = RunLock().probe()
        assert state.held and state.owner.pid == os.getpid()


def test_owner_text_round_trips_and_tolerates_garbage():
    owner = LockOwner.current()
    assert LockOwner.parse(str(owner)) == owner
    assert LockOwner.parse("whatever").pid is None
    assert len(str(LockOwner(1, "h" * 300, "m", "t"))) <= 255


def test_a_dead_pid_is_recognised_only_on_the_same_machine():
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    here = LockOwner.current()
    assert LockOwner(finished.pid, here.host, here.machine, "x").is_dead()
    assert not LockOwner(os.getpid(), here.host, here.machine, "x").is_dead()
    # Another machine (or another pid namespace with the same host name): never judged.
    assert not LockOwner(finished.pid, here.host, "other-machine", "x").is_dead()


@pytest.mark.skipif(connection.vendor == "postgresql", reason="row lock (non-PostgreSQL) only")
def test_row_lock_of_a_dead_process_on_this_machine_is_taken_over_at_once():
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    here = LockOwner.current()
    dead = LockOwner(finished.pid, here.host, here.machine, "x")
    now = timezone.now()
    SyncLock.objects.create(name="syncldap", owner=str(dead), acquired_at=now, heartbeat_at=now)
    with run_lock() as lock:
        assert SyncLock.objects.get().owner == str(lock.owner)


@pytest.mark.skipif(connection.vendor == "postgresql", reason="row lock (non-PostgreSQL) only")
def test_row_lock_of_another_host_waits_for_lock_stale_after():
    other = LockOwner(4242, "elsewhere", "another-machine", "x")
    now = timezone.now()
    SyncLock.objects.create(name="syncldap", owner=str(other), acquired_at=now, heartbeat_at=now)
    with pytest.raises(LockHeld, match="pid 4242 on host elsewhere"):
        RunLock().acquire()
    SyncLock.objects.update(heartbeat_at=now - timedelta(hours=5))  # default: 6 hours
    with pytest.raises(LockHeld):
        RunLock().acquire()
    SyncLock.objects.update(heartbeat_at=now - timedelta(hours=7))
    with run_lock() as lock:
        assert SyncLock.objects.get().owner == str(lock.owner)
    SyncLock.objects.update(owner=str(other), heartbeat_at=timezone.now() - timedelta(seconds=90))
    with override_settings(**NOWHERE, LDAP_SYNC_LOCK_STALE_AFTER=60), run_lock():
        pass


def test_heartbeat_is_refreshed_and_a_lost_lock_is_reported():
    with run_lock() as lock:
        lock.heartbeat(force=True)
        # Another run takes the lock over (as after LDAP_SYNC_LOCK_STALE_AFTER): next beat fails.
        if connection.vendor == "postgresql":  # the lock's session is ended by the server
            with connection.cursor() as cursor:
                backend_pid = lock._session.connection.info.backend_pid
                cursor.execute("SELECT pg_terminate_backend(%s)", [backend_pid])
        else:
            SyncLock.objects.update(owner="1@elsewhere#m#t")
        with pytest.raises(LockLost):
            lock.heartbeat(force=True)
        assert not lock.held


def test_run_sync_refuses_at_once_and_records_nothing_while_the_lock_is_held():
    with (
        override_settings(**NOWHERE),
        run_lock(),
        pytest.raises(LockHeld, match="another sync is running since"),
    ):
        run_sync(SyncOptions(mode="full"))
    assert not SyncRun.objects.exists()


def test_command_exits_with_status_3_and_records_nothing_while_the_lock_is_held():
    with (
        override_settings(**NOWHERE),
        run_lock(),
        pytest.raises(CommandError, match="another sync is running since") as refused,
    ):
        call_command("syncldap", "full")
    assert refused.value.returncode == 3
    assert not SyncRun.objects.exists()


def test_a_run_closes_records_left_running_by_a_dead_run_and_releases_the_lock():
    orphan = SyncRun.objects.create(mode="full", started_at=timezone.now() - timedelta(hours=1))
    with override_settings(**NOWHERE):
        result = run_sync(SyncOptions(mode="full"))
    assert result.status == "failed" and result.error_kind == "DirectoryUnavailable"
    orphan.refresh_from_db()
    assert orphan.status == "failed" and orphan.error.startswith("interrupted")
    assert orphan.finished_at is not None
    assert not RunLock().probe().held


def test_status_lists_runs_markers_and_the_lock(capsys):
    now = timezone.now()
    SyncRun.objects.create(
        mode="full", server="ldap://dc1", status="success", started_at=now - timedelta(hours=2),
        finished_at=now - timedelta(hours=2) + timedelta(seconds=42),
        counts={"users_created": 7, "errors": 1},
    )  # fmt: skip
    SyncRun.objects.create(
        mode="incremental", server="ldap://dc1", status="failed", error="no directory server answered",
        started_at=now - timedelta(hours=1), finished_at=now - timedelta(hours=1),
    )  # fmt: skip
    SyncMarker.objects.create(server="ldap://dc1", timestamp="20260101000000Z", incrementals_since_full=3)
    call_command("syncldap", "--status")
    out = capsys.readouterr().out
    assert "lock: free" in out
    assert "incremental ldap://dc1: failed" in out and "error: no directory server answered" in out
    assert "full ldap://dc1: success, 42.0 s, users +7 ~0 -0, errors 1" in out
    assert "ldap://dc1: timestamp 20260101000000Z, 3 incrementals since the last full run" in out
    with run_lock():
        call_command("syncldap", "--status", "--json", "--last", "1")
    status = json.loads(capsys.readouterr().out)
    assert status["lock"]["held"] and status["lock"]["pid"] == os.getpid()
    assert [run["mode"] for run in status["runs"]] == ["incremental"]
    assert status["markers"][0]["incrementals_since_full"] == 3


def test_status_flags_a_running_record_without_a_lock_holder_as_interrupted(capsys):
    SyncRun.objects.create(mode="full", server="ldap://dc1", started_at=timezone.now())
    call_command("syncldap", "--status")
    assert "full ldap://dc1: interrupted" in capsys.readouterr().out


# -- across processes -------------------------------------------------------------------------


def test_lock_held_by_another_process_refuses_then_frees_when_it_is_killed(site_db):
    holder = site_db.start("-m", "tests.lock_holder", "hold")
    try:
        assert first_line(holder).startswith("ACQUIRED")
        refused = site_db.start("-m", "tests.lock_holder", "take")
        line = first_line(refused)
        assert refused.wait(30) == 3
        assert line.startswith("HELD another sync is running since ")
        assert f"pid {holder.pid} on host {socket.gethostname()}" in line
        holder.send_signal(signal.SIGKILL)  # no release, no cleanup
        holder.wait(30)
        taker = site_db.start("-m", "tests.lock_holder", "take")
        assert first_line(taker).startswith("ACQUIRED")
        assert taker.wait(30) == 0
    finally:
        holder.kill()
        holder.wait()


def test_a_silent_holder_is_taken_over_after_lock_stale_after(site_db, tmp_path):
    beat_file = tmp_path / "beat"
    holder = site_db.start(
        "-m", "tests.lock_holder", "hold", extra_env={"ADLDAP_BEAT_FILE": str(beat_file)}
    )
    try:
        assert first_line(holder).startswith("ACQUIRED")
        stale = {**NOWHERE, "LDAP_SYNC_LOCK_STALE_AFTER": 60}
        refused = site_db.start("-m", "tests.lock_holder", "take", settings=stale)
        assert first_line(refused).startswith("HELD") and refused.wait(30) == 3
        site_db.execute(
            "UPDATE adldap_auth_synclock SET heartbeat_at = %s WHERE name = %s",
            (timezone.now() - timedelta(seconds=120), "syncldap"),
        )
        taker = site_db.start("-m", "tests.lock_holder", "hold", settings=stale)
        try:
            assert first_line(taker).startswith("ACQUIRED")
            beat_file.touch()  # the old holder wakes up: its next heartbeat finds the lock gone
            assert first_line(holder).startswith("LOST")
            assert holder.wait(30) == 0
        finally:
            taker.kill()
            taker.wait()
    finally:
        holder.kill()
        holder.wait()


def site_state(site) -> tuple[set[str], dict[str, set[str]]]:
    """Synced usernames, and each one's Django group names, read with plain SQL."""
    rows = site.query(
        "SELECT u.username, g.name FROM auth_user u "
        "JOIN adldap_auth_directoryuser d ON d.user_id = u.id "
        "LEFT JOIN auth_user_groups ug ON ug.user_id = u.id "
        "LEFT JOIN auth_group g ON g.id = ug.group_id"
    )
    groups: dict[str, set[str]] = {}
    for username, group in rows:
        groups.setdefault(username, set())
        if group is not None:
            groups[username].add(group)
    return set(groups), groups


def test_two_syncldap_full_started_together_run_exactly_once(site_db, make_slapd, tmp_path):
    spec = synthetic(users=40, groups=6, seed=3)
    server = make_slapd(spec=spec)
    started, release = tmp_path / "started", tmp_path / "release"
    settings = slapd_settings(server, LDAP_SYNC_USER_CALLBACKS=["tests.site.hold_first_user"])
    env = {"ADLDAP_STARTED_FILE": str(started), "ADLDAP_RELEASE_FILE": str(release)}
    outputs = []
    processes = []
    for number in range(2):
        out, err = tmp_path / f"out{number}", tmp_path / f"err{number}"
        outputs.append((out, err))
        with open(out, "w") as stdout, open(err, "w") as stderr:
            processes.append(
                site_db.manage(
                    "syncldap", "full", "--json",
                    settings=settings, extra_env=env, stdout=stdout, stderr=stderr,
                )  # fmt: skip
            )
    try:
        # The winner stays inside its run (held by the callback) until the test releases it,
        # so the loser always meets the lock: it must end at once, by itself.
        wait_for(lambda: any(p.poll() is not None for p in processes), 120, "one run to end")
        loser = next(i for i, p in enumerate(processes) if p.poll() is not None)
        winner = 1 - loser
        wait_for(started.exists, 120, "the winner to be inside its run")
        assert processes[winner].poll() is None
        assert processes[loser].returncode == 3, outputs[loser][1].read_text()
        message = outputs[loser][1].read_text()
        assert "another sync is running since" in message
        assert f"pid {processes[winner].pid} on host {socket.gethostname()}" in message
        assert outputs[loser][0].read_text() == ""
        # Nothing recorded for the refused run: one record, the winner's, still running.
        assert site_db.query("SELECT status FROM adldap_auth_syncrun") == [("running",)]
    finally:
        release.touch()
        for process in processes:
            try:
                process.wait(120)
            finally:
                process.kill()
    assert processes[winner].returncode == 0, outputs[winner][1].read_text()
    summary = json.loads(outputs[winner][0].read_text())
    enabled = {user.key for user in spec.users if not user.disabled}
    assert summary["status"] == "success" and summary["counts"]["users_created"] == len(enabled)

    # The result is exactly one run's: one record, and the directory's state.
    runs = site_db.query("SELECT id, status, mode, counts FROM adldap_auth_syncrun")
    assert [(run_id, status, mode) for run_id, status, mode, _ in runs] == [
        (summary["run_id"], "success", "full")
    ]
    assert site_db.json_value(runs[0][3])["users_created"] == len(enabled)
    usernames, groups = site_state(site_db)
    assert usernames == enabled
    closure = spec.expected_groups()
    assert groups == {key: closure[key] for key in enabled}
    assert site_db.query("SELECT owner FROM adldap_auth_synclock") == [("",)]


def steal_the_lock(user, attributes, created, updated) -> None:
    """A user callback: another run takes the lock over (as after LDAP_SYNC_LOCK_STALE_AFTER)."""
    if connection.vendor == "postgresql":
        from adldap_auth.locking import advisory_key

        key = advisory_key("syncldap") & 0xFFFFFFFFFFFFFFFF
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND classid = %s AND objid = %s AND objsubid = 1",
                [key >> 32, key & 0xFFFFFFFF],
            )
    else:
        SyncLock.objects.update(owner="1@elsewhere#m#t", heartbeat_at=timezone.now())


@pytest.mark.django_db(transaction=True)  # callbacks and signals fire on commit
def test_a_run_that_loses_its_lock_stops_and_records_itself_as_failed(make_slapd, monkeypatch):
    monkeypatch.setattr("adldap_auth.locking.HEARTBEAT_INTERVAL", 0)
    server = make_slapd(spec=synthetic(users=12, groups=2, seed=5))
    hooks = slapd_settings(
        server,
        LDAP_SYNC_WRITE_BATCH_SIZE=5,
        LDAP_SYNC_USER_CALLBACKS=["tests.slapd.test_locking.steal_the_lock"],
    )
    with override_settings(**hooks):
        result = run_sync(SyncOptions(mode="full"))
    assert result.status == "failed" and result.error_kind == "LockLost", result.error
    assert "this run stops" in result.error
    run = SyncRun.objects.get()
    assert run.status == "failed" and run.finished_at is not None
    assert run.counts["users_seen"] == 5  # stopped after the first batch
    assert not SyncMarker.objects.exists()
