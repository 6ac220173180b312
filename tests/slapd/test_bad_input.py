"""The bad-input corpus: one table, one row per kind of bad directory data.

Every row runs the same scenario against a fresh lab slapd: a full run over a small, sound
directory (the baseline); then the row's input is written to the directory; then a second full
run. Each row states the message the run must report, with the entry's DN, and which users may
change; the test then checks that the run completed and that nothing else changed (every other
user's row, profile, photo, identity link and groups are exactly as after the baseline).

What happens to bad data (the rules of :mod:`adldap_auth.mapping`):

- an entry that cannot be a user (no usable username) is skipped and reported (``errors``);
- a value that cannot be used is left out and reported (``warnings``), the rest of the entry is
  synced: a field whose new value is not UTF-8, or a photo that is rejected, keeps its current
  value (a transient decoding problem never wipes data); a value longer than its field is
  truncated; an invalid e-mail address clears the field;
- odd but valid data (a DN full of special characters, members outside the scope, a huge group,
  a membership cycle) is synced correctly, without any message.

Settings of the wrong type or value, for every setting, are the system checks' table in
``tests/unit/test_checks.py`` (``CASES``, ``test_setting_value``); :func:`test_a_wrong_setting_stops_
syncldap_before_it_touches_anything` shows that ``manage.py syncldap`` runs those checks first.
"""

from __future__ import annotations

import io
import logging
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ldap
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings
from ldap.dn import escape_dn_chars

from adldap_auth.mapping import normalize_dn
from adldap_auth.models import DirectoryUser, SyncRun
from adldap_auth.sync import SyncOptions, run_sync
from tests.helpers import slapd_settings
from tests.lab import ldif
from tests.lab.spec import DirectorySpec, GroupSpec, UserSpec, jpeg

pytestmark = pytest.mark.django_db

User = get_user_model()
PEOPLE = ldif.PEOPLE_DN

# -- the sound directory every row starts from ----------------------------------------------------


def baseline() -> DirectorySpec:
    users = [
        UserSpec("alice", "Alice", "Archer", mail="alice@example.test", title="Engineer"),
        UserSpec("bob", "Bob", "Baker", mail="bob@example.test", title="Lead"),
        UserSpec("casey", "Casey", "Cole", mail="casey@example.test", title="Rep"),
        UserSpec("rene", "René", "Roux", mail="rene@example.test", title="Analyst"),
        UserSpec("pat", "Pat", "Poe", mail="pat@example.test", title="Designer", photo=jpeg(7)),
    ]
    groups = [
        GroupSpec("Team", members=["alice", "bob"]),
        GroupSpec("Company", members=["group:Team", "casey", "rene", "pat"]),
    ]
    return DirectorySpec(users=users, groups=groups)


def snapshot() -> dict[str, Any]:
    """Everything the sync could change: user rows, profiles, links, memberships, groups."""
    from tests.testapp.models import Employee

    profiles = {p["user_id"]: p for p in Employee.objects.values()}
    links = {link["user_id"]: link for link in DirectoryUser.objects.values()}
    users = {}
    for row in User.objects.values():
        user = User.objects.get(pk=row["id"])
        users[row["username"]] = {
            "row": row,
            "profile": profiles.get(row["id"]),
            "link": links.get(row["id"]),
            "groups": set(user.groups.values_list("name", flat=True)),
        }
    return {"users": users, "groups": set(Group.objects.values_list("name", flat=True))}


# -- inputs ---------------------------------------------------------------------------------------


def admin(server) -> ldap.ldapobject.LDAPObject:
    return server.admin_connection()


def add_user(server, dn: str, **attrs: Any) -> str:
    values = {"objectClass": [b"inetOrgPerson", b"extensibleObject"], "cn": [b"X"], "sn": [b"Y"]}
    for name, value in attrs.items():
        values[name] = value if isinstance(value, list) else [value]
    admin(server).add_s(dn, list(values.items()))
    return dn


def replace(server, key: str, attribute: str, value: bytes) -> str:
    dn = server.user_dn(key)
    admin(server).modify_s(dn, [(ldap.MOD_REPLACE, attribute, [value])])
    return dn


def add_group(server, name: str, members: list[str]) -> str:
    dn = f"cn={escape_dn_chars(name)},{ldif.GROUPS_DN}"
    admin(server).add_s(
        dn,
        [("objectClass", [b"groupOfNames"]), ("cn", [name.encode()]),
         ("member", [m.encode() for m in members])],
    )  # fmt: skip
    return dn


def image(kind: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, format=kind)
    return buffer.getvalue()


