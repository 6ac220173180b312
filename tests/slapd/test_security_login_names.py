"""Security (issue 14, finding 10): login names with control characters, and names the
directory holds twice.

- A name with a control character (``alice\\n``, ``alice\\t``...), a format character (a
  zero-width space, a bidi override) or a line separator is refused *before* any stripping and
  before any search: OpenLDAP's matching rules (RFC 4518) fold or drop such characters, so the
  search would otherwise find alice. Other white space left at either end once plain spaces
  are stripped (a no-break space) is refused too. Plain spaces around a name are still
  stripped (docs/login.md).
- A name that matches two entries logs nobody in and logs a WARNING with the name and the
  count.

Against the lab slapd (alice has the lab password).
"""

from __future__ import annotations

import logging

import ldap.modlist
import pytest
from django.contrib.auth import authenticate, get_user_model
from django.test import override_settings

from adldap_auth.backends import ADLDAPBackend
from adldap_auth.login import normalize_login_name
from tests.backend_helpers import BACKEND, BindSpy, login_settings
from tests.helpers import SearchSpy, slapd_settings
from tests.lab import ldif
from tests.lab.spec import LAB_PASSWORD, DirectorySpec, UserSpec

pytestmark = pytest.mark.django_db

User = get_user_model()

#: Typed names that must not log alice in, and must not reach the directory.
REFUSED = [
    "alice\n",
    "alice\t",
    "\talice",
    "alice\r\n",
    " alice\n ",
    "alice\x0b",
    "alice\x85",  # NEXT LINE, a C1 control
    "alice\u200b",  # ZERO WIDTH SPACE
    "\u202ealice",  # RIGHT-TO-LEFT OVERRIDE
    "alice\u2028",  # LINE SEPARATOR
    "alice\u00a0",  # NO-BREAK SPACE at the end
    "\u3000alice",  # IDEOGRAPHIC SPACE at the start
    "EXAMPLE\\alice\n",
    "EXAMPLE\\\talice",
]


def spec() -> DirectorySpec:
    users = [
        UserSpec("alice", "Alice", "Archer", mail="alice@example.test", password=LAB_PASSWORD),
        UserSpec("dup", "Dup", "One", password=LAB_PASSWORD),
        UserSpec("other", "Other", "Person", ou="Sales"),  # makes ou=Sales
    ]
    return DirectorySpec(users, [])


def site(server) -> dict:
    # ModelBackend left out: it would look the raw name up in the database, not our subject.
    return login_settings(slapd_settings(server), AUTHENTICATION_BACKENDS=[BACKEND])


@pytest.mark.parametrize("typed", REFUSED, ids=repr)
def test_names_with_control_or_invisible_characters_never_reach_the_directory(
    slapd_lab, typed
):
    with (
        override_settings(**site(slapd_lab)),
        SearchSpy().active() as searches,
        BindSpy().active() as binds,
    ):
        assert authenticate(username=typed, password=LAB_PASSWORD) is None
        assert ADLDAPBackend().populate_user(typed) is None
    assert searches.calls == [] and binds.who == []
    assert not User.objects.exists()


def test_plain_spaces_are_still_stripped_as_documented(slapd_lab):
    with override_settings(**site(slapd_lab)):
        for typed in ["alice", "  alice ", "EXAMPLE\\ alice", " alice@example.test "]:
            user = authenticate(username=typed, password=LAB_PASSWORD)
            assert user is not None and user.username == "alice", repr(typed)
    assert [normalize_login_name(n) for n in ("alice\n", " alice ", "ali ce")] == [
        "",
        "alice",
        "ali ce",
    ]


def test_a_name_the_directory_holds_twice_logs_nobody_in_and_says_why(make_slapd, caplog):
    server = make_slapd(spec())
    twin = UserSpec("dup", "Dup", "Two", ou="Sales", password=LAB_PASSWORD)
    twin_dn = f"uid=dup,ou=Sales,{ldif.PEOPLE_DN}"
    admin = server.admin_connection()
    admin.add_s(twin_dn, ldap.modlist.addModlist(ldif.user_attrs(twin)))
    admin.unbind_s()
    caplog.set_level(logging.WARNING)
    with override_settings(**site(server)):
        assert authenticate(username="dup", password=LAB_PASSWORD) is None
        assert authenticate(username="DUP@example.test", password=LAB_PASSWORD) is None
    assert not User.objects.exists()
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "adldap_auth.login"
    ]
    assert len(warnings) == 2, warnings
    for typed, text in zip(["dup", "DUP@example.test"], warnings, strict=True):
        assert f"directory login of {typed!r} refused: the name matches 2 directory entries" in text
        assert twin_dn.lower() in text
