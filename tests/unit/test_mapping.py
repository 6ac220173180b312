"""Unit tests of adldap_auth.mapping: entry -> user/group records, DNs, photos."""

from __future__ import annotations

import dataclasses
import io
import re
import struct
import uuid
import zlib
from datetime import datetime

import pytest
from django.contrib.auth.validators import UnicodeUsernameValidator
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from adldap_auth.directory import Entry
from adldap_auth.directory.decoding import guid_to_bytes, sid_to_bytes
from adldap_auth.mapping import (
    GroupRecord,
    MappingConfig,
    PhotoError,
    ProfileSpec,
    SkipEntry,
    UserRecord,
    _normalize_dn_parsed,
    build_mapping_config,
    decode_identity,
    fieldcase,
    group_attribute_list,
    is_email_address,
    join_values,
    map_group,
    map_user,
    normalize_dn,
    photo_digest,
    photo_filename,
    unknown_schema_attributes,
    user_attribute_list,
    validate_photo,
)
from tests.unit.test_checks import BASE

GUID = "0b8a6a3e-5a1d-4c2b-9a7e-2f3c4d5e6f70"
DOMAIN_SID = "S-1-5-21-1004336348-1177238915-682003330"

# -- helpers ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _connection_settings(settings):
    """The required connection settings: the mapper reads the validated settings object,
    which a configuration without them does not give."""
    for name, value in BASE.items():
        setattr(settings, f"LDAP_SYNC_{name}", value)


