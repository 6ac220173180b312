"""A lost run lock stops its holder before its next write, and two runs never write at once.

On PostgreSQL the lock is an advisory lock held by a database session of the run's own: when
that session is ended (``pg_terminate_backend``, a proxy or network cut) while the process runs
on, the run must notice before its next batch, stop and record itself failed ("lock lost"); a
run started meanwhile waits for it to stop, or exits 3 (the documented "another sync is
running" refusal), never with a raw database error. On every database the lock is checked
before each batch, not only at the (throttled) heartbeat.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from django.db import connection
from django.test import override_settings

from adldap_auth.locking import LockHeld, RunLock, advisory_key
from adldap_auth.models import SyncLock, SyncMarker, SyncRun
from adldap_auth.sync import SyncOptions, run_sync
from tests.helpers import slapd_settings
from tests.lab.generator import synthetic
from tests.site import Lines, wait_for
from tests.slapd.test_locking import site_state

postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="the advisory lock's session: PostgreSQL pass (ADLDAP_TEST_DB=postgres)",
)


def end_the_lock_session() -> int:
    """``pg_terminate_backend`` of the session holding the sync's advisory lock; how many."""
    key = advisory_key("syncldap") & 0xFFFFFFFFFFFFFFFF
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND classid = %s AND objid = %s AND objsubid = 1",
            [key >> 32, key & 0xFFFFFFFF],
        )
        return len(cursor.fetchall())


_taken: list[bool] = []


def take_the_lock_away(user, attributes, created, updated) -> None:
    """A user callback (first batch): the lock is lost, once. PostgreSQL: its session is
    ended; elsewhere, another run's owner is written on the row (a takeover)."""
    if _taken:
        return
    _taken.append(True)
    if connection.vendor == "postgresql":
        end_the_lock_session()
    else:
        SyncLock.objects.update(owner="1@elsewhere#m#t")


@pytest.mark.django_db(transaction=True)  # user callbacks run on commit
def test_a_lost_lock_stops_the_run_before_its_next_batch(make_slapd):
    """However recent the last heartbeat (it is written every 30 s), the lock is checked
    before each batch's writes."""
    _taken.clear()
    server = make_slapd(spec=synthetic(users=30, groups=3, seed=7))
    settings = slapd_settings(
        server,
        LDAP_SYNC_WRITE_BATCH_SIZE=5,
        LDAP_SYNC_USER_CALLBACKS=["tests.system.test_crash_lock.take_the_lock_away"],
    )
    with override_settings(**settings):
        result = run_sync(SyncOptions(mode="full"))
    assert result.status == "failed" and result.error_kind == "LockLost", result.error
    assert result.error.startswith("lock lost: ") and "this run stops" in result.error
    assert result.counts["users_seen"] == 5  # the first batch only
    run = SyncRun.objects.get()
    assert run.status == "failed" and run.error == result.error
    assert not SyncMarker.objects.exists()
    # The lock is left to whoever took it: on PostgreSQL nobody, the row cleared on stopping.
    taker = "" if connection.vendor == "postgresql" else "1@elsewhere#m#t"
    assert SyncLock.objects.get().owner == taker


def save_a_marker(user, attributes, created, updated) -> None:
    """A user callback: another run saves this server's marker while this one runs."""
    from adldap_auth.conf import get_config

    uri = get_config().bind_uris[0]
    SyncMarker.objects.get_or_create(server=uri, defaults={"timestamp": "20260101000000Z"})


@pytest.mark.django_db(transaction=True)
def test_a_marker_saved_by_another_run_meanwhile_ends_as_lock_lost_not_a_database_error(
    make_slapd,
):
    server = make_slapd(spec=synthetic(users=8, groups=2, seed=8))
    settings = slapd_settings(
        server, LDAP_SYNC_USER_CALLBACKS=["tests.system.test_crash_lock.save_a_marker"]
    )
    with override_settings(**settings):
        result = run_sync(SyncOptions(mode="full"))
    assert result.status == "failed" and result.error_kind == "LockLost", result.error
    assert result.error == (
        f"lock lost: another run saved the incremental marker of {server.uri} during this "
        "run; this run stops"
    )
    assert SyncMarker.objects.get().timestamp == "20260101000000Z"  # the other run's, kept


