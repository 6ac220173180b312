"""Failed runs are recorded as failed, and signal receivers cannot break a run or a login
(issue 14, finding 8), against a lab slapd.

- Any exception that ends a run (a setting the system checks let through, as the Celery task
  never runs them; a callback path that does not import; an undecodable value that the run
  does not expect; a bug) leaves its ``SyncRun`` "failed" with the error's type and message,
  never "running"; ``run_sync`` returns the failed result instead of raising, and the lock is
  free for the next run. ``manage.py syncldap`` then exits 1 with "sync failed: ..." (a
  ``CommandError``, not a traceback). Ctrl-C is recorded as failed too, then raised again.
- Receivers are called with ``send_robust``: one that raises is logged at ERROR with its
  traceback, the other receivers still run, and the run goes on. A failing ``user_synced`` or
  ``user_removed`` receiver is a problem of the run ("partial"); a failing ``run_finished``
  receiver changes nothing of the already saved record; a login still succeeds.
"""

from __future__ import annotations

import logging

import ldap
import pytest
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command
from django.test import override_settings

from adldap_auth import signals
from adldap_auth.login import clear_group_cache
from adldap_auth.models import SyncRun
from adldap_auth.sync import SyncOptions, run_sync
from tests.backend_helpers import login_settings
from tests.helpers import slapd_settings
from tests.lab import ldif
from tests.lab.spec import LAB_PASSWORD, DirectorySpec, GroupSpec, UserSpec

pytestmark = pytest.mark.django_db

User = get_user_model()


def spec() -> DirectorySpec:
    users = [
        UserSpec("ann", "Ann", "Alder", mail="ann@example.test", password=LAB_PASSWORD),
        UserSpec("ben", "Ben", "Birch", mail="ben@example.test"),
        UserSpec("cid", "Cid", "Cedar", mail="cid@example.test"),
    ]
    return DirectorySpec(users=users, groups=[GroupSpec("Team", members=["ann", "ben"])])


@pytest.fixture(autouse=True)
def _fresh_login_cache():
    clear_group_cache()
    yield
    clear_group_cache()


@pytest.fixture
def connect():
    """Connect a receiver to a signal for the test only."""
    connected = []

    def connect(signal, receiver):
        signal.connect(receiver, weak=False)
        connected.append((signal, receiver))

    yield connect
    for signal, receiver in connected:
        signal.disconnect(receiver)


def interrupting_callback(user, attributes, created, updated) -> None:
    """A user callback standing for Ctrl-C in the middle of a run."""
    raise KeyboardInterrupt


def assert_failed(result, error: str) -> SyncRun:
    """The run failed, said why, and its record says the same (never "running")."""
    assert result.status == "failed" and not result.ok
    assert error in result.error, result.error
    record = SyncRun.objects.get(pk=result.run_id)
    assert record.status == "failed" and record.error == result.error
    assert record.finished_at is not None
    assert not SyncRun.objects.filter(status="running").exists()
    return record


def assert_next_run_succeeds(settings: dict) -> None:
    """The failed run let the lock go: the next one runs (and is recorded) normally."""
    fixed = {k: v for k, v in settings.items() if k != "LDAP_SYNC_USER_CALLBACKS"}
    with override_settings(**fixed):
        assert run_sync(SyncOptions(mode="full")).status == "success"


# -- exceptions that end a run ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("wrong", "error"),
    [
        ({"LDAP_SYNC_BIND_PAGESIZE": "lots"}, "adldap_auth.E005: LDAP_SYNC_BIND_PAGESIZE"),
        (
            {"LDAP_SYNC_USER_ATTRIBUTES": {"uid": "username", "sn": "no_such_field"}},
            "adldap_auth.E015: LDAP_SYNC_USER_ATTRIBUTES maps 'sn' to 'no_such_field'",
        ),
        (
            {"LDAP_SYNC_USER_CALLBACKS": ["tests.no_such_module.on_user"]},
            "adldap_auth.E020: LDAP_SYNC_USER_CALLBACKS has 'tests.no_such_module.on_user'",
        ),
    ],
    ids=["setting-type", "setting-value", "callback-path"],
)
def test_a_run_ended_by_a_wrong_setting_is_recorded_as_failed(make_slapd, caplog, wrong, error):
    """The settings' errors (the system check's, same ids) end the run before the directory is
    contacted: a failed record, one log line without a traceback."""
    server = make_slapd(spec=spec())
    settings = slapd_settings(server, **wrong)
    with override_settings(**settings):
        result = run_sync(SyncOptions(mode="full"))  # returns; does not raise
    assert_failed(result, error)
    assert result.error_kind == "ConfigError" and result.server == ""
    [logged] = [r for r in caplog.records if r.name == "adldap_auth.sync"]
    assert logged.levelno == logging.ERROR and error in logged.getMessage()
    assert not logged.exc_info
    assert not User.objects.exists()
    good = slapd_settings(server)
    with override_settings(**good):
        assert run_sync(SyncOptions(mode="full")).status == "success"