def image_bytes(fmt: str, size=(32, 24), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    image = Image.new(mode, size, "red" if mode == "RGB" else 1)
    for x in range(size[0]):
        image.putpixel((x, x % size[1]), (x * 7 % 256, 10, 200) if mode == "RGB" else 0)
    image.save(buffer, format=fmt)
    return buffer.getvalue()


JPEG = image_bytes("JPEG")
PNG = image_bytes("PNG")
GIF = image_bytes("GIF", mode="P")


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def make_config(**overrides) -> MappingConfig:
    values = dict(
        user_attributes={
            "samaccountname": "username",
            "givenname": "first_name",
            "sn": "last_name",
            "mail": "email",
        },
        username_field="username",
        user_field_max_lengths={
            "username": 150,
            "first_name": 150,
            "last_name": 150,
            "email": 254,
        },
        username_validator=UnicodeUsernameValidator(),
        extra_attributes=("useraccountcontrol", "department", "title", "description"),
        profiles=(
            ProfileSpec(
                "testapp.Employee",
                text_fields={"department": 20, "title": 100, "description": None},
                file_fields=frozenset({"thumbnailphoto"}),
                other_fields=frozenset({"useraccountcontrol"}),
            ),
        ),
        fieldcase="lower",
        separator="|",
        identity_attribute="objectguid",
        exempt_usernames=frozenset({"admin", "administrator", "guest"}),
        group_attributes={"cn": "name"},
        member_attribute="member",
        photo_max_bytes=100_000,
        photo_max_pixels=1000 * 1000,
    )
    values.update(overrides)
    return MappingConfig(**values)


def encode(value) -> list[bytes]:
    if isinstance(value, list | tuple):
        return [v if isinstance(v, bytes) else str(v).encode() for v in value]
    return [value if isinstance(value, bytes) else str(value).encode()]


def user_entry(dn="CN=Alice Archer,OU=People,DC=example,DC=com", *, guid=GUID, **attrs) -> Entry:
    data = {
        "objectguid": [guid_to_bytes(guid)] if guid else None,
        "samaccountname": "Alice",
        "givenname": "Alice",
        "sn": "Archer",
        "mail": "alice@example.com",
    }
    data.update({k.lower(): v for k, v in attrs.items()})
    return Entry(dn, {k: encode(v) for k, v in data.items() if v is not None})


def group_entry(dn="CN=Staff,OU=Groups,DC=example,DC=com", *, guid=GUID, **attrs) -> Entry:
    data = {"objectguid": [guid_to_bytes(guid)] if guid else None, "cn": "Staff"}
    data.update({k.lower(): v for k, v in attrs.items()})
    return Entry(dn, {k: encode(v) for k, v in data.items() if v is not None})


# -- small helpers ----------------------------------------------------------------------------


def test_fieldcase():
    assert fieldcase("thumbnailPhoto", "lower") == "thumbnailphoto"
    assert fieldcase("thumbnailPhoto", "upper") == "THUMBNAILPHOTO"
    assert fieldcase("thumbnailPhoto", None) == "thumbnailPhoto"
    with pytest.raises(ValueError):
        fieldcase("x", "title")


def test_join_values():
    assert join_values([b"a", "é".encode(), b"c"], "|") == "a|é|c"
    assert join_values([], "|") == ""
    with pytest.raises(UnicodeDecodeError):
        join_values([b"\xff"], "|")


def test_photo_digest_is_sha256():
    assert photo_digest(b"abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


# -- identity ---------------------------------------------------------------------------------


def test_object_guid_is_decoded():
    raw = bytes(range(16))
    assert decode_identity("objectguid", raw) == "03020100-0504-0706-0809-0a0b0c0d0e0f"
    record = map_user(user_entry(guid=GUID), make_config())
    assert record.guid == GUID


def test_entry_uuid_is_canonical_lower_case():
    upper = "6F5B2AF2-1C3E-4E08-9C5A-3A8B2F0E4C11"
    assert decode_identity("entryuuid", upper.encode()) == upper.lower()
    assert decode_identity("nsuniqueid", b"66446001-1DD211B2") == "66446001-1dd211b2"
    config = make_config(identity_attribute="entryuuid")
    entry = user_entry(guid=None, entryUUID=upper)
    assert map_user(entry, config).guid == upper.lower()


@pytest.mark.parametrize(
    "attrs",
    [
        {"guid": None},  # no identity attribute at all
        {"objectGUID": b"short"},  # not 16 bytes
    ],
)
def test_missing_or_bad_identity_skips(attrs):
    with pytest.raises(SkipEntry, match="objectguid"):
        map_user(user_entry(**attrs), make_config())


# -- users: fields ----------------------------------------------------------------------------


def test_user_fields_are_mapped():
    record = map_user(user_entry(), make_config())
    assert isinstance(record, UserRecord)
    assert record.username == "alice"  # lower-cased, like the seed
    assert record.fields == {
        "username": "alice",
        "first_name": "Alice",
        "last_name": "Archer",
        "email": "alice@example.com",
    }
    assert record.dn == "CN=Alice Archer,OU=People,DC=example,DC=com"
    assert record.member_key == "cn=alice archer,ou=people,dc=example,dc=com"
    assert record.problems == []
    assert record.attributes["samaccountname"] == [b"Alice"]


def test_username_case_is_kept_when_asked():
    record = map_user(user_entry(), make_config(lowercase_username=False))
    assert record.username == "Alice"
    assert record.fields["username"] == "Alice"


def test_missing_attribute_clears_the_field():
    record = map_user(user_entry(givenName=None, mail=None), make_config())
    assert record.fields["first_name"] == ""
    assert record.fields["email"] == ""
    assert record.problems == []


def test_user_field_takes_the_first_value():
    record = map_user(user_entry(givenName=["Alice", "Ally"]), make_config())
    assert record.fields["first_name"] == "Alice"


def test_non_utf8_value_leaves_the_field_unchanged():
    record = map_user(user_entry(sn=b"Arch\xe9r"), make_config())
    assert "last_name" not in record.fields
    assert record.problems == ["attribute sn is not valid UTF-8 text; last_name left unchanged"]


def test_too_long_value_is_truncated_with_a_problem():
    record = map_user(user_entry(sn="x" * 200), make_config())
    assert record.fields["last_name"] == "x" * 150
    assert "truncated to 150" in record.problems[0]


def test_nul_characters_are_removed():
    record = map_user(user_entry(sn="Arc\x00her"), make_config())
    assert record.fields["last_name"] == "Archer"
    assert "NUL" in record.problems[0]


@pytest.mark.parametrize("mail", ["not an address", "a@b@c", "x" * 250 + "@example.com"])
def test_invalid_email_clears_the_field(mail):
    record = map_user(user_entry(mail=mail), make_config())
    assert record.fields["email"] == ""
    assert len(record.problems) == 1
    assert "email cleared" in record.problems[0]


@pytest.mark.parametrize(
    "mail",
    [
        "zoë.müller@example.com",  # RFC 6531 local part
        "Zoë.Müller@Bücher.Example",  # kept as held: no case or Unicode normalisation
        "josé@bücher.example",
        "用户@例子.广告",
        "δοκιμή@παράδειγμα.δοκιμή",
        "θ+tag@example.com",
    ],
)
def test_internationalised_email_is_kept_as_the_directory_holds_it(mail):
    """Issue 13 #5: Django's validate_email refuses non-ASCII local parts."""
    record = map_user(user_entry(mail=mail), make_config())
    assert record.fields["email"] == mail
    assert record.problems == []


@pytest.mark.parametrize(
    "mail",
    [
        "alice@example.com",
        "o'neil+tag@example.com",
        '"o..neil"@example.com',  # Django's quoted-string rule, unchanged
        "root@localhost",
        "ops@[192.0.2.1]",
        "a@bücher.example",  # IDN domain
        "a@xn--bcher-kva.example",  # the same, punycoded
        "zoë.müller@example.com",
        "zoë.müller@bücher.example",
        "用户@例子.广告",
        "ü@example.com",  # one-character local part
        "zoë!#$%&'*+-/=?^_`{|}~@example.com",  # every atext symbol
        "محمد@example.com",
        "pelé\u200d@example.com",  # a format character (ZWJ) is allowed in an address
    ],
)
def test_is_email_address_accepts(mail):
    assert is_email_address(mail)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "not an address",
        "Zoë Müller",
        "zoë.müller",  # no @
        "@example.com",  # empty local part
        "zoë@",  # empty domain
        "a@b@c",
        "zoë@müller@example.com",  # two @
        "zoë müller@example.com",  # space
        "zoë\u00a0müller@example.com",  # no-break space (Zs)
        "zoë\u2028m@example.com",  # line separator (Zl)
        "zoë\tm@example.com",  # control
        "zoë\x85m@example.com",  # C1 control
        "zoë..müller@example.com",  # empty atom
        ".zoë@example.com",
        "zoë.@example.com",
        'zoë"@example.com',  # ASCII specials outside atext
        "zoë(comment)@example.com",
        '"zoë m"@example.com',  # quoted non-ASCII local part: not accepted
        "zoë@exa mple.com",
        "zoë@example..com",
        "zoë@-bücher.example",  # label starting with a hyphen
        "zoë@bücher",  # single label (only localhost is allowed)
        "a@" + "ü" * 60 + ".example",  # label over 63 characters once punycoded
        "zoë@bü\ufffdcher.example",  # character that IDNA prohibits
        "zoë@bücher.example" + ".a" * 160,  # over 320 characters
    ],
)
def test_is_email_address_refuses(value):
    assert not is_email_address(value)


