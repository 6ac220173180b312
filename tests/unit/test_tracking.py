"""Unit tests of adldap_auth.tracking.entry_changed: the byte comparison of whole-second
timestamps must agree with parsing them, at and around the marker, with or without fractions."""

from __future__ import annotations

from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest

from adldap_auth.directory.decoding import parse_generalized_time
from adldap_auth.directory.dirsync import DIRSYNC_OID
from adldap_auth.directory.rootdse import RootDSE
from adldap_auth.tracking import (
    DIRSYNC,
    DIRSYNC_COOKIE,
    DIRSYNC_DC,
    TIMESTAMP,
    USN,
    Tracking,
    choose_mode,
    choose_tracking,
    entry_changed,
)

STAMPS = [
    b"20261126094959Z",
    b"20261126095000Z",
    b"20261126095001Z",
    b"20261126100000Z",
    b"20251231235959Z",
    b"20261126095000.0Z",  # AD's layout: parsed
    b"20261126095000.7Z",
]


@pytest.mark.parametrize("marker", ["2026-11-26T10:00:00+00:00", "2026-11-26T10:00:00.5+00:00"])
@pytest.mark.parametrize("stamp", STAMPS)
def test_timestamp_comparison_agrees_with_parsing(marker, stamp):
    since = SimpleNamespace(timestamp=marker)
    expected = parse_generalized_time(stamp) >= parse_iso(marker) - timedelta(minutes=10)
    assert entry_changed(stamp, Tracking(TIMESTAMP, "modifytimestamp"), since, 10) is expected


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_missing_or_unreadable_values_count_as_changed():
    marker = SimpleNamespace(timestamp="2026-11-26T10:00:00+00:00", highest_usn=100)
    assert entry_changed(None, Tracking(TIMESTAMP, "modifytimestamp"), marker, 0)
    assert entry_changed(b"yesterday", Tracking(TIMESTAMP, "modifytimestamp"), marker, 0)
    assert entry_changed(b"101", Tracking(USN, "usnchanged"), marker, 0)
    assert not entry_changed(b"100", Tracking(USN, "usnchanged"), marker, 0)


# -- "dirsync" --------------------------------------------------------------------------------

AD_ID = "8d8c6f8e-0000-4000-8000-000000000001"


def ad_root(**overrides) -> RootDSE:
    values = {
        "is_ad": True,
        "naming_context": "DC=example,DC=test",
        "highest_committed_usn": 5000,
        "ds_service_name": "CN=NTDS Settings,...",
        "invocation_id": AD_ID,
        "current_time": None,
        "vendor": None,
        "supported_controls": frozenset({DIRSYNC_OID}),
    }
    values.update(overrides)
    return RootDSE(**values)


@pytest.mark.parametrize(
    ("root", "identity", "member", "expected", "warning"),
    [
        (ad_root(), "objectguid", "member", DIRSYNC, None),
        (ad_root(supported_controls=frozenset()), "objectguid", "member", USN, "DirSync"),
        (
            ad_root(is_ad=False, highest_committed_usn=None),
            "objectguid",
            "member",
            TIMESTAMP,
            "DirSync",
        ),
        (ad_root(), "entryuuid", "member", USN, "objectguid"),
        (ad_root(), "objectguid", "memberuid", USN, "memberUid"),
    ],
    ids=["ad", "no-control", "not-ad", "other-identity", "memberuid"],
)
def test_dirsync_tracking_falls_back_to_auto_with_a_warning(
    root, identity, member, expected, warning, caplog
):
    assert choose_tracking(root, DIRSYNC, member, identity).kind == expected
    assert (warning in caplog.text) if warning else not caplog.text


@pytest.mark.parametrize(
    ("cookies", "mode", "reason"),
    [
        ({DIRSYNC_COOKIE: "TVNEUw==", DIRSYNC_DC: AD_ID}, "incremental", "changes since"),
        ({}, "full", "no DirSync cookie"),
        ({DIRSYNC_COOKIE: "TVNEUw==", DIRSYNC_DC: "another"}, "full", "another domain controller"),
        ({DIRSYNC_COOKIE: "TVNEUw=="}, "full", "another domain controller"),
    ],
    ids=["same-dc", "no-cookie", "other-dc", "no-dc"],
)
def test_a_dirsync_cookie_serves_only_its_own_domain_controller(cookies, mode, reason):
    marker = SimpleNamespace(feed_cookies=cookies, incrementals_since_full=0)
    chosen = choose_mode(
        None,
        marker,
        ad_root(),
        Tracking(DIRSYNC, "usnchanged"),
        incremental_allowed=True,
        between_full=5,
    )
    assert chosen[0] == mode and reason in chosen[1]