@postgresql_only
def test_a_run_started_while_the_holder_lost_its_session_waits_then_refuses(
    site_db, tmp_path, monkeypatch
):
    """The holder (another process) still runs: the new run waits LOST_HOLDER_WAIT for it to
    stop, then refuses with the documented message; once the holder noticed, it gets in."""
    monkeypatch.setattr("adldap_auth.locking.advisory.LOST_HOLDER_WAIT", 1.5)
    beat_file = tmp_path / "beat"
    holder = site_db.start(
        "-m", "tests.lock_holder", "hold", extra_env={"ADLDAP_BEAT_FILE": str(beat_file)}
    )
    try:
        lines = Lines(holder)
        assert lines.next(60).startswith("ACQUIRED")
        assert end_the_lock_session() == 1  # the holder's process runs on
        started = time.monotonic()
        with pytest.raises(LockHeld) as refused:
            RunLock().acquire()
        assert time.monotonic() - started >= 1.5
        assert str(refused.value).startswith("another sync is running since ")
        assert f"pid {holder.pid} on host {socket.gethostname()}" in str(refused.value)
        beat_file.touch()  # the holder checks its lock (as before its next batch)
        assert lines.next(30).startswith("LOST lock lost: ")
        assert holder.wait(30) == 0
        lock = RunLock()
        lock.acquire()  # at once: the holder cleared the row when it stopped
        lock.release()
    finally:
        holder.kill()
        holder.wait()


@postgresql_only
def test_ending_the_lock_session_mid_run_stops_it_and_the_next_run_never_overlaps(
    site_db, make_slapd, tmp_path
):
    spec = synthetic(users=40, groups=6, seed=3)
    server = make_slapd(spec=spec)
    started, release = tmp_path / "started", tmp_path / "release"
    settings = slapd_settings(
        server,
        LDAP_SYNC_WRITE_BATCH_SIZE=5,
        LDAP_SYNC_USER_CALLBACKS=["tests.site.hold_first_user"],
    )
    out: dict[str, Path] = {}
    processes = {}
    for name, env in (
        ("first", {"ADLDAP_STARTED_FILE": str(started), "ADLDAP_RELEASE_FILE": str(release)}),
        ("second", {}),
    ):
        out[name], err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        with open(out[name], "w") as stdout, open(err, "w") as stderr:
            processes[name] = site_db.manage(
                "syncldap", "full", "--json",
                settings=settings, extra_env=env, stdout=stdout, stderr=stderr,
            )  # fmt: skip
        if name == "first":
            # The first run is inside its first batch (held by the callback) when its lock's
            # session is ended; the second run starts then.
            wait_for(started.exists, 120, "the first run to be inside its run")
            assert end_the_lock_session() == 1
    first, second = processes["first"], processes["second"]
    try:
        wait_for(
            lambda: "waiting for it to stop" in (tmp_path / "second.err").read_text(),
            120,
            "the second run to wait for the first",
        )
        # The second run waits: it has not started (no record of its own), it did not exit.
        assert second.poll() is None
        assert [s for (s,) in site_db.query("SELECT status FROM adldap_auth_syncrun")] == [
            "running"
        ]
    finally:
        release.touch()
        for process in (first, second):
            try:
                process.wait(120)
            finally:
                process.kill()
    first_err, second_err = (
        (tmp_path / "first.err").read_text(),
        (tmp_path / "second.err").read_text(),
    )
    assert first.returncode == 1, first_err
    assert "sync failed: lock lost: " in first_err
    assert second.returncode == 0, second_err
    for text in (first_err, second_err):
        assert "duplicate key" not in text and "Traceback" not in text
    runs = site_db.query(
        "SELECT id, status, error, counts, started_at, finished_at FROM adldap_auth_syncrun "
        "ORDER BY id"
    )
    (_, status1, error1, counts1, _, finished1), (id2, status2, _, _, started2, _) = runs
    assert status1 == "failed" and error1.startswith("lock lost: "), error1
    assert site_db.json_value(counts1)["users_seen"] == 5  # stopped before its second batch
    assert started2 > finished1  # never alongside
    summary = json.loads(out["second"].read_text())
    assert summary["run_id"] == id2 and status2 == summary["status"] == "success"
    usernames, groups = site_state(site_db)
    enabled = {user.key for user in spec.users if not user.disabled}
    closure = spec.expected_groups()
    assert usernames == enabled
    assert groups == {key: closure[key] for key in enabled}
    assert site_db.query("SELECT owner FROM adldap_auth_synclock") == [("",)]