def test_email_is_stripped_and_first_value_used():
    record = map_user(user_entry(mail=[" a@example.com ", "b@example.com"]), make_config())
    assert record.fields["email"] == "a@example.com"


def test_problems_never_contain_the_dn_or_the_value():
    entry = user_entry(mail="secret-looking value", sn=b"\xff\xfe")
    record = map_user(entry, make_config())
    for problem in record.problems:
        assert "secret-looking" not in problem
        assert "Archer" not in problem and "OU=People" not in problem


# -- users: skips -----------------------------------------------------------------------------


def test_no_username_skips():
    with pytest.raises(SkipEntry, match="samaccountname") as caught:
        map_user(user_entry(sAMAccountName=None), make_config())
    assert caught.value.dn.startswith("CN=Alice")
    assert "CN=Alice" not in str(caught.value)


@pytest.mark.parametrize("name", ["admin", "Administrator", "GUEST"])
def test_exempt_username_skips_case_insensitively(name):
    with pytest.raises(SkipEntry, match="exempt") as caught:
        map_user(user_entry(sAMAccountName=name), make_config())
    assert caught.value.exempt


def test_exempt_also_when_username_case_is_kept():
    with pytest.raises(SkipEntry, match="exempt"):
        map_user(user_entry(sAMAccountName="Admin"), make_config(lowercase_username=False))


def test_too_long_username_skips_and_is_not_truncated():
    map_user(user_entry(sAMAccountName="u" * 150), make_config())  # exactly max_length: fine
    with pytest.raises(SkipEntry, match="151 characters") as caught:
        map_user(user_entry(sAMAccountName="u" * 151), make_config())
    assert not caught.value.exempt


@pytest.mark.parametrize("name", ["john doe", "a/b", "../../etc/passwd", "semi;colon", "o'neil"])
def test_username_refused_by_the_validator_skips_when_strict(name):
    with pytest.raises(SkipEntry, match=r"validators of username \(LDAP_SYNC_USERNAME_STRICT\)"):
        map_user(user_entry(sAMAccountName=name), make_config(username_strict=True))


@pytest.mark.parametrize("name", ["o'neil", "john doe", "a/b", "../../etc/passwd", "semi;colon"])
def test_username_refused_by_the_validator_is_synced_with_a_problem(name):
    """Issue 13 #4: a valid directory name that fits the column is synced (not strict by
    default), and the refusal is reported."""
    record = map_user(user_entry(sAMAccountName=name), make_config())
    assert record.username == name
    assert record.fields["username"] == name
    assert record.problems == [
        f"username {name!r} is refused by the validators of username; synced anyway "
        "(LDAP_SYNC_USERNAME_STRICT is False)"
    ]


@pytest.mark.parametrize(
    "name",
    [
        "nel\x85line",  # C1 control (NEL)
        "csi\x9b",  # C1 control
        "evil\u202etxt.exe",  # right-to-left override
        "zero\u200bwidth",  # zero-width space
        "soft\u00adhyphen",  # soft hyphen (Cf)
        "line\u2028sep",  # line separator (Zl)
        "para\u2029sep",  # paragraph separator (Zp)
    ],
)
@pytest.mark.parametrize("strict", [False, True])
def test_username_with_c1_controls_or_invisible_characters_skips(name, strict):
    """Not strict, the validators no longer guard against these: look-alike names are still
    refused, whatever the setting, before the validators run."""
    with pytest.raises(SkipEntry, match="control characters|invisible format") as caught:
        map_user(user_entry(sAMAccountName=name), make_config(username_strict=strict))
    assert "validators" not in str(caught.value)


def test_username_with_control_characters_skips_even_without_validator():
    config = make_config(username_validator=None)
    with pytest.raises(SkipEntry, match="control"):
        map_user(user_entry(sAMAccountName="bob\x00"), config)
    assert map_user(user_entry(sAMAccountName="bob smith"), config).username == "bob smith"


@pytest.mark.parametrize("raw", [b"j\xf6rg", b"\xff\xfe"])
def test_non_utf8_username_skips(raw):
    with pytest.raises(SkipEntry, match="UTF-8"):
        map_user(user_entry(sAMAccountName=raw), make_config())


def test_empty_username_skips():
    with pytest.raises(SkipEntry, match="empty"):
        map_user(user_entry(sAMAccountName=""), make_config())


def test_non_ascii_username_is_accepted():
    assert map_user(user_entry(sAMAccountName="Zoë"), make_config()).username == "zoë"


# -- users: AD specifics ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uac", "disabled"), [("512", False), ("514", True), ("66050", True), (None, False)]
)
def test_disabled_flag(uac, disabled):
    record = map_user(user_entry(userAccountControl=uac), make_config())
    assert record.disabled is disabled
    assert record.problems == []


