"""Security: verified TLS, no secret anywhere, a warning for an administrator bind account,
and photo files that stay inside MEDIA_ROOT.

- **TLS** is verified by default (``LDAP_SYNC_REQUIRE_CERT = True``): ldaps:// and StartTLS with
  a certificate from an unknown CA, or for another host name, are refused with an error that
  names the cause (libldap with GnuTLS only says "Can't contact LDAP server"). The system checks
  warn about clear-text ldap:// (``W001``), and make it an error under
  ``LDAP_SYNC_REQUIRE_TLS`` (``E027``).
- **Secrets**: the bind password, and the passwords of users who log in, never appear in logs,
  exceptions, run records, ``syncldap --json`` output, system check messages or admin pages;
  one test gathers all of these over successful and failed runs and logins, and greps them.
- **Privileged bind account**: ``manage.py check --deploy`` binds and warns (``W009``) when the
  account is in Domain Admins, Enterprise Admins, Schema Admins or BUILTIN\\Administrators
  (AD's rootDSE ``tokenGroups``); every batch run logs the same warning. Tested against Samba
  with the Administrator account and the reader account.
- **Photos** are written under MEDIA_ROOT whatever the username or the name template.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import tempfile
import traceback
from datetime import datetime
from pathlib import Path

import ldap
import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core import checks
from django.core.management import CommandError, call_command
from django.test import override_settings

from adldap_auth import checks as adchecks
from adldap_auth.conf import DEFAULTS
from adldap_auth.directory import DirectoryError, DirectoryTLSError
from adldap_auth.directory.connection import DirectorySession, privileged_groups
from adldap_auth.mapping import photo_filename
from adldap_auth.models import SyncRun
from adldap_auth.sync import SyncOptions, connection_config, run_sync
from tests.backend_helpers import login_settings
from tests.helpers import samba_settings, slapd_settings
from tests.lab import ldif
from tests.lab.certs import Certs, make_wrong_ca
from tests.lab.spec import DirectorySpec, GroupSpec, UserSpec, jpeg
from tests.unit.test_checks import prefixed

pytestmark = pytest.mark.django_db

User = get_user_model()


def small_spec() -> DirectorySpec:
    users = [
        UserSpec("alice", "Alice", "Archer", mail="alice@example.test", photo=jpeg(1)),
        UserSpec("bob", "Bob", "Baker", mail="bob@example.test"),
    ]
    return DirectorySpec(users=users, groups=[GroupSpec("Team", members=["alice", "bob"])])


# -- TLS ------------------------------------------------------------------------------------------


def test_certificates_are_verified_unless_told_otherwise():
    assert DEFAULTS["REQUIRE_CERT"] is True
    with override_settings(**prefixed({"BIND_URI": "ldaps://dc1.example.test"})):
        config = connection_config()
    assert config.require_cert is True and config.ca_file is None


def cert_for_another_host(certs: Certs, directory: Path) -> Certs:
    """A server certificate signed by the lab CA, but for ``wrong-host.example`` only."""
    directory.mkdir(parents=True, exist_ok=True)
    key, csr, cert = directory / "wrong.key", directory / "wrong.csr", directory / "wrong.pem"
    ext = directory / "wrong.ext"
    ext.write_text("extendedKeyUsage=serverAuth\nsubjectAltName=DNS:wrong-host.example\n")
    run = {"cwd": directory, "check": True, "capture_output": True}
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj",
         "/CN=wrong-host.example", "-keyout", str(key), "-out", str(csr)], **run,
    )  # fmt: skip
    key.chmod(0o600)
    subprocess.run(
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(certs.ca_file),
         "-CAkey", str(certs.ca_file.with_suffix(".key")), "-CAcreateserial", "-days", "30",
         "-extfile", str(ext), "-out", str(cert)], **run,
    )  # fmt: skip
    return Certs(ca_file=certs.ca_file, cert_file=cert, key_file=key)


def failed_tls_run(settings: dict) -> object:
    with override_settings(**settings):
        result = run_sync(SyncOptions(mode="full"))
    assert result.status == "failed" and result.error_kind == "DirectoryTLSError", result.error
    assert SyncRun.objects.get(pk=result.run_id).error == result.error
    assert not User.objects.exists()
    return result


@pytest.mark.parametrize("tls", ["ldaps", "starttls"])
def test_a_certificate_from_an_unknown_ca_is_refused_with_a_clear_error(
    make_slapd, tmp_path, tls
):
    server = make_slapd(spec=small_spec(), tls=True)
    wrong_ca = make_wrong_ca(tmp_path)
    settings = slapd_settings(server, **server.sync_settings(tls=tls))
    settings["LDAP_SYNC_CA_FILE"] = str(wrong_ca)
    result = failed_tls_run(settings)
    assert "TLS failed: the certificate of 127.0.0.1 is not accepted: " in result.error
    assert "certificate" in result.error.split("not accepted: ")[1]
    assert f"(trusted: CA file {wrong_ca})" in result.error


def test_without_a_ca_file_the_system_cas_are_used_and_the_lab_ca_is_not_one(make_slapd):
    server = make_slapd(spec=small_spec(), tls=True)
    settings = slapd_settings(server, **server.sync_settings(tls="ldaps"))
    del settings["LDAP_SYNC_CA_FILE"]
    result = failed_tls_run(settings)
    assert "(trusted: the system's CA certificates)" in result.error


@pytest.mark.parametrize("tls", ["ldaps", "starttls"])
def test_a_certificate_for_another_host_name_is_refused_with_a_clear_error(
    make_slapd, slapd_certs, tmp_path, tls
):
    server = make_slapd(spec=small_spec(), certs=cert_for_another_host(slapd_certs, tmp_path))
    settings = slapd_settings(server, **server.sync_settings(tls=tls))
    result = failed_tls_run(settings)
    assert "the certificate of 127.0.0.1 is not accepted: IP address mismatch" in result.error


def test_turning_verification_off_is_what_lets_a_wrong_certificate_through(
    make_slapd, tmp_path
):
    server = make_slapd(spec=small_spec(), tls=True)
    settings = slapd_settings(server, **server.sync_settings(tls="ldaps"))
    settings.update(LDAP_SYNC_CA_FILE=str(make_wrong_ca(tmp_path)), LDAP_SYNC_REQUIRE_CERT=False)
    with override_settings(**settings):
        assert run_sync(SyncOptions(mode="full")).status == "success"
        assert "adldap_auth.W003" in {m.id for m in checks.run_checks(tags=[adchecks.TAG])}


@pytest.mark.samba
@pytest.mark.parametrize("tls", ["ldaps", "starttls"])
def test_samba_with_a_wrong_ca_is_refused_and_with_the_lab_ca_accepted(
    samba_dc, wrong_ca_file, tls
):
    more = {"LDAP_SYNC_CA_FILE": str(wrong_ca_file)}
    if tls == "ldaps":
        more["LDAP_SYNC_BIND_URI"] = samba_dc.ldaps_uri
    else:
        more["LDAP_SYNC_START_TLS"] = True
    with override_settings(**samba_settings(samba_dc, **more)):
        with pytest.raises(DirectoryTLSError) as refused:
            DirectorySession.open(connection_config())
        assert "the certificate of 127.0.0.1 is not accepted" in str(refused.value)
        good_ca = override_settings(LDAP_SYNC_CA_FILE=str(samba_dc.ca_file))
        with good_ca, DirectorySession.open(connection_config()) as session:
            assert session.root_dse().is_ad


def test_clear_text_is_a_warning_and_an_error_when_tls_is_required():
    base = {
        "LDAP_SYNC_BIND_URI": ["ldap://dc1.example.test", "ldaps://dc2.example.test"],
        "LDAP_SYNC_BIND_DN": "cn=reader,dc=example,dc=test",
        "LDAP_SYNC_BIND_PASS": "x",
        "LDAP_SYNC_BIND_SEARCH": "dc=example,dc=test",
    }

    def found(**more):
        with override_settings(**base, **more):
            return [(m.id, m.level) for m in checks.run_checks(tags=[adchecks.TAG])]

    assert found() == [("adldap_auth.W001", checks.WARNING)]
    assert found(LDAP_SYNC_REQUIRE_TLS=True) == [("adldap_auth.E027", checks.ERROR)]
    assert found(LDAP_SYNC_START_TLS=True) == []
    assert found(LDAP_SYNC_START_TLS=True, LDAP_SYNC_REQUIRE_TLS=True) == []


# -- secrets ---------------------------------------------------------------------------------------

BIND_SECRET = "S3cret-Bind-Pa55-7e1f"
WRONG_BIND_SECRET = "S3cret-Wrong-Pa55-9c2d"
LOGIN_SECRET = "S3cret-Login-Pa55-1a2b"
WRONG_LOGIN_SECRET = "S3cret-Login-Wrong-4b7a"
SECRETS = (BIND_SECRET, WRONG_BIND_SECRET, LOGIN_SECRET, WRONG_LOGIN_SECRET)
SYNC_DN = f"cn=svc-sync,{ldif.BASE_DN}"


def exception_text(error: BaseException) -> str:
    """Everything an exception shows: its traceback with the causes and contexts, its args."""
    text = "".join(traceback.format_exception(error))
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text += repr(error) + repr(error.args) + str(error)
        error = error.__cause__ or error.__context__
    return text


def test_no_password_in_logs_exceptions_records_json_checks_or_admin_pages(
    make_slapd, client, caplog, tmp_path
):
    spec = DirectorySpec(
        users=[
            UserSpec("alice", "Alice", "Archer", password=LOGIN_SECRET, photo=jpeg(3)),
            *[UserSpec(f"u{i}", "U", f"Ser {i}") for i in range(6)],
        ],
        groups=[GroupSpec("Team", members=["alice", "u0"])],
    )
    server = make_slapd(spec=spec, tls=True)
    server.admin_connection().add_s(
        SYNC_DN,
        [("objectClass", [b"person"]), ("cn", [b"svc-sync"]), ("sn", [b"sync"]),
         ("userPassword", [BIND_SECRET.encode()])],
    )  # fmt: skip
    good = slapd_settings(
        server, LDAP_SYNC_BIND_DN=SYNC_DN, LDAP_SYNC_BIND_PASS=BIND_SECRET,
        LDAP_SYNC_REMOVAL_THRESHOLD=1, LDAP_SYNC_NETWORK_TIMEOUT=1,
    )  # fmt: skip
    wrong = {**good, "LDAP_SYNC_BIND_PASS": WRONG_BIND_SECRET}
    texts: list[str] = []  # everything a person or a log collector could see
    for logger in (None, "adldap_auth", "django_auth_ldap", "django"):
        caplog.set_level(logging.DEBUG, logger=logger)

    def command(settings: dict, *args: str) -> None:
        out, err = io.StringIO(), io.StringIO()
        with override_settings(**settings):
            try:
                call_command("syncldap", *args, stdout=out, stderr=err)
            except CommandError as error:
                texts.append(exception_text(error))
        texts.extend([out.getvalue(), err.getvalue()])

    # Runs: a good one, wrong password, server down, TLS refused, incomplete read, removals
    # refused; in JSON and as text; then the status.
    command(good, "full", "--json")
    command(good, "full", "-v", "2")
    command(wrong, "full", "--json")
    command(wrong, "full")
    command({**good, "LDAP_SYNC_BIND_URI": "ldap://127.0.0.1:9"}, "full", "--json")
    tls_wrong = {**good, **server.sync_settings(tls="ldaps"),
                 "LDAP_SYNC_CA_FILE": str(make_wrong_ca(tmp_path))}  # fmt: skip
    tls_wrong.update(LDAP_SYNC_BIND_DN=SYNC_DN, LDAP_SYNC_BIND_PASS=BIND_SECRET)
    command(tls_wrong, "full", "--json")
    conn = server.admin_connection()
    conn.modify_s(
        "olcDatabase={1}mdb,cn=config",
        [(ldap.MOD_REPLACE, "olcSizeLimit", [b"size.soft=3 size.hard=3"])],
    )
    command(good, "full", "--json")
    conn.modify_s(
        "olcDatabase={1}mdb,cn=config", [(ldap.MOD_REPLACE, "olcSizeLimit", [b"unlimited"])]
    )
    for key in ("u3", "u4", "u5"):
        conn.delete_s(server.user_dn(key))
    command(good, "full", "--json")
    command(good, "--status", "--json")
    command(good, "--status")
    statuses = {run.status for run in SyncRun.objects.all()}
    assert statuses == {"success", "failed"}
    kinds = set(SyncRun.objects.values_list("error", flat=True))
    assert any("invalid credentials" in k for k in kinds)
    assert any("TLS failed" in k for k in kinds)
    assert any("stopped early" in k for k in kinds)
    assert any("would be removed" in k for k in kinds)

    # Exceptions raised by the directory layer itself, and its configuration object.
    with override_settings(**wrong):
        with pytest.raises(DirectoryError) as refused:
            DirectorySession.open(connection_config())
        texts.append(exception_text(refused.value))
        texts.append(repr(connection_config()) + str(connection_config()))
        # System checks, the deploy check included (it binds, and fails).
        messages = checks.run_checks(include_deployment_checks=True, tags=[adchecks.TAG])
        assert "adldap_auth.W010" in {m.id for m in messages}
        texts.extend(f"{m} {m.hint}" for m in messages)

    # Logins: right and wrong passwords, through authenticate() and the login view, and one
    # while the directory is down.
    with override_settings(**login_settings(good)):
        assert authenticate(username="alice", password=LOGIN_SECRET) is not None
        assert authenticate(username="alice", password=WRONG_LOGIN_SECRET) is None
        for password in (LOGIN_SECRET, WRONG_LOGIN_SECRET):
            response = client.post("/login/", {"username": "alice", "password": password})
            texts.append(response.content.decode())
            client.logout()
    with override_settings(**login_settings({**good, "LDAP_SYNC_BIND_URI": "ldap://127.0.0.1:9"})):
        assert authenticate(username="alice", password=LOGIN_SECRET) is None

    # Admin pages: the runs, each run, the users, a synced user; the "sync now" action with a
    # wrong bind password and with the right one.
    staff = User.objects.create_superuser("operator", password="operator-pw")
    client.force_login(staff)
    alice = User.objects.get(username="alice")
    with override_settings(**login_settings(wrong)):
        response = client.post(
            "/admin/auth/user/",
            {"action": "sync_users_now", "_selected_action": [alice.pk]},
            follow=True,
        )
        texts.append(response.content.decode())
        assert "invalid credentials" in response.content.decode()
    with override_settings(**login_settings(good)):
        pages = ["/admin/adldap_auth/syncrun/", "/admin/auth/user/",
                 f"/admin/auth/user/{alice.pk}/change/", "/admin/adldap_auth/syncmarker/"]  # fmt: skip
        pages += [f"/admin/adldap_auth/syncrun/{pk}/change/"
                  for pk in SyncRun.objects.values_list("pk", flat=True)]  # fmt: skip
        for page in pages:
            response = client.get(page)
            assert response.status_code == 200, page
            texts.append(response.content.decode())

    # Run records, and every log record with its arguments and traceback.
    texts.append(json.dumps(list(SyncRun.objects.values()), default=str))
    formatter = logging.Formatter()
    for record in caplog.records:
        texts.append(record.getMessage() + repr(record.args))
        if record.exc_info:
            texts.append(formatter.formatException(record.exc_info))

    corpus = "\n".join(texts)
    assert "invalid credentials" in corpus and SYNC_DN in corpus  # the errors are there...
    for secret in SECRETS:  # ...the secrets are not
        assert secret not in corpus, secret


# -- a privileged bind account -----------------------------------------------------------------------


def test_privileged_groups_are_recognised_by_rid_and_builtin_sid():
    domain = "S-1-5-21-1-2-3"
    assert privileged_groups([f"{domain}-513", "S-1-5-32-545", "S-1-5-11"]) == []
    assert privileged_groups([f"{domain}-512", f"{domain}-519", f"{domain}-518",
                              "S-1-5-32-544"]) == [  # fmt: skip
        "BUILTIN\\Administrators", "Domain Admins", "Enterprise Admins", "Schema Admins",
    ]  # fmt: skip
    assert privileged_groups(["S-1-5-32-512", "S-1-5-21-512", "S-1-5-21-1-2-3-5120"]) == []


DEPLOY_IDS = {"adldap_auth.W009", "adldap_auth.W010"}


def deploy_messages(**settings) -> list:
    """The messages of the deploy check (the other checks' W001 etc. left out)."""
    with override_settings(**settings):
        found = checks.run_checks(include_deployment_checks=True, tags=[adchecks.TAG])
    return [m for m in found if m.id in DEPLOY_IDS]


ADMIN_GROUPS = "BUILTIN\\Administrators, Domain Admins, Enterprise Admins, Schema Admins"


@pytest.mark.samba
def test_check_deploy_warns_when_the_bind_account_is_the_domain_administrator(samba_clean):
    dc = samba_clean
    admin = samba_settings(dc, LDAP_SYNC_BIND_DN=dc.admin_dn, LDAP_SYNC_BIND_PASS=dc.admin_password)
    assert deploy_messages(**admin) == [
        checks.Warning(
            f"LDAP_SYNC_BIND_DN {dc.admin_dn!r} is a member of {ADMIN_GROUPS}: the sync only "
            "reads the directory, yet this account can change all of it, and its password sits "
            "in the site's settings.",
            hint="Bind with a least-privilege account (any domain user can read users and "
            f"groups), or remove this account from {ADMIN_GROUPS}.",
            obj="LDAP_SYNC_BIND_DN",
            id="adldap_auth.W009",
        )
    ]
    # The same through manage.py, and never without --deploy (no bind at all then).
    err = io.StringIO()
    with override_settings(**admin):
        call_command("check", "--deploy", "--tag", adchecks.TAG, stderr=err, stdout=io.StringIO())
        assert "adldap_auth.W009" in err.getvalue() and dc.admin_password not in err.getvalue()
        assert not DEPLOY_IDS & {m.id for m in checks.run_checks(tags=[adchecks.TAG])}
    # The reader account: nothing to say.
    assert deploy_messages(**samba_settings(dc)) == []


@pytest.mark.samba
def test_a_batch_run_with_an_administrator_account_logs_a_warning(samba_clean, caplog):
    dc = samba_clean
    scope = {
        "LDAP_SYNC_USER_SEARCH": f"OU=Engineering,{dc.lab_dn}",
        "LDAP_SYNC_GROUP": False,
    }
    caplog.set_level(logging.WARNING, logger="adldap_auth")
    with override_settings(**samba_settings(dc, **scope)):
        reader_run = run_sync(SyncOptions(mode="full", dry_run=True))
    assert reader_run.status == "success" and reader_run.problems == []
    admin = samba_settings(
        dc, LDAP_SYNC_BIND_DN=dc.admin_dn, LDAP_SYNC_BIND_PASS=dc.admin_password, **scope
    )
    with override_settings(**admin):
        result = run_sync(SyncOptions(mode="full", dry_run=True))
    expected = (
        f"the bind account {dc.admin_dn} is a member of {ADMIN_GROUPS}: a sync only reads the "
        "directory; bind with a least-privilege reader account instead"
    )
    assert result.status == "success" and result.problems == [expected]
    assert result.counts["warnings"] == 1
    assert expected in [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_no_privilege_warning_outside_active_directory(make_slapd):
    server = make_slapd(spec=small_spec())
    settings = slapd_settings(server)
    assert deploy_messages(**settings) == []
    with override_settings(**settings):
        assert run_sync(SyncOptions(mode="full")).problems == []


def test_the_deploy_check_reports_a_failed_bind_without_the_password(make_slapd):
    server = make_slapd(spec=small_spec())
    messages = deploy_messages(**slapd_settings(server, LDAP_SYNC_BIND_PASS=WRONG_BIND_SECRET))
    assert [m.id for m in messages] == ["adldap_auth.W010"]
    assert "invalid credentials" in messages[0].msg
    assert WRONG_BIND_SECRET not in f"{messages[0].msg} {messages[0].hint}"


def test_the_deploy_check_leaves_broken_settings_to_the_other_checks():
    broken = {"LDAP_SYNC_BIND_URI": 42, "LDAP_SYNC_BIND_DN": "x", "LDAP_SYNC_BIND_PASS": "x",
              "LDAP_SYNC_BIND_SEARCH": "dc=example,dc=test"}  # fmt: skip
    with override_settings(**broken):
        assert adchecks.check_bind_privileges() == []


# -- photos stay inside MEDIA_ROOT -------------------------------------------------------------------

NASTY_USERNAMES = [
    "../../etc/passwd", "..", "...", "....", "/absolute", "..\\..\\windows", "a/../../b",
    ".hidden", "~root", "x" * 300, "\x00nul", "\u202eevil", "con", " ",
]  # fmt: skip
TEMPLATES = [
    "{username}_{uuid4}.jpg", "../{username}.jpg", "../../../{username}/{uuid4}.jpg",
    "/etc/{username}", "%Y/../{username}", "..", "{username}",
]  # fmt: skip


@pytest.mark.parametrize("template", TEMPLATES)
def test_photo_file_names_never_leave_their_directory(template):
    now = datetime(2024, 1, 2, 3, 4, 5)
    root = Path(tempfile.gettempdir(), "media", "photos")
    for username in NASTY_USERNAMES:
        name = photo_filename(template, username, now)
        assert name and "/" not in name and "\\" not in name and "\x00" not in name, name
        assert not name.startswith("."), name
        assert (root / name).resolve().parent == root.resolve(), name


def test_a_run_writes_photos_under_media_root_whatever_the_username_and_template(
    make_slapd, settings, tmp_path
):
    """``..`` and ``...`` pass Django's username validator; a template that tries to climb out
    is refused by the system check (``adldap_auth.E024``) and so by the run, which then writes
    nothing; with the default template the photos land under MEDIA_ROOT."""
    media = tmp_path / "site" / "media"
    media.mkdir(parents=True)
    settings.MEDIA_ROOT = str(media)
    users = [UserSpec(name, "Dot", "Dot", photo=jpeg(i)) for i, name in enumerate(["..", "..."])]
    server = make_slapd(spec=DirectorySpec(users=users, groups=[]))
    template = "../../../{username}/../{uuid4}.jpg"
    with override_settings(**slapd_settings(server, LDAP_SYNC_USER_THUMBNAILPHOTO_NAME=template)):
        assert "adldap_auth.E024" in {m.id for m in checks.run_checks(tags=[adchecks.TAG])}
        refused = run_sync(SyncOptions(mode="full"))
    assert (refused.status, refused.error_kind) == ("failed", "ConfigError")
    assert "E024" in refused.error and not [p for p in tmp_path.rglob("*") if p.is_file()]
    with override_settings(**slapd_settings(server)):
        result = run_sync(SyncOptions(mode="full"))
    assert result.status == "success" and result.counts["photos_written"] == 2
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 2
    assert all(p.parent == media / "photos" for p in files), files
    assert {p.read_bytes() for p in files} == {jpeg(0), jpeg(1)}
