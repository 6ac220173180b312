"""Directory names broader than Django's defaults, against a real slapd (issue 13, #4 and #5).

- #4: a username that Django's validators refuse (``o'neil``, a valid ``sAMAccountName``) but
  that fits the column and is unique is synced, with a warning in the run's problems, and the
  person logs in, before and after a batch run; ``LDAP_SYNC_USERNAME_STRICT`` skips it instead.
  Invisible format characters are refused either way.
- #5: internationalised e-mail addresses (RFC 6531) are stored as the directory holds them;
  only a value that is not an address at all is cleared, with a warning.

OpenLDAP's ``mail`` has IA5String syntax: slapd refuses ``zoë.müller@example.com`` with
``invalidAttributeSyntax``, whereas Active Directory's ``mail`` is a Unicode string. So these
tests fill the e-mail field from ``mailAddress`` (a Directory String of the lab's msuser
schema), as a site may map any attribute to it.
"""

from __future__ import annotations

import logging

import ldap
import pytest
from django.contrib.auth import authenticate, get_user_model
from django.test import override_settings

from adldap_auth.models import DirectoryUser
from adldap_auth.sync import SyncOptions, run_sync
from tests.backend_helpers import login_settings
from tests.helpers import django_state, slapd_settings
from tests.lab.spec import LAB_PASSWORD, DirectorySpec, GroupSpec, UserSpec

pytestmark = pytest.mark.django_db

User = get_user_model()

ONEIL = "o'neil"
REFUSED = (
    'username "o\'neil" is refused by the validators of username; synced anyway '
    "(LDAP_SYNC_USERNAME_STRICT is False)"
)
#: uid -> the mailAddress the directory holds for it
MAILS = {
    "zoe": "zoë.müller@example.com",
    "ana": "ana@bücher.example",
    "jose": "José.Núñez@Bücher.Example",
    "notmail": "Zoë Müller",  # not an address at all: cleared
}
MAIL_ATTRIBUTES = {
    "uid": "username",
    "givenName": "first_name",
    "sn": "last_name",
    "mailAddress": "email",
}


def spec() -> DirectorySpec:
    users = [
        UserSpec(ONEIL, "Shaun", "O'Neil", password=LAB_PASSWORD),
        UserSpec("alice", "Alice", "Archer", password=LAB_PASSWORD),
        UserSpec("zoe", "Zoë", "Müller", password=LAB_PASSWORD),
        UserSpec("ana", "Ana", "Bücher"),
        UserSpec("jose", "José", "Núñez"),
        UserSpec("notmail", "Not", "Mail"),
    ]
    groups = [
        GroupSpec("Team", members=[ONEIL, "zoe"]),
        GroupSpec("Company", members=["group:Team", "alice"]),
    ]
    return DirectorySpec(users, groups)


def start(make_slapd):
    """The lab server with the spec, and each user's ``mailAddress`` from :data:`MAILS`."""
    server = make_slapd(spec())
    conn = server.admin_connection()
    for key, mail in MAILS.items():
        conn.modify_s(server.user_dn(key), [(ldap.MOD_ADD, "mailAddress", [mail.encode()])])
    return server


def settings_for(server, **more):
    return login_settings(slapd_settings(server, LDAP_SYNC_USER_ATTRIBUTES=MAIL_ATTRIBUTES), **more)


def groups_of(user) -> set[str]:
    return set(user.groups.values_list("name", flat=True))


# -- #4 usernames ---------------------------------------------------------------------------------


def test_username_django_refuses_is_synced_with_a_warning_and_logs_in(make_slapd, client):
    server = start(make_slapd)
    with override_settings(**settings_for(server)):
        result = run_sync(SyncOptions(mode="full"))
        assert result.status == "success", result.problems
        assert result.counts.get("users_skipped", 0) == 0
        oneil_problems = [p for p in result.problems if ONEIL in p]
        assert oneil_problems == [f"user {server.user_dn(ONEIL)}: {REFUSED}"]

        oneil = User.objects.get(username=ONEIL)
        assert (oneil.first_name, oneil.last_name) == ("Shaun", "O'Neil")
        assert groups_of(oneil) == {"Team", "Company"}
        assert DirectoryUser.objects.get(user=oneil).dn == server.user_dn(ONEIL)

        # A second run keeps reporting it (every run's record says so) and changes nothing.
        again = run_sync(SyncOptions(mode="full"))
        assert [p for p in again.problems if ONEIL in p] == oneil_problems
        assert again.counts.get("users_updated", 0) == 0

        # The person logs in: the backend, and Django's login view with the name as typed.
        assert authenticate(username=ONEIL, password=LAB_PASSWORD).pk == oneil.pk
        assert authenticate(username=ONEIL, password="wrong") is None
        response = client.post("/login/", {"username": "O'Neil", "password": LAB_PASSWORD})
        assert response.status_code == 302, response.content[-500:]
        assert client.get("/home/").content.decode() == f"user={ONEIL}"
    assert User.objects.filter(username__iexact=ONEIL).count() == 1