def test_unreadable_user_account_control_is_enabled_with_a_problem():
    record = map_user(user_entry(userAccountControl="abc"), make_config())
    assert record.disabled is False
    assert "useraccountcontrol" in record.problems[0]


def test_primary_group_sid():
    entry = user_entry(objectSid=sid_to_bytes(f"{DOMAIN_SID}-1105"), primaryGroupID="513")
    record = map_user(entry, make_config())
    assert record.object_sid == f"{DOMAIN_SID}-1105"
    assert record.primary_group_sid == f"{DOMAIN_SID}-513"


def test_primary_group_needs_both_attributes():
    record = map_user(user_entry(primaryGroupID="513"), make_config())
    assert record.object_sid is None and record.primary_group_sid is None
    record = map_user(user_entry(objectSid=sid_to_bytes(f"{DOMAIN_SID}-1105")), make_config())
    assert record.primary_group_sid is None


def test_bad_sid_is_a_problem_not_a_skip():
    record = map_user(user_entry(objectSid=b"\x01"), make_config())
    assert record.object_sid is None
    assert "objectsid" in record.problems[0]


def test_member_key_for_memberuid_is_the_lower_case_username():
    config = make_config(member_attribute="memberuid", lowercase_username=False)
    assert map_user(user_entry(sAMAccountName="JDoe"), config).member_key == "jdoe"


# -- users: profiles --------------------------------------------------------------------------


def test_profile_fields_from_extra_attributes_joined():
    entry = user_entry(department=["R&D", "Ops"], title="Engineer", thumbnailPhoto=JPEG)
    record = map_user(entry, make_config())
    assert record.profiles == {
        "testapp.Employee": {"department": "R&D|Ops", "title": "Engineer", "description": ""}
    }
    assert record.photos == {"testapp.Employee": {"thumbnailphoto": JPEG}}


def test_profile_separator_is_configurable():
    record = map_user(user_entry(department=["a", "b"]), make_config(separator=", "))
    assert record.profiles["testapp.Employee"]["department"] == "a, b"


def test_profile_value_is_truncated_with_a_problem():
    record = map_user(user_entry(department="d" * 30), make_config())
    assert record.profiles["testapp.Employee"]["department"] == "d" * 20
    assert "department truncated to 20" in record.problems[0]


def test_profile_non_utf8_value_leaves_the_field_unchanged():
    record = map_user(user_entry(title=b"\xc3"), make_config())
    assert "title" not in record.profiles["testapp.Employee"]
    assert "title left unchanged" in record.problems[0]


def test_profile_non_text_fields_are_not_filled():
    record = map_user(user_entry(userAccountControl="512"), make_config())
    assert "useraccountcontrol" not in record.profiles["testapp.Employee"]


def test_mapped_user_attributes_also_fill_profiles():
    spec = ProfileSpec("app.P", text_fields={"givenname": 50, "samaccountname": 50})
    record = map_user(user_entry(), make_config(profiles=(spec,)))
    assert record.profiles["app.P"] == {"givenname": "Alice", "samaccountname": "Alice"}


def test_fieldcase_upper_matches_upper_case_fields():
    spec = ProfileSpec(
        "app.P", text_fields={"DEPARTMENT": 50}, file_fields=frozenset({"THUMBNAILPHOTO"})
    )
    config = make_config(profiles=(spec,), fieldcase="upper")
    record = map_user(user_entry(department="Sales", thumbnailPhoto=PNG), config)
    assert record.profiles["app.P"] == {"DEPARTMENT": "Sales"}
    assert record.photos["app.P"] == {"THUMBNAILPHOTO": PNG}


def test_fieldcase_none_uses_the_configured_spelling():
    spec = ProfileSpec(
        "app.P",
        text_fields={"physicalDeliveryOfficeName": 50},
        file_fields=frozenset({"jpegPhoto"}),
    )
    config = make_config(
        profiles=(spec,),
        fieldcase=None,
        extra_attributes=("physicaldeliveryofficename",),
        attribute_names={"physicaldeliveryofficename": "physicalDeliveryOfficeName"},
    )
    record = map_user(user_entry(physicalDeliveryOfficeName="B2", jpegPhoto=GIF), config)
    assert record.profiles["app.P"] == {"physicalDeliveryOfficeName": "B2"}
    assert record.photos["app.P"] == {"jpegPhoto": GIF}


def test_binary_attributes_in_profiles_are_decoded():
    spec = ProfileSpec("app.P", text_fields={"objectguid": 36, "objectsid": 100})
    config = make_config(profiles=(spec,), extra_attributes=("objectguid", "objectsid"))
    sid = f"{DOMAIN_SID}-1105"
    record = map_user(user_entry(objectSid=sid_to_bytes(sid)), config)
    assert record.profiles["app.P"] == {"objectguid": GUID, "objectsid": sid}


def test_absent_photo_means_remove():
    record = map_user(user_entry(), make_config())
    assert record.photos == {"testapp.Employee": {"thumbnailphoto": None}}


def test_photo_bytes_are_passed_on_undecoded():
    """The store checks a photo only when its digest changed (tests/slapd/test_security_photos.py):
    the mapper neither decodes nor rejects it."""
    record = map_user(user_entry(thumbnailPhoto=b"not an image"), make_config())
    assert record.photos == {"testapp.Employee": {"thumbnailphoto": b"not an image"}}
    assert record.fields["username"] == "alice" and record.problems == []