def test_a_removal_callback_path_that_does_not_import_fails_the_run(make_slapd):
    server = make_slapd(spec=spec())
    with override_settings(**slapd_settings(server)):
        assert run_sync(SyncOptions(mode="full")).status == "success"
    server.apply(server.spec, DirectorySpec(users=server.spec.users[:2], groups=server.spec.groups))
    wrong = slapd_settings(
        server, LDAP_SYNC_REMOVED_USER_CALLBACKS=["adldap_auth.callbacks.removed_user_archive"]
    )
    with override_settings(**wrong):
        result = run_sync(SyncOptions(mode="full", force_removals=True))
    assert_failed(result, 'Module "adldap_auth.callbacks" does not define')
    assert result.error_kind == "ConfigError"
    assert User.objects.get(username="cid").is_active  # nobody was removed


def test_an_undecodable_member_key_skips_that_entry_only(make_slapd):
    """memberUid groups name users by username; a username attribute (here ``audio``, whose
    syntax lets slapd store any bytes) that is not UTF-8 ended the run with an exception. Now
    that entry is skipped and reported; the others are synced."""
    server = make_slapd(spec=spec())
    admin = server.admin_connection()
    for key, value in [("ann", b"ann"), ("ben", "b\xe9n".encode("latin-1")), ("cid", b"cid")]:
        admin.modify_s(server.user_dn(key), [(ldap.MOD_ADD, "audio", [value])])
    admin.add_s(
        f"cn=Posix,{ldif.GROUPS_DN}",
        [("objectClass", [b"posixGroup"]), ("cn", [b"Posix"]), ("gidNumber", [b"5000"]),
         ("memberUid", [b"ann", b"cid"])],
    )  # fmt: skip
    settings = slapd_settings(
        server,
        LDAP_SYNC_GROUP_MEMBER_ATTRIBUTE="memberUid",
        LDAP_SYNC_GROUP_FILTER="(objectClass=posixGroup)",
        LDAP_SYNC_USER_ATTRIBUTES={"audio": "username", "sn": "last_name"},
    )
    with override_settings(**settings):
        result = run_sync(SyncOptions(mode="full"))
    assert result.ok and result.status == "partial", result.error
    assert any("not valid UTF-8" in problem for problem in result.problems), result.problems
    posix = Group.objects.get(name="Posix")
    assert {u.username for u in posix.user_set.all()} == {"ann", "cid"}


@pytest.mark.django_db(transaction=True)  # callbacks and signals fire on commit
def test_ctrl_c_is_recorded_as_failed_then_raised(make_slapd):
    server = make_slapd(spec=spec())
    path = f"{__name__}.interrupting_callback"
    settings = slapd_settings(server, LDAP_SYNC_USER_CALLBACKS=[path])
    with override_settings(**settings), pytest.raises(KeyboardInterrupt):
        run_sync(SyncOptions(mode="full"))
    record = SyncRun.objects.get()
    assert record.status == "failed" and record.error == "interrupted (KeyboardInterrupt)"
    assert record.finished_at is not None
    assert_next_run_succeeds(settings)


def test_syncldap_exits_1_with_a_clear_message_instead_of_a_traceback(make_slapd):
    server = make_slapd(spec=spec())
    wrong = slapd_settings(server, LDAP_SYNC_USER_CALLBACKS=["tests.no_such_module.on_user"])
    with override_settings(**wrong), pytest.raises(CommandError) as stopped:
        call_command("syncldap", "full", verbosity=0)
    assert stopped.value.returncode == 1
    message = str(stopped.value)
    assert message.startswith("sync failed: the LDAP_SYNC_* settings have 1 error(s)")
    assert (
        "adldap_auth.E020: LDAP_SYNC_USER_CALLBACKS has 'tests.no_such_module.on_user'" in message
    )
    assert "Traceback" not in message
    assert SyncRun.objects.get().status == "failed"


