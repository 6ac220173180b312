"""Pure decoders for Active Directory's binary and time formats."""

from __future__ import annotations

import struct
import uuid
from datetime import UTC, datetime, timedelta

#: userAccountControl flags we act on.
UF_ACCOUNTDISABLE = 0x0002
UF_NORMAL_ACCOUNT = 0x0200


def guid_to_str(raw: bytes) -> str:
    """objectGUID (16 bytes, little-endian fields) to its canonical UUID string."""
    if len(raw) != 16:
        raise ValueError(f"objectGUID must be 16 bytes, got {len(raw)}")
    return str(uuid.UUID(bytes_le=raw))


def guid_to_bytes(guid: str) -> bytes:
    """Inverse of :func:`guid_to_str`."""
    return uuid.UUID(guid).bytes_le


def sid_to_str(raw: bytes) -> str:
    """objectSid bytes to ``S-1-5-21-...``."""
    if len(raw) < 8:
        raise ValueError("objectSid is too short")
    revision, count = raw[0], raw[1]
    if len(raw) != 8 + 4 * count:
        raise ValueError("objectSid length does not match its sub-authority count")
    authority = int.from_bytes(raw[2:8], "big")
    subs = struct.unpack("<" + "I" * count, raw[8:])
    return "S-" + "-".join(str(part) for part in (revision, authority, *subs))


def sid_to_bytes(sid: str) -> bytes:
    """``S-1-5-21-...`` to objectSid bytes (for filters and tests)."""
    parts = sid.split("-")
    if len(parts) < 3 or parts[0].upper() != "S":
        raise ValueError(f"not a SID: {sid!r}")
    revision, authority, *subs = (int(p) for p in parts[1:])
    return (
        bytes([revision, len(subs)])
        + authority.to_bytes(6, "big")
        + struct.pack("<" + "I" * len(subs), *subs)
    )


def domain_sid_and_rid(sid: str) -> tuple[str, int]:
    """Split an account SID into its domain SID and relative id."""
    domain, _, rid = sid.rpartition("-")
    return domain, int(rid)


def uac_disabled(value: int | str | bytes | None) -> bool:
    """True if userAccountControl has ACCOUNTDISABLE (0x2) set; a missing value is enabled."""
    if value is None:
        return False
    if isinstance(value, bytes):
        value = value.decode("ascii")
    return bool(int(value) & UF_ACCOUNTDISABLE)


def parse_generalized_time(value: str | bytes) -> datetime:
    """LDAP GeneralizedTime (``20240131120000.0Z``, ``20240131120000Z``) to an aware datetime."""
    if isinstance(value, bytes):
        value = value.decode("ascii")
    text = value.strip()
    if not text.endswith("Z"):
        raise ValueError(f"only UTC generalized times are supported: {value!r}")
    text = text[:-1]
    base, _, fraction = text.partition(".")
    parsed = datetime.strptime(base, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    if fraction:
        parsed += timedelta(microseconds=int(fraction.ljust(6, "0")[:6]))
    return parsed


def format_generalized_time(moment: datetime, fmt: str = "%Y%m%d%H%M%S.0Z") -> str:
    """Aware datetime to GeneralizedTime in UTC, by ``LDAP_SYNC_INCREMENTAL_TIMESTAMPFORMAT``."""
    return moment.astimezone(UTC).strftime(fmt)