def test_profile_without_matching_fields():
    spec = ProfileSpec("app.Other", text_fields={"nickname": 30})
    record = map_user(user_entry(), make_config(profiles=(spec,)))
    assert record.profiles == {"app.Other": {}}
    assert record.photos == {"app.Other": {}}


# -- attribute lists --------------------------------------------------------------------------


def test_user_attribute_list():
    names = user_attribute_list(make_config())
    assert names == [
        "samaccountname",
        "givenname",
        "sn",
        "mail",
        "useraccountcontrol",
        "department",
        "title",
        "description",
        "objectguid",
        "objectsid",
        "primarygroupid",
        "thumbnailphoto",
    ]
    assert "*" not in names


def test_user_attribute_list_without_photo_fields():
    spec = ProfileSpec("app.P", text_fields={"department": 50})
    names = user_attribute_list(make_config(profiles=(spec,)))
    assert "thumbnailphoto" not in names and "jpegphoto" not in names
    assert len(names) == len(set(names))


def test_group_attribute_list():
    config = make_config(group_attributes={"cn": "name", "description": "x"})
    assert group_attribute_list(config) == [
        "cn",
        "description",
        "objectguid",
        "objectsid",
        "member",
    ]


# -- groups -----------------------------------------------------------------------------------


def test_map_group():
    sid = f"{DOMAIN_SID}-513"
    entry = group_entry(
        member=[
            r"CN=Doe\, John,OU=People,DC=example,DC=com",
            r"cn=doe\2c john, ou=people,dc=example,dc=com",  # the same member, spelled otherwise
            "CN=Engineering,OU=Groups,DC=example,DC=com",
        ],
        objectSid=sid_to_bytes(sid),
    )
    record = map_group(entry, make_config())
    assert isinstance(record, GroupRecord)
    assert record.name == "Staff"
    assert record.fields == {"name": "Staff"}
    assert record.guid == GUID
    assert record.object_sid == sid
    assert record.member_keys == [
        r"cn=doe\, john,ou=people,dc=example,dc=com",
        "cn=engineering,ou=groups,dc=example,dc=com",
    ]


def test_map_group_extra_fields_and_empty_group():
    config = make_config(
        group_attributes={"cn": "name", "description": "description"},
        group_field_max_lengths={"name": 150, "description": 5},
    )
    record = map_group(group_entry(description="long text"), config)
    assert record.fields == {"name": "Staff", "description": "long "}
    assert record.member_keys == []
    assert "truncated" in record.problems[0]


def test_map_group_unique_member_strips_optional_uid():
    config = make_config(member_attribute="uniquemember")
    entry = group_entry(uniqueMember=["uid=bob,ou=People,dc=x#'0101'B", "uid=Bob,ou=people,dc=x"])
    assert map_group(entry, config).member_keys == ["uid=bob,ou=people,dc=x"]


def test_map_group_member_uid():
    config = make_config(member_attribute="memberuid")
    entry = group_entry(memberUid=["JDoe", "jdoe", "alice"])
    assert map_group(entry, config).member_keys == ["jdoe", "alice"]


def test_map_group_ignores_undecodable_members():
    record = map_group(group_entry(member=[b"cn=\xff,dc=x", b"cn=a,dc=x"]), make_config())
    assert record.member_keys == ["cn=a,dc=x"]
    assert "not valid UTF-8" in record.problems[0]


def test_group_skips():
    config = make_config()
    with pytest.raises(SkipEntry, match="objectguid"):
        map_group(group_entry(guid=None), config)
    with pytest.raises(SkipEntry, match="group name"):
        map_group(group_entry(cn=None), config)
    with pytest.raises(SkipEntry, match="151 characters"):
        map_group(group_entry(cn="g" * 151), config)
    with pytest.raises(SkipEntry, match="UTF-8"):
        map_group(group_entry(cn=b"\xff"), config)
    assert map_group(group_entry(cn="g" * 150), config).name == "g" * 150


# -- DN normalisation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (r"CN=Doe\, John,OU=X,DC=example,DC=com", r"cn=doe\2c john,ou=x,dc=example,dc=com"),
        (r"CN=Doe\, John,OU=X", r"cn=doe\2C john, ou=x"),
        ("CN=Alice,OU=People,DC=Example,DC=COM", "cn=alice,ou=people,dc=example,dc=com"),
        ("cn=alice, ou=people, dc=example", "cn=alice,ou=people,dc=example"),
        ("cn = alice , ou = people", "cn=alice,ou=people"),
        ("cn=a+sn=b,dc=x", "SN=B+CN=A,DC=X"),
        ("cn=Jürgen,dc=x", r"cn=J\c3\bcrgen,dc=x"),
        ("CN=ÉLODIE,DC=X", "cn=élodie,dc=x"),
        (r"cn=a\+b,dc=x", r"cn=a\2Bb,dc=x"),
        (r"cn=\"quoted\",dc=x", r"cn=\22quoted\22,dc=x"),
        (r"cn=\#hash,dc=x", r"cn=\23hash,dc=x"),
    ],
)
def test_normalize_dn_equivalences(left, right):
    assert normalize_dn(left) == normalize_dn(right)