def png_bomb(side: int) -> bytes:
    """A real decompression bomb: a greyscale PNG of ``side`` x ``side`` zero pixels, whose few
    hundred kilobytes expand to ``side * side`` bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    compressor = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + pixels
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def allow_big_requests(server) -> None:
    """Raise slapd's 4 MB limit on an authenticated client's request (for the 20 MB photo)."""
    admin(server).modify_s(
        "cn=config", [(ldap.MOD_REPLACE, "olcSockbufMaxIncomingAuth", [str(64 << 20).encode()])]
    )


def huge_group(server) -> str:
    members = [server.user_dn(k) for k in ("alice", "bob", "casey")]
    members += [f"uid=contact{i:05d},ou=Contacts,{ldif.BASE_DN}" for i in range(10_000 - 3)]
    return add_group(server, "Huge", members)


def cycle_of_five(server) -> str:
    names = [f"Ring {i}" for i in range(1, 6)]
    for index, name in enumerate(names):
        nxt = names[(index + 1) % 5]
        members = [f"cn={nxt},{ldif.GROUPS_DN}"]
        if name == "Ring 3":
            members.append(server.user_dn("rene"))
        add_group(server, name, members)
    return f"cn=Ring 1,{ldif.GROUPS_DN}"


WEIRD_CN = '#1 Weird, +"Q" \\ ; <x> = Ünïcødé '


def case_twin(server) -> str:
    """A second entry, in another OU, whose uid is "casey" in capitals."""
    admin(server).add_s(f"ou=Sales,{PEOPLE}", [("objectClass", [b"organizationalUnit"])])
    return add_user(server, f"uid=CASEY,ou=Sales,{PEOPLE}", uid=b"CASEY")


def weird_dn_user(server) -> str:
    dn = f"cn={escape_dn_chars(WEIRD_CN)},{PEOPLE}"
    add_user(server, dn, uid=b"weird", cn=WEIRD_CN.encode(), mail=b"weird@example.test")
    add_group(server, "Weird Group", [dn])
    return dn


# -- the table ------------------------------------------------------------------------------------


@dataclass
class Row:
    id: str
    #: writes the bad input after the baseline run; returns the DN of the entry concerned
    apply: Callable[[Any], str]
    #: the message(s) reported with the DN (None: the input must sync without any message)
    message: str | tuple[str, ...] | None
    #: "errors" (the entry is skipped) or "warnings" (the value is left out, the entry synced)
    kind: str = "errors"
    #: users whose state may change (the row's own user)
    touched: frozenset[str] = frozenset()
    #: users and groups the run creates
    created: frozenset[str] = frozenset()
    new_groups: frozenset[str] = frozenset()
    #: settings for both runs; ``prepare`` writes to the directory before the baseline run
    settings: dict[str, Any] = field(default_factory=dict)
    prepare: Callable[[Any], None] | None = None
    #: more checks, after the second run
    check: Callable[[Any], None] | None = None

    def __str__(self) -> str:
        return self.id


def _user(username: str) -> Any:
    return User.objects.select_related("employee").get(username=username)


def _check_weird(server) -> None:
    weird = _user("weird")
    expected_dn = f"cn={escape_dn_chars(WEIRD_CN)},{PEOPLE}"
    assert normalize_dn(weird.directory_link.dn) == normalize_dn(expected_dn)
    assert ldap.dn.str2dn(weird.directory_link.dn)[0][0][1] == WEIRD_CN
    assert set(weird.groups.values_list("name", flat=True)) == {"Weird Group"}


def _check_photo_kept(server) -> None:
    profile = _user("pat").employee
    with profile.jpegphoto.open("rb") as handle:
        assert handle.read() == jpeg(7)


ROWS = [
    Row(
        "no username attribute",
        lambda s: add_user(s, f"cn=Nameless,{PEOPLE}", cn=b"Nameless"),
        "skipped: no uid attribute (the username)",
    ),
    Row(
        "username of 151 characters",
        lambda s: add_user(s, f"uid={'u' * 151},{PEOPLE}", uid=("u" * 151).encode()),
        "skipped: username is 151 characters long, more than the 150 allowed by username",
    ),
    Row(
        "username the User model refuses, strict",
        lambda s: add_user(s, f"uid=bad name!,{PEOPLE}", uid=b"bad name!"),
        "skipped: username 'bad name!' is refused by the validators of username "
        "(LDAP_SYNC_USERNAME_STRICT)",
        settings={"LDAP_SYNC_USERNAME_STRICT": True},
    ),
    Row(
        "username the User model refuses (synced)",
        lambda s: add_user(s, f"uid=bad name!,{PEOPLE}", uid=b"bad name!"),
        "username 'bad name!' is refused by the validators of username; synced anyway",
        kind="warnings",
        created=frozenset({"bad name!"}),
    ),
    Row(
        "username with a control character",
        lambda s: add_user(s, f"uid=bell\x07,{PEOPLE}", uid=b"bell\x07"),
        "skipped: username contains control characters",
    ),
    Row(
        "usernames that differ only by case",
        lambda s: case_twin(s),
        "skipped: username 'casey' is already used by another directory entry",
    ),
    Row(
        "username that is an exempt name",
        lambda s: add_user(s, f"uid=Admin,{PEOPLE}", uid=b"Admin", givenName=b"Intruder"),
        None,  # expected, so not a problem: counted (users_exempt) and logged at debug level
    ),
    Row(
        "non-UTF-8 bytes in a text attribute",
        lambda s: replace(s, "rene", "audio", "Ren\xe9".encode("latin-1")),
        "attribute audio is not valid UTF-8 text; first_name left unchanged",
        kind="warnings",
        touched=frozenset({"rene"}),
        # audio (octet string syntax: slapd validates UTF-8 in text attributes) as first name
        settings={"LDAP_SYNC_USER_ATTRIBUTES": {
            "uid": "username", "audio": "first_name", "sn": "last_name", "mail": "email",
        }},  # fmt: skip
        prepare=lambda s: replace(s, "rene", "audio", "René".encode()) and None,
        check=lambda s: _assert(_user("rene").first_name == "René"),
    ),
    Row(
        "value longer than the model field (truncated)",
        lambda s: replace(s, "bob", "givenName", b"B" * 200) and replace(s, "bob", "title", b"T" * 300),
        (
            "attribute givenname is 200 characters long; first_name truncated to 150",
            "attribute title is 300 characters long; title truncated to 100",
        ),
        kind="warnings",
        touched=frozenset({"bob"}),
        check=lambda s: _assert(
            _user("bob").first_name == "B" * 150 and _user("bob").employee.title == "T" * 100
        ),
    ),
    Row(
        "invalid e-mail address (cleared)",
        lambda s: replace(s, "alice", "mail", b"not-an-email"),
        "attribute mail is not a valid e-mail address; email cleared",
        kind="warnings",
        touched=frozenset({"alice"}),
        check=lambda s: _assert(_user("alice").email == ""),
    ),
    Row(
        'DN with , + " \\ # ; < > =, spaces and non-ASCII',
        weird_dn_user,
        None,
        created=frozenset({"weird"}),
        new_groups=frozenset({"Weird Group"}),
        check=_check_weird,
    ),
    Row(
        "corrupt JPEG",
        lambda s: replace(s, "pat", "jpegPhoto", jpeg(8)[: len(jpeg(8)) // 2]),
        "attribute jpegphoto rejected (photo is corrupt",
        kind="warnings",
        check=_check_photo_kept,
    ),
    Row(
        "image that is not JPEG or PNG (BMP)",
        lambda s: replace(s, "pat", "jpegPhoto", image("BMP")),
        "attribute jpegphoto rejected (photo is not a JPEG, PNG or GIF image)",
        kind="warnings",
        check=_check_photo_kept,
    ),
    Row(
        "something that is no image at all",
        lambda s: replace(s, "pat", "jpegPhoto", b"<svg xmlns='http://www.w3.org/2000/svg'/>"),
        "attribute jpegphoto rejected (photo is not a JPEG, PNG or GIF image)",
        kind="warnings",
        check=_check_photo_kept,
    ),
    Row(
        "decompression bomb",
        lambda s: replace(s, "pat", "jpegPhoto", png_bomb(9_000)),
        "attribute jpegphoto rejected (photo is 9000x9000 pixels, more than 16777216)",
        kind="warnings",
        check=_check_photo_kept,
    ),
    Row(
        "20 MB photo",
        lambda s: allow_big_requests(s) or replace(s, "pat", "jpegPhoto", jpeg(8) + bytes(20 << 20)),
        f"attribute jpegphoto rejected (photo is {len(jpeg(8)) + (20 << 20)} bytes, more than "
        f"{5 << 20})",
        kind="warnings",
        check=_check_photo_kept,
    ),
    Row(
        "group members outside the scope or deleted",
        lambda s: add_user(s, f"uid=outsider,{ldif.BASE_DN}", uid=b"outsider")
        and add_group(s, "Mixed", [s.user_dn("alice"), f"uid=ghost,{PEOPLE}",
                                   f"uid=outsider,{ldif.BASE_DN}"]),  # fmt: skip
        None,
        touched=frozenset({"alice"}),
        new_groups=frozenset({"Mixed"}),
        check=lambda s: _assert(
            "Mixed" in set(_user("alice").groups.values_list("name", flat=True))
            and Group.objects.get(name="Mixed").user_set.count() == 1
        ),
    ),
    Row(
        "group with 10,000 members",
        huge_group,
        None,
        touched=frozenset({"alice", "bob", "casey"}),
        new_groups=frozenset({"Huge"}),
        check=lambda s: _assert(
            set(Group.objects.get(name="Huge").user_set.values_list("username", flat=True))
            == {"alice", "bob", "casey"}
        ),
    ),
    Row(
        "membership cycle of length 5",
        cycle_of_five,
        None,
        touched=frozenset({"rene"}),
        new_groups=frozenset(f"Ring {i}" for i in range(1, 6)),
        check=lambda s: _assert(
            set(_user("rene").groups.values_list("name", flat=True))
            == {"Company"} | {f"Ring {i}" for i in range(1, 6)}
        ),
    ),
]


def _assert(condition: bool) -> None:
    assert condition


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_bad_input(row: Row, make_slapd, settings, tmp_path, caplog) -> None:
    settings.MEDIA_ROOT = str(tmp_path)
    server = make_slapd(spec=baseline())
    if row.prepare:
        row.prepare(server)
    local_admin = User.objects.create_superuser("admin", password="local-only", first_name="Root")
    with override_settings(**slapd_settings(server, **row.settings)):
        first = run_sync(SyncOptions(mode="full"))
        assert first.status == "success", first.error or first.problems
        before = snapshot()
        dn = row.apply(server)
        caplog.set_level(logging.DEBUG, logger="adldap_auth")
        result = run_sync(SyncOptions(mode="full"))

    # The run completes; the input is reported with its DN, or synced without a word.
    assert result.ok, result.error
    assert SyncRun.objects.get(pk=result.run_id).status == result.status
    if row.message is None:
        assert result.problems == [], result.problems
        assert result.status == "success"
    else:
        assert result.status == ("partial" if row.kind == "errors" else "success")
        messages = (row.message,) if isinstance(row.message, str) else row.message
        assert result.counts[row.kind] == len(messages), result.counts
        assert len(result.problems) == len(messages), result.problems
        logged = {r.getMessage() for r in caplog.records if r.levelno == logging.WARNING}
        for line, message in zip(result.problems, messages, strict=True):
            assert line.startswith(f"user {dn}"), line
            assert message in line, line
            assert line in logged

    # Nothing else changed.
    after = snapshot()
    assert set(after["users"]) == set(before["users"]) | row.created
    for username, was in before["users"].items():
        if username not in row.touched:
            assert after["users"][username] == was, username
    assert after["groups"] == before["groups"] | row.new_groups
    local_admin.refresh_from_db()
    assert local_admin.check_password("local-only") and local_admin.first_name == "Root"
    if row.check:
        row.check(server)


def test_an_exempt_entry_is_counted_and_logged_with_its_dn(make_slapd, caplog) -> None:
    server = make_slapd(spec=baseline())
    add_user(server, f"uid=Admin,{PEOPLE}", uid=b"Admin")
    caplog.set_level(logging.DEBUG, logger="adldap_auth")
    with override_settings(**slapd_settings(server)):
        result = run_sync(SyncOptions(mode="full"))
    assert result.status == "success" and result.counts["users_exempt"] == 1
    assert f"user uid=Admin,{PEOPLE} skipped: username 'admin' is exempt from sync" in [
        r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG
    ]
    assert not User.objects.filter(username="admin").exists()


def test_a_wrong_setting_stops_syncldap_before_it_touches_anything(slapd_lab) -> None:
    """The wrong type or value of any setting is a system check error (the table of
    tests/unit/test_checks.py covers every setting); ``manage.py syncldap`` runs the checks first."""
    wrong = slapd_settings(slapd_lab, LDAP_SYNC_BIND_PAGESIZE="200", LDAP_SYNC_USER=1)
    with override_settings(**wrong), pytest.raises(SystemCheckError) as stopped:
        call_command("syncldap", "full", skip_checks=False)
    text = str(stopped.value)
    assert "LDAP_SYNC_BIND_PAGESIZE must be an integer" in text
    assert "LDAP_SYNC_USER must be True or False" in text
    assert not SyncRun.objects.exists() and not User.objects.exists()


def test_every_setting_has_a_wrong_value_in_the_checks_table() -> None:
    from adldap_auth.conf import DEFAULTS
    from tests.unit.test_checks import CASES

    assert {case.setting for case in CASES if case.expected} == set(DEFAULTS)