def test_username_django_refuses_logs_in_before_any_batch_run(make_slapd, caplog):
    server = start(make_slapd)
    caplog.set_level(logging.WARNING, logger="adldap_auth")
    with override_settings(**settings_for(server)):
        user = authenticate(username=ONEIL, password=LAB_PASSWORD)
        assert user is not None and user.username == ONEIL
        assert groups_of(user) == {"Team", "Company"}
        assert any(REFUSED in r.getMessage() for r in caplog.records), caplog.text
        after_login = django_state()[ONEIL]
        assert run_sync(SyncOptions(mode="full")).status == "success"
    assert User.objects.get(username=ONEIL).pk == user.pk
    assert django_state()[ONEIL] == after_login


def test_username_strict_skips_and_refuses_the_login(make_slapd):
    server = start(make_slapd)
    with override_settings(**settings_for(server, LDAP_SYNC_USERNAME_STRICT=True)):
        result = run_sync(SyncOptions(mode="full"))
        assert result.status == "partial"
        assert result.counts["users_skipped"] == 1
        assert [p for p in result.problems if ONEIL in p] == [
            f'user {server.user_dn(ONEIL)} skipped: username "o\'neil" is refused by the '
            "validators of username (LDAP_SYNC_USERNAME_STRICT)"
        ]
        assert authenticate(username=ONEIL, password=LAB_PASSWORD) is None
        assert authenticate(username="alice", password=LAB_PASSWORD) is not None
    assert not User.objects.filter(username=ONEIL).exists()


@pytest.mark.parametrize("strict", [False, True])
def test_invisible_format_characters_are_refused_whatever_the_setting(make_slapd, strict):
    """Without strict validation the validators no longer stop look-alike names; the mapper
    does: a right-to-left override, which slapd stores as any UTF-8, is refused."""
    server = start(make_slapd)
    evil = "admin\u202etxt.exe"
    dn = f"uid={evil},{server.user_dn('alice').split(',', 1)[1]}"
    server.admin_connection().add_s(dn, [
        ("objectClass", [b"inetOrgPerson"]), ("uid", [evil.encode()]),
        ("cn", [b"Evil"]), ("sn", [b"Evil"]),
    ])  # fmt: skip
    with override_settings(**settings_for(server, LDAP_SYNC_USERNAME_STRICT=strict)):
        result = run_sync(SyncOptions(mode="full"))
    assert result.counts["users_skipped"] == 1 + strict  # strict: o'neil too
    assert [p for p in result.problems if "admin" in p] == [
        f"user {dn} skipped: username contains invisible format or separator characters "
        "(Unicode Cf, Zl, Zp)"
    ]
    assert not User.objects.filter(username=evil.lower()).exists()
    assert User.objects.filter(username=ONEIL).exists() is not strict


# -- #5 e-mail addresses --------------------------------------------------------------------------


def test_internationalised_mail_is_stored_as_the_directory_holds_it(make_slapd):
    server = start(make_slapd)
    with override_settings(**settings_for(server)):
        result = run_sync(SyncOptions(mode="full"))
        assert result.ok, result.error
        mail_problems = [p for p in result.problems if "mail" in p]
        assert mail_problems == [
            f"user {server.user_dn('notmail')}: attribute mailaddress is not a valid e-mail "
            "address; email cleared"
        ]
        emails = dict(User.objects.values_list("username", "email"))
        for key in ("zoe", "ana", "jose"):
            assert emails[key] == MAILS[key], key
        assert emails["notmail"] == ""

        # A login writes the same value; so does a login that creates the user.
        assert authenticate(username="zoe", password=LAB_PASSWORD).email == MAILS["zoe"]
        User.objects.filter(username="zoe").delete()
        zoe = authenticate(username="zoe", password=LAB_PASSWORD)
        assert zoe.email == MAILS["zoe"]
        assert User.objects.get(pk=zoe.pk).email == MAILS["zoe"]