def test_normalize_dn_keeps_distinct_dns_distinct():
    assert normalize_dn("cn=a,dc=x") != normalize_dn("cn=b,dc=x")
    assert normalize_dn(r"cn=a\,b,dc=x") != normalize_dn("cn=a,cn=b,dc=x")
    assert normalize_dn("cn=a+sn=b,dc=x") != normalize_dn("cn=a,sn=b,dc=x")


def test_normalize_dn_output_is_parseable_and_stable():
    for dn in [r"CN=Doe\, John,OU=X", "cn=a+sn=b,dc=x", r"cn=J\c3\bcrgen,dc=x", "cn=x"]:
        once = normalize_dn(dn)
        assert normalize_dn(once) == once


@pytest.mark.parametrize("dn", ["not a dn", "cn=a;;;,", "=x", " GARBAGE "])
def test_normalize_dn_malformed_falls_back(dn):
    assert normalize_dn(dn) == dn.strip().lower()


def test_normalize_dn_empty():
    assert normalize_dn("") == ""


_dn_value = st.text(
    alphabet=st.characters(
        codec="utf-8", blacklist_categories=("Cs",), blacklist_characters="\x00"
    ),
    min_size=1,
    max_size=12,
).filter(lambda v: v.strip())
_dn_type = st.sampled_from(["cn", "CN", "ou", "OU", "dc", "uid", "sn", "o", "2.5.4.3"])


@given(st.lists(st.tuples(_dn_type, _dn_value), min_size=1, max_size=5))
def test_normalize_dn_fast_path_agrees_with_the_parser(rdns):
    """Whatever path a DN takes, the key is the one python-ldap's parser gives."""
    import ldap.dn

    dn = ldap.dn.dn2str([[(t, v, 1)] for t, v in rdns])
    assert normalize_dn(dn) == _normalize_dn_parsed(dn)
    # and the same DN typed with spaces after commas and upper-case types
    spaced = ", ".join(f"{t.upper()}={ldap.dn.escape_dn_chars(v)}" for t, v in rdns)
    assert normalize_dn(spaced) == normalize_dn(dn)


@given(st.text(max_size=40))
def test_normalize_dn_never_raises(text):
    assert isinstance(normalize_dn(text), str)


# -- photos -----------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [JPEG, PNG, GIF], ids=["jpeg", "png", "gif"])
def test_valid_photos_are_returned_reencoded_in_their_format(data):
    photo = validate_photo(data, 100_000, 1_000_000)
    assert photo.format == Image.open(io.BytesIO(data)).format
    assert Image.open(io.BytesIO(photo.data)).size == Image.open(io.BytesIO(data)).size


def test_oversized_photo_bytes():
    with pytest.raises(PhotoError, match="bytes"):
        validate_photo(JPEG, len(JPEG) - 1, 1_000_000)


def test_empty_photo():
    with pytest.raises(PhotoError, match="empty"):
        validate_photo(b"", 100, 100)


@pytest.mark.parametrize("data", [b"hello world", b"<svg xmlns='x'/>", b"\x00" * 100])
def test_not_an_image(data):
    with pytest.raises(PhotoError, match="not a JPEG"):
        validate_photo(data, 100_000, 1_000_000)


def test_other_image_formats_are_refused():
    for fmt in ("BMP", "TIFF", "WEBP"):
        with pytest.raises(PhotoError):
            validate_photo(image_bytes(fmt), 100_000, 1_000_000)


def test_corrupt_jpeg():
    index = JPEG.index(b"\xff\xc4")  # a Huffman table, overwritten with junk
    corrupt = JPEG[: index + 5] + b"\xff" * 20 + JPEG[index + 25 :]
    with pytest.raises(PhotoError, match="corrupt"):
        validate_photo(corrupt, 100_000, 1_000_000)


@pytest.mark.parametrize("cut", [2, 10, 0.5, 0.8])
def test_truncated_jpeg(cut):
    """verify() accepts these; only decoding the scan finds the missing data."""
    length = len(JPEG) - cut if isinstance(cut, int) else int(len(JPEG) * cut)
    with pytest.raises(PhotoError, match="corrupt"):
        validate_photo(JPEG[:length], 100_000, 1_000_000)


def test_truncated_png():
    with pytest.raises(PhotoError):
        validate_photo(PNG[: len(PNG) - 20], 100_000, 1_000_000)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = png_declaring(20000, 20000)  # 400 Mpixels declared in a few bytes
    assert len(bomb) < 200
    with pytest.raises(PhotoError, match="pixels"):
        validate_photo(bomb, 100_000, 4096 * 4096)


def test_photo_over_the_pixel_limit():
    with pytest.raises(PhotoError, match="5000x5000 pixels"):
        validate_photo(png_declaring(5000, 5000), 100_000, 4096 * 4096)
    with pytest.raises(PhotoError, match="pixels"):
        validate_photo(PNG, 100_000, 32 * 24 - 1)
    assert validate_photo(PNG, 100_000, 32 * 24).format == "PNG"


# -- photo file names -------------------------------------------------------------------------

NOW = datetime(2024, 1, 31, 12, 30, 45)
UUID_RE = "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}"


def test_photo_filename_default_template():
    name = photo_filename("{username}_{uuid4}.jpg", "alice", NOW)
    assert re.fullmatch(f"alice_{UUID_RE}.jpg", name)
    assert name != photo_filename("{username}_{uuid4}.jpg", "alice", NOW)


