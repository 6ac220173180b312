"""The DirSync control's BER value and the parsing of DirSync replies, without a server.

Encodings are checked byte for byte (AD wants the flag 0x80000000 as the four octets
80 00 00 00) and against pyasn1's independent BER codec. The ``moreResults`` loop, which
Samba never exercises (it answers in one reply), runs against a scripted connection.
"""

from __future__ import annotations

import uuid

import ldap
import pytest
from ldap.controls import RequestControlTuples
from pyasn1.codec.ber import decoder, encoder
from pyasn1.type import namedtype, univ

from adldap_auth.directory import DirectoryError
from adldap_auth.directory.connection import ConnectionConfig, DirectorySession
from adldap_auth.directory.dirsync import (
    DIRSYNC_OID,
    LDAP_DIRSYNC_INCREMENTAL_VALUES,
    LDAP_DIRSYNC_OBJECT_SECURITY,
    DirSyncRequestControl,
    DirSyncResponseControl,
    decode_response_value,
    encode_request_value,
    read_changes,
)


class Value(univ.Sequence):
    """The shape of both the request and the response value, for pyasn1's codec."""

    componentType = namedtype.NamedTypes(
        namedtype.NamedType("first", univ.Integer()),
        namedtype.NamedType("second", univ.Integer()),
        namedtype.NamedType("cookie", univ.OctetString()),
    )


def asn1_decode(data: bytes) -> tuple[int, int, bytes]:
    value, rest = decoder.decode(data, asn1Spec=Value())
    assert rest == b""
    return int(value["first"]), int(value["second"]), bytes(value["cookie"])


def asn1_encode(first: int, second: int, cookie: bytes) -> bytes:
    value = Value()
    value["first"], value["second"], value["cookie"] = first, second, cookie
    return encoder.encode(value)


# -- request value ---------------------------------------------------------------------------


def test_incremental_values_flag_is_four_octets_as_ad_expects() -> None:
    assert encode_request_value(LDAP_DIRSYNC_INCREMENTAL_VALUES, 1_048_576, b"") == bytes.fromhex(
        "300d02048000000002031000000400"
    )


@pytest.mark.parametrize(
    ("flags", "octets"),
    [
        (0, "020100"),
        (LDAP_DIRSYNC_OBJECT_SECURITY, "020101"),
        (0x7F, "02017f"),
        (0x80, "02020080"),
        (0x800, "02020800"),
        (LDAP_DIRSYNC_INCREMENTAL_VALUES | LDAP_DIRSYNC_OBJECT_SECURITY, "020480000001"),
        (0x7FFFFFFF, "02047fffffff"),
        (0xFFFFFFFF, "0201ff"),
    ],
)
def test_flags_are_shortest_signed_32_bit_integers(flags: int, octets: str) -> None:
    encoded = encode_request_value(flags, 0, b"")
    assert encoded[2 : 2 + len(octets) // 2] == bytes.fromhex(octets)
    signed = flags - 2**32 if flags >= 2**31 else flags
    assert asn1_decode(encoded) == (signed, 0, b"")


@pytest.mark.parametrize("size", [0, 1, 127, 128, 255, 300, 70_000])
def test_cookies_of_any_length_round_trip_through_pyasn1(size: int) -> None:
    cookie = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    encoded = encode_request_value(LDAP_DIRSYNC_INCREMENTAL_VALUES, 1_048_576, cookie)
    assert asn1_decode(encoded) == (-(2**31), 1_048_576, cookie)


@pytest.mark.parametrize("flags", [-(2**31) - 1, 2**32])
def test_flags_beyond_32_bits_are_refused(flags: int) -> None:
    with pytest.raises(ValueError, match="32-bit"):
        encode_request_value(flags, 0, b"")


def test_request_control_is_critical_and_encodes_its_value() -> None:
    control = DirSyncRequestControl(LDAP_DIRSYNC_INCREMENTAL_VALUES, b"cookie", max_bytes=100)
    assert RequestControlTuples([control]) == [
        (DIRSYNC_OID, True, encode_request_value(LDAP_DIRSYNC_INCREMENTAL_VALUES, 100, b"cookie"))
    ]


# -- response value --------------------------------------------------------------------------


@pytest.mark.parametrize("more", [0, 1, -1, 2**31 - 1])
@pytest.mark.parametrize("size", [0, 108, 200, 70_000])
def test_response_values_encoded_by_pyasn1_decode(more: int, size: int) -> None:
    cookie = b"MSDS" + b"\x01" * size
    assert decode_response_value(asn1_encode(more, 0, cookie)) == (more, 0, cookie)
    control = DirSyncResponseControl()
    control.decodeControlValue(asn1_encode(more, 0, cookie))
    assert (control.more_results, control.cookie) == (more != 0, cookie)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes.fromhex("3100"),  # not a SEQUENCE
        bytes.fromhex("3003020100"),  # missing integer and cookie
        bytes.fromhex("30080201000201000401"),  # cookie longer than the data
        bytes.fromhex("3008020100020100040000"),  # a byte after the SEQUENCE
        bytes.fromhex("3009020100020100040000"),  # SEQUENCE longer than its fields
        bytes.fromhex("300802000201000400"),  # empty INTEGER
        bytes.fromhex("3008040100020100040000"),  # OCTET STRING where an INTEGER belongs
    ],
)
def test_malformed_response_values_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_response_value(data)


# -- replies, against a scripted connection ---------------------------------------------------

