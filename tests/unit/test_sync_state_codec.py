"""The Sync State control decoded by hand equals python-ldap's pyasn1 decoding."""

from __future__ import annotations

import uuid

import pytest
from ldap.syncrepl import SyncCookie, SyncStateControl, SyncStateOp, SyncStateValue, SyncUUID
from pyasn1.codec.ber import encoder
from pyasn1.error import PyAsn1Error

from adldap_auth.directory.contentsync import SyncState

UUIDS = [
    uuid.UUID(int=0),
    uuid.UUID("470bedf5-f0c7-5ab3-9766-c1ada8619539"),
    uuid.UUID(int=2**128 - 1),
]


def encoded(state: int, entry_uuid: uuid.UUID, cookie: bytes | None) -> bytes:
    value = SyncStateValue()
    value.setComponentByName("state", SyncStateOp(state))
    value.setComponentByName("entryUUID", SyncUUID(entry_uuid.bytes))
    if cookie is not None:
        value.setComponentByName("cookie", SyncCookie(cookie))
    return encoder.encode(value)


@pytest.mark.parametrize("state", range(4))
@pytest.mark.parametrize("entry_uuid", UUIDS)
@pytest.mark.parametrize(
    "cookie", [None, b"", b"rid=000,csn=20261208010203.000000Z#000000#000#000000", b"x" * 300]
)
def test_decoding_matches_python_ldap(state, entry_uuid, cookie):
    data = encoded(state, entry_uuid, cookie)
    ours, theirs = SyncState(), SyncStateControl()
    ours.decodeControlValue(data)
    theirs.decodeControlValue(data)
    assert (ours.state, ours.entryUUID, ours.cookie) == (
        theirs.state,
        theirs.entryUUID,
        theirs.cookie,
    )


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x30\x00",
        b"\x31\x15\x0a\x01\x01\x04\x10" + bytes(16),  # not a SEQUENCE
        b"\x30\x14\x0a\x01\x01\x04\x0f" + bytes(15),  # a 15-byte UUID
        b"\x30\x15\x0a\x01\x07\x04\x10" + bytes(16),  # no such state
        b"\x30\x15\x0a\x01\x01\x04\x10" + bytes(15),  # truncated
        b"\x30\x15\x0a\x01\x01\x04\x10" + bytes(16) + b"\x00",  # trailing bytes
    ],
)
def test_malformed_values_raise_the_decoding_error_the_reader_reports(data):
    with pytest.raises(PyAsn1Error):
        SyncState().decodeControlValue(data)