def test_photo_filename_strftime():
    assert photo_filename("{username}-%Y%m%d.jpg", "bob", NOW) == "bob-20240131.jpg"


@pytest.mark.parametrize(
    "username", ["../../etc/passwd", "..", "/", "a/../../b", "..\\..\\win", ".hidden", "%Y%m"]
)
def test_photo_filename_never_escapes(username):
    name = photo_filename("{username}.jpg", username, NOW)
    assert "/" not in name and "\\" not in name
    assert ".." not in name
    assert not name.startswith(".")
    assert "2024" not in name  # a username cannot inject strftime codes


def test_photo_filename_template_directories_are_dropped():
    assert photo_filename("photos/%Y/{username}.jpg", "bob", NOW) == "bob.jpg"
    assert photo_filename("../../{username}.jpg", "bob", NOW) == "bob.jpg"
    assert photo_filename("%D-{username}.jpg", "bob", NOW) == "24-bob.jpg"  # %D is 01/31/24


def test_photo_filename_falls_back_when_the_template_yields_nothing():
    assert re.fullmatch(f"bob_{UUID_RE}.jpg", photo_filename("{username}/", "bob", NOW))
    assert re.fullmatch(f"user_{UUID_RE}.jpg", photo_filename("..", "..", NOW))


def test_photo_filename_keeps_unicode_and_limits_length():
    assert photo_filename("{username}.jpg", "zoë", NOW) == "zoë.jpg"
    assert photo_filename("{username}.jpg", "u" * 150, NOW) == "u" * 64 + ".jpg"
    assert photo_filename("{username}.jpg", "john doe", NOW) == "john_doe.jpg"


# -- build_mapping_config (needs the app registry: tests/settings.py) -------------------------


def test_build_mapping_config_defaults(settings):
    config = build_mapping_config(is_ad=True)
    assert config.user_attributes == {
        "samaccountname": "username",
        "givenname": "first_name",
        "sn": "last_name",
        "mail": "email",
    }
    assert config.username_field == "username"
    assert config.user_field_max_lengths == {
        "username": 150,
        "first_name": 150,
        "last_name": 150,
        "email": 254,
    }
    assert config.email_fields == frozenset({"email"})
    assert config.identity_attribute == "objectguid"
    assert config.extra_attributes == ("useraccountcontrol",)
    assert config.exempt_usernames == {"admin", "administrator", "administrador", "guest"}
    assert config.group_attributes == {"cn": "name"}
    assert config.group_field_max_lengths == {"name": 150}
    assert config.member_attribute == "member"
    assert config.fieldcase == "lower"
    assert config.separator == "|"
    assert config.profiles == ()
    assert config.photo_name_template == "{username}_{uuid4}.jpg"
    assert config.photo_max_bytes == 5 * 1024 * 1024
    assert config.username_strict is False
    record = map_user(user_entry(sAMAccountName="o'neil"), config)  # the model's validators
    assert record.username == "o'neil" and "refused by the validators" in record.problems[0]
    assert build_mapping_config(is_ad=False).identity_attribute == "entryuuid"


def test_build_mapping_config_username_strict(settings):
    settings.LDAP_SYNC_USERNAME_STRICT = True
    config = build_mapping_config(is_ad=True)
    assert config.username_strict is True
    with pytest.raises(SkipEntry, match=r"validators of username \(LDAP_SYNC_USERNAME_STRICT\)"):
        map_user(user_entry(sAMAccountName="o'neil"), config)


def test_build_mapping_config_auto_identity_needs_is_ad():
    with pytest.raises(ValueError, match="is_ad"):
        build_mapping_config()


def test_build_mapping_config_explicit_identity(settings):
    settings.LDAP_SYNC_IDENTITY_ATTRIBUTE = "nsUniqueId"
    settings.LDAP_SYNC_GROUP_MEMBER_ATTRIBUTE = "uniqueMember"
    config = build_mapping_config()
    assert config.identity_attribute == "nsuniqueid"
    assert config.member_attribute == "uniquemember"


def test_build_mapping_config_profiles(settings):
    settings.LDAP_SYNC_USER_EXTRA_PROFILES = ["testapp.Employee"]
    settings.LDAP_SYNC_USER_EXTRA_ATTRIBUTES = ["userAccountControl", "department", "Title"]
    config = build_mapping_config(is_ad=True)
    (spec,) = config.profiles
    assert spec.label == "testapp.Employee"
    assert spec.text_fields == {"department": 100, "title": 100, "phone": 64}
    assert spec.other_fields == frozenset({"floor"})
    assert spec.attributes is None  # the naming rule
    assert spec.file_fields == frozenset({"thumbnailphoto", "jpegphoto"})
    assert "thumbnailphoto" in user_attribute_list(config)
    assert "jpegphoto" in user_attribute_list(config)  # the profile has a jpegphoto field too
    entry = user_entry(department="IT", title="Admin", thumbnailPhoto=JPEG)
    record = map_user(entry, config)
    assert record.profiles == {"testapp.Employee": {"department": "IT", "title": "Admin"}}
    assert record.photos == {"testapp.Employee": {"thumbnailphoto": JPEG, "jpegphoto": None}}