BASE = "DC=example,DC=test"
SERVICE = "CN=NTDS Settings,CN=DC1,CN=Servers,CN=Site,CN=Sites,CN=Configuration,DC=example,DC=test"
INVOCATION = uuid.UUID("d85a92ce-6351-4589-bb56-6b66d4810c33")


def guid(n: int) -> bytes:
    return uuid.UUID(int=n).bytes_le


class ScriptedConnection:
    """Answers the rootDSE, the NTDS Settings object, then one DirSync reply per search."""

    def __init__(self, replies: list[tuple[list, int, bytes]]) -> None:
        self.replies = replies
        self.requests: list[tuple[str, str, list[str], bytes | None]] = []
        self.pending: list = []

    def search_ext(self, base, scope, filterstr, attrlist, serverctrls=None):
        cookie = serverctrls[0].cookie if serverctrls else None
        self.requests.append((base, filterstr, list(attrlist), cookie))
        if base == "":
            root = {
                "namingContexts": [BASE.encode()],
                "supportedControl": [DIRSYNC_OID.encode()],
                "dsServiceName": [SERVICE.encode()],
            }
            self.pending.append(([("", root)], []))
        elif base == SERVICE:
            self.pending.append(([(SERVICE, {"invocationId": [INVOCATION.bytes_le]})], []))
        else:
            data, more, next_cookie = self.replies.pop(0)
            control = DirSyncResponseControl()
            control.decodeControlValue(asn1_encode(more, 0, next_cookie))
            self.pending.append((data, [control]))
        return len(self.requests)

    def result3(self, msgid, all=1, timeout=None, resp_ctrl_classes=None):
        data, controls = self.pending.pop(0)
        return ldap.RES_SEARCH_RESULT, data, msgid, controls


def session_for(connection: ScriptedConnection) -> DirectorySession:
    return DirectorySession(connection, "ldap://dc1", ConnectionConfig((), "", ""))  # type: ignore[arg-type]


def test_reads_on_while_the_server_has_more_and_merges_the_rounds() -> None:
    group = f"CN=G,OU=Lab,{BASE}"
    tombstone = f"CN=Gone\\0ADEL:{uuid.UUID(int=3)},CN=Deleted Objects,{BASE}"
    replies = [
        (
            [
                (group, {"objectGUID": [guid(1)], "member;range=1-1": [b"CN=A"], "instanceType": [b"4"]}),
                (f"CN=U,OU=Lab,{BASE}", {"objectGUID": [guid(2)], "title": [b"Old"]}),
                (None, ["ldap://elsewhere/DC=x"]),
            ],
            1,
            b"c1",
        ),
        (
            [
                (group, {"objectGUID": [guid(1)], "member;range=1-1": [b"CN=B"], "member;range=0-0": [b"CN=C"]}),
                (f"CN=U2,OU=Lab,{BASE}", {"objectGUID": [guid(2)], "title": [b"New"], "department": []}),
                (tombstone, {"objectGUID": [guid(3)], "isDeleted": [b"TRUE"], "title": []}),
                ("", {"objectGUID": [guid(4)]}),
            ],
            0,
            b"c2",
        ),
    ]  # fmt: skip
    connection = ScriptedConnection(replies)
    batch = read_changes(session_for(connection), BASE, "(objectClass=user)", ["title"], b"c0")
    assert [request[3] for request in connection.requests] == [None, None, b"c0", b"c1"]
    assert connection.requests[2][1] == "(|(objectClass=user)(isDeleted=TRUE))"
    assert connection.requests[2][2] == ["title", "objectGUID", "isDeleted"]
    assert (batch.cookie, batch.searches, batch.complete) == (b"c2", 2, False)
    assert batch.invocation_id == str(INVOCATION)
    assert batch.server == "ldap://dc1"
    assert batch.deleted == [str(uuid.UUID(int=3)), str(uuid.UUID(int=4))]
    by_guid = {entry.guid: entry for entry in batch.entries}
    assert set(by_guid) == {str(uuid.UUID(int=1)), str(uuid.UUID(int=2))}
    changed_group = by_guid[str(uuid.UUID(int=1))]
    assert (changed_group.changed, changed_group.added, changed_group.removed) == (
        {},
        {"member": [b"CN=A", b"CN=B"]},
        {"member": [b"CN=C"]},
    )
    user = by_guid[str(uuid.UUID(int=2))]
    assert user.dn == f"CN=U2,OU=Lab,{BASE}"  # renamed between the rounds
    assert user.changed == {"title": [b"New"], "department": []}


def test_a_first_read_is_complete_and_does_not_widen_the_filter() -> None:
    connection = ScriptedConnection([([], 0, b"c1")])
    batch = read_changes(session_for(connection), BASE.lower(), "(objectClass=user)", [], None)
    assert connection.requests[2][1] == "(objectClass=user)"
    assert (batch.complete, batch.entries, batch.deleted, batch.cookie) == (True, [], [], b"c1")


def test_a_bare_filter_is_parenthesised_before_taking_tombstones_too() -> None:
    connection = ScriptedConnection([([], 0, b"c1")])
    read_changes(session_for(connection), BASE, "objectClass=user", [], b"c0")
    assert connection.requests[2][1] == "(|(objectClass=user)(isDeleted=TRUE))"


def test_a_base_below_the_naming_context_is_refused_before_searching() -> None:
    connection = ScriptedConnection([])
    with pytest.raises(DirectoryError, match="naming context"):
        read_changes(session_for(connection), f"OU=Lab,{BASE}", "(objectClass=user)", [], None)
    assert len(connection.requests) == 2  # the rootDSE and the NTDS Settings object only
