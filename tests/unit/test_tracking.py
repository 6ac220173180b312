"""Unit tests of adldap_auth.tracking.entry_changed: the byte comparison of whole-second
timestamps must agree with parsing them, at and around the marker, with or without fractions."""

from __future__ import annotations

from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest

from adldap_auth.directory.decoding import parse_generalized_time
from adldap_auth.tracking import TIMESTAMP, USN, Tracking, entry_changed

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