def test_profile_attributes_map_replaces_the_naming_rule_for_that_profile(settings):
    settings.LDAP_SYNC_USER_EXTRA_PROFILES = ["testapp.Employee"]
    settings.LDAP_SYNC_USER_EXTRA_ATTRIBUTES = ["userAccountControl", "department"]
    settings.LDAP_SYNC_USER_PROFILE_ATTRIBUTES = {
        "testapp.Employee": {"telephoneNumber": "phone", "jpegPhoto": "thumbnailphoto"}
    }
    config = build_mapping_config(is_ad=True)
    (spec,) = config.profiles
    assert spec.attributes == (("telephonenumber", "phone"), ("jpegphoto", "thumbnailphoto"))
    # Requested although no other setting names them.
    assert {"telephonenumber", "jpegphoto"} <= set(user_attribute_list(config))
    entry = user_entry(department="IT", telephoneNumber=["+1 555 0100", "+1 555 0101"],
                       jpegPhoto=JPEG, thumbnailPhoto=PNG)  # fmt: skip
    record = map_user(entry, config)
    # Only the map: "department" is read but the naming rule no longer fills the profile.
    assert record.profiles == {"testapp.Employee": {"phone": "+1 555 0100|+1 555 0101"}}
    assert record.photos == {"testapp.Employee": {"thumbnailphoto": JPEG}}
    assert map_user(user_entry(), config).profiles == {"testapp.Employee": {"phone": ""}}


@pytest.mark.parametrize(
    "attr_map, message",
    [
        ({"telephoneNumber": "fone"}, "'fone', which is not a field of testapp.Employee"),
        ({"roomNumber": "floor"}, "IntegerField, not a text, file or image field"),
        ({"a": "phone", "b": "phone"}, "maps both 'a' and 'b' to testapp.Employee.phone"),
    ],
)
def test_build_mapping_config_refuses_a_wrong_profile_map(settings, attr_map, message):
    from django.core.exceptions import ImproperlyConfigured

    settings.LDAP_SYNC_USER_EXTRA_PROFILES = ["testapp.Employee"]
    settings.LDAP_SYNC_USER_PROFILE_ATTRIBUTES = {"testapp.Employee": attr_map}
    with pytest.raises(ImproperlyConfigured, match=re.escape(message)):
        build_mapping_config(is_ad=True)


def test_unknown_schema_attributes_name_the_setting_that_maps_them(settings):
    settings.LDAP_SYNC_USER_ATTRIBUTES = {"uid": "username", "givenNam": "first_name"}
    settings.LDAP_SYNC_USER_EXTRA_ATTRIBUTES = ["titel", "callbackOnly", "department"]
    settings.LDAP_SYNC_USER_EXTRA_PROFILES = ["testapp.Employee", "testapp.Badge"]
    settings.LDAP_SYNC_USER_PROFILE_ATTRIBUTES = {"testapp.Badge": {"employeeNumbr": "number"}}
    config = build_mapping_config(is_ad=False)
    schema = {"uid", "givenname", "title", "employeenumber", "entryuuid", "2.5.4.12"}
    assert unknown_schema_attributes(config, schema) == [
        ("LDAP_SYNC_USER_ATTRIBUTES", "givenNam"),
        ("LDAP_SYNC_USER_EXTRA_ATTRIBUTES", "department"),  # fills Employee.department
        ("LDAP_SYNC_USER_PROFILE_ATTRIBUTES", "employeeNumbr"),
    ]
    # "titel" and "callbackOnly" fill no field; photo fields by the naming rule ask nothing;
    # options and OIDs are looked up by their attribute type.
    settings.LDAP_SYNC_USER_ATTRIBUTES = {"uid": "username", "2.5.4.12": "last_name"}
    settings.LDAP_SYNC_USER_EXTRA_ATTRIBUTES = ["titel", "callbackOnly"]
    settings.LDAP_SYNC_USER_PROFILE_ATTRIBUTES = {"testapp.Badge": {"title;lang-en": "number"}}
    assert unknown_schema_attributes(build_mapping_config(is_ad=False), schema) == []


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("USER_ATTRIBUTES", {"givenName": "first_name"}, "E014"),
        ("USER_ATTRIBUTES", {"sAMAccountName": "username", "x": "nope"}, "E015.*'nope'"),
        ("USER_ATTRIBUTES", {"sAMAccountName": "username", "x": "is_staff"}, "E015.*is_staff"),
        ("USER_ATTRIBUTES", {"sAMAccountName": "username", "x": "password"}, "E015.*password"),
        ("USER_EXTRA_PROFILES", ["testapp.Nope"], "E019"),
        ("USER_EXTRA_PROFILES", ["nodot"], "E019"),
        ("USER_CHANGE_FIELDCASE", "title", "E010.*CHANGE_FIELDCASE"),
        ("GROUP_ATTRIBUTES", {"description": "description"}, "E017"),
    ],
)
def test_build_mapping_config_errors(settings, name, value, message):
    """The mapper reads the validated settings: a value the checks refuse never reaches it."""
    from adldap_auth.conf import ConfigError

    setattr(settings, f"LDAP_SYNC_{name}", value)
    with pytest.raises(ConfigError, match=message):
        build_mapping_config(is_ad=True)


def test_config_is_frozen():
    config = make_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.separator = ","  # type: ignore[misc]


def test_guid_helper_round_trip():
    assert decode_identity("objectguid", uuid.UUID(GUID).bytes_le) == GUID