def test_an_unexpected_error_never_records_the_bind_password(make_slapd):
    server = make_slapd(spec=spec())
    password = server.sync_settings()["LDAP_SYNC_BIND_PASS"]
    wrong = slapd_settings(server, LDAP_SYNC_USER_CALLBACKS=[f"tests.{password}.on_user"])
    with override_settings(**wrong):
        result = run_sync(SyncOptions(mode="full"))
    assert_failed(result, "'tests.********.on_user'")
    assert password not in SyncRun.objects.get().error


# -- receivers that raise ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # callbacks and signals fire on commit
def test_a_user_synced_receiver_that_raises_never_stops_the_run(make_slapd, connect, caplog):
    seen = []

    def failing(sender, user, **kwargs):
        if user.username == "ben":
            raise RuntimeError("receiver bug")

    connect(signals.user_synced, failing)
    connect(signals.user_synced, lambda sender, user, **kw: seen.append(user.username))
    server = make_slapd(spec=spec())
    with override_settings(**slapd_settings(server)):
        result = run_sync(SyncOptions(mode="full"))
    assert result.status == "partial"
    assert SyncRun.objects.get(pk=result.run_id).status == "partial"
    [problem] = result.problems
    assert problem.startswith("receiver tests.slapd.test_security_run_records.")
    assert problem.endswith("failing of signal user_synced failed: RuntimeError: receiver bug")
    assert sorted(seen) == ["ann", "ben", "cid"]  # the other receiver saw every user
    assert set(User.objects.values_list("username", flat=True)) == {"ann", "ben", "cid"}
    [logged] = [r for r in caplog.records if r.name == "adldap_auth.signals"]
    assert logged.levelno == logging.ERROR and logged.exc_info[0] is RuntimeError


@pytest.mark.django_db(transaction=True)  # callbacks and signals fire on commit
def test_a_user_removed_receiver_that_raises_never_stops_the_removals(make_slapd, connect):
    def failing(sender, user, reason, **kwargs):
        raise RuntimeError(f"cannot archive {user.username}")

    connect(signals.user_removed, failing)
    server = make_slapd(spec=spec())
    with override_settings(**slapd_settings(server)):
        assert run_sync(SyncOptions(mode="full")).status == "success"
        team = GroupSpec("Team", members=["ann"])
        server.apply(server.spec, DirectorySpec(users=server.spec.users[:1], groups=[team]))
        result = run_sync(SyncOptions(mode="full", force_removals=True))
    assert result.status == "partial" and result.counts["users_removed"] == 2
    assert sorted(p.rsplit(": ", 1)[1] for p in result.problems) == [
        "cannot archive ben", "cannot archive cid"
    ]  # fmt: skip
    assert not User.objects.get(username="ben").is_active
    assert not User.objects.get(username="cid").is_active


def test_a_run_finished_receiver_that_raises_leaves_the_record_as_the_run_ended(
    make_slapd, connect, caplog
):
    def failing(sender, run, summary, **kwargs):
        raise RuntimeError("monitoring is down")

    connect(signals.run_finished, failing)
    server = make_slapd(spec=spec())
    with override_settings(**slapd_settings(server)):
        result = run_sync(SyncOptions(mode="full"))
        assert result.status == "success" and result.problems == []
        assert SyncRun.objects.get(pk=result.run_id).status == "success"
        # a failed run too: recorded as failed, the receiver's error only logged
        with override_settings(LDAP_SYNC_USER_CALLBACKS=["tests.no_such_module.on_user"]):
            failed = run_sync(SyncOptions(mode="full"))
    assert_failed(failed, "adldap_auth.E020")
    logged = [r for r in caplog.records if r.name == "adldap_auth.signals"]
    assert len(logged) == 2
    assert all("signal run_finished failed: RuntimeError: monitoring is down" in r.getMessage()
               for r in logged)  # fmt: skip


@pytest.mark.django_db(transaction=True)  # callbacks and signals fire on commit
def test_a_login_succeeds_whatever_a_user_synced_receiver_raises(make_slapd, connect, caplog):
    def failing(sender, user, **kwargs):
        raise RuntimeError("receiver bug")

    connect(signals.user_synced, failing)
    server = make_slapd(spec=spec())
    with override_settings(**login_settings(slapd_settings(server))):
        user = authenticate(username="ann", password=LAB_PASSWORD)
    assert user is not None and user.username == "ann" and user.email == "ann@example.test"
    assert any(
        r.name == "adldap_auth.signals" and r.levelno == logging.ERROR for r in caplog.records
    )
