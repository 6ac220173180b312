"""Security (issue 14, findings 7 and 9): an unusable CA file, and ``LDAP_SYNC_REQUIRE_TLS``
enforced where connections are made.

- **An unusable CA file** (a truncated PEM) fails a batch run with "CA file ... unusable",
  recorded as failed (never left "running"), without a traceback; directory logins return
  None with a warning, and local users still log in through ``ModelBackend``.
- **LDAP_SYNC_REQUIRE_TLS** is enforced by ``DirectorySession.open`` (batch runs, the Celery
  task, the admin's resync, the deploy check) and by the login backend's connections (whatever
  ``AUTH_LDAP_SERVER_URI`` says): a clear-text ldap:// URI without StartTLS is refused before
  anything is sent, so no bind (and no password) ever reaches the server.

Against a lab slapd with TLS (ldaps:// and StartTLS).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import CommandError, call_command
from django.test import override_settings

from adldap_auth.backends import ADLDAPBackend
from adldap_auth.conf import ConfigError
from adldap_auth.directory import DirectoryTLSError
from adldap_auth.directory.connection import DirectorySession
from adldap_auth.models import SyncRun
from adldap_auth.sync import SyncOptions, connection_config, run_sync
from tests.backend_helpers import BindSpy, login_settings
from tests.helpers import slapd_settings
from tests.lab.spec import LAB_PASSWORD, DirectorySpec, UserSpec

pytestmark = pytest.mark.django_db

User = get_user_model()

LOCAL_PASSWORD = "Local-Passw0rd-5e1c"


def spec() -> DirectorySpec:
    return DirectorySpec([UserSpec("alice", "Alice", "Archer", password=LAB_PASSWORD)], [])


def truncated_copy(ca_file: str | Path, directory: Path) -> Path:
    """The lab CA certificate cut in the middle, as an interrupted copy leaves it."""
    pem = Path(ca_file).read_text()
    broken = directory / "truncated-ca.pem"
    broken.write_text(pem[: len(pem) // 2])
    return broken


def tls_settings(server, tls: str, **more) -> dict:
    return slapd_settings(server, **{**server.sync_settings(tls=tls), **more})


# -- an unusable CA file ---------------------------------------------------------------------


@pytest.mark.parametrize("tls", ["ldaps", "starttls"])
def test_an_unusable_ca_file_fails_the_run_clearly_and_records_it(make_slapd, tmp_path, tls):
    server = make_slapd(spec(), tls=True)
    broken = truncated_copy(server.ca_file, tmp_path)
    expected = f"CA file {broken} unusable: holds a truncated PEM certificate"
    with override_settings(**tls_settings(server, tls, LDAP_SYNC_CA_FILE=str(broken))):
        result = run_sync(SyncOptions(mode="full"))
        assert result.status == "failed" and result.error_kind == "DirectoryTLSError"
        assert expected in result.error
        record = SyncRun.objects.get(pk=result.run_id)
        assert record.status == SyncRun.STATUS_FAILED and expected in record.error
        assert record.finished_at is not None
        with pytest.raises(CommandError) as failed:
            call_command("syncldap", "full")
        assert expected in str(failed.value) and failed.value.returncode == 1
    assert not SyncRun.objects.filter(status=SyncRun.STATUS_RUNNING).exists()
    assert not User.objects.exists()


@pytest.mark.parametrize("tls", ["ldaps", "starttls"])
def test_an_unusable_ca_file_fails_directory_logins_only(make_slapd, tmp_path, client, caplog, tls):
    server = make_slapd(spec(), tls=True)
    broken = truncated_copy(server.ca_file, tmp_path)
    User.objects.create_user("local", password=LOCAL_PASSWORD)
    caplog.set_level(logging.WARNING)
    settings = login_settings(tls_settings(server, tls, LDAP_SYNC_CA_FILE=str(broken)))
    with override_settings(**settings):
        assert authenticate(username="alice", password=LAB_PASSWORD) is None
        assert ADLDAPBackend().populate_user("alice") is None
        # The login page works: a local user logs in through ModelBackend.
        response = client.post("/login/", {"username": "local", "password": LOCAL_PASSWORD})
        assert response.status_code == 302 and client.get("/home/").content == b"user=local"
        response = client.post("/login/", {"username": "alice", "password": LAB_PASSWORD})
        assert response.status_code == 200  # the form again: no HTTP 500
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"CA file {broken} unusable" in text for text in warnings), warnings
    assert not User.objects.filter(username="alice").exists()


# -- LDAP_SYNC_REQUIRE_TLS -------------------------------------------------------------------


def test_require_tls_refuses_a_clear_text_uri_in_batch_runs(make_slapd):
    server = make_slapd(spec(), tls=True)
    clear = slapd_settings(server, LDAP_SYNC_REQUIRE_TLS=True)
    with override_settings(**clear), BindSpy().active() as binds:
        result = run_sync(SyncOptions(mode="full"))
    # Refused by the settings' validation (the check's E027) before any connection.
    assert result.status == "failed" and result.error_kind == "ConfigError"
    assert "adldap_auth.E027" in result.error and server.uri in result.error
    assert binds.who == []  # nothing was sent: no bind, no password
    assert not User.objects.exists()
    # The same server with StartTLS, or over ldaps://, is accepted.
    for tls in ("starttls", "ldaps"):
        with override_settings(**tls_settings(server, tls, LDAP_SYNC_REQUIRE_TLS=True)):
            assert run_sync(SyncOptions(mode="full")).status == "success"


def test_require_tls_refuses_a_clear_text_uri_among_tls_ones(make_slapd):
    """A clear-text URI later in the list is refused too: failover must not decide. Checked
    by the settings, and again by the session itself (whatever config it is given)."""
    server = make_slapd(spec(), tls=True)
    sync = tls_settings(server, "ldaps", LDAP_SYNC_REQUIRE_TLS=True)
    with override_settings(**sync):
        valid = connection_config()
    sync["LDAP_SYNC_BIND_URI"] = [server.ldaps_uri, server.uri]
    with override_settings(**sync), pytest.raises(ConfigError, match="E027"):
        connection_config()
    mixed = dataclasses.replace(valid, uris=(server.ldaps_uri, server.uri))
    with BindSpy().active() as binds, pytest.raises(DirectoryTLSError, match="clear-text URI"):
        DirectorySession.open(mixed)
    assert binds.who == []


def test_require_tls_refuses_clear_text_logins(make_slapd, caplog):
    server = make_slapd(spec(), tls=True)
    caplog.set_level(logging.WARNING)
    clear = login_settings(slapd_settings(server, LDAP_SYNC_REQUIRE_TLS=True))
    with override_settings(**clear), BindSpy().active() as binds:
        assert authenticate(username="alice", password=LAB_PASSWORD) is None
        assert ADLDAPBackend().populate_user("alice") is None
    assert binds.who == []  # neither the service account's nor alice's password was sent
    assert any("adldap_auth.E027" in r.getMessage() for r in caplog.records)
    assert not User.objects.exists()


def test_require_tls_covers_a_site_s_own_auth_ldap_server_uri(make_slapd):
    """The login checks the URI it really uses: an explicit ``AUTH_LDAP_SERVER_URI`` wins
    over ``LDAP_SYNC_BIND_URI`` for the login path, and is refused when it is clear text."""
    server = make_slapd(spec(), tls=True)
    sync = tls_settings(server, "ldaps", LDAP_SYNC_REQUIRE_TLS=True)
    with override_settings(**login_settings(sync)):
        assert authenticate(username="alice", password=LAB_PASSWORD) is not None
    overridden = login_settings(sync, AUTH_LDAP_SERVER_URI=server.uri)
    with override_settings(**overridden), BindSpy().active() as binds:
        assert authenticate(username="alice", password=LAB_PASSWORD) is None
    assert binds.who == []
    # With StartTLS on that clear-text URI, the login goes through.
    with override_settings(**overridden, AUTH_LDAP_START_TLS=True):
        assert authenticate(username="alice", password=LAB_PASSWORD) is not None
