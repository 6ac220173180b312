"""Directory values as the mappers read them: identities, SIDs, text, DNs, field-name case.

Shared by :func:`~adldap_auth.mapping.map_user` and :func:`~adldap_auth.mapping.map_group`, and
by the batch runs and logins that need an entry's id or member key without mapping it whole.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from functools import lru_cache
from sys import intern
from typing import TYPE_CHECKING

import ldap
import ldap.dn

from ..directory import Entry
from ..directory.decoding import domain_sid_and_rid, guid_to_str, sid_to_str

if TYPE_CHECKING:
    from .config import MappingConfig


#: Identity attributes holding a 16-byte little-endian GUID rather than text.
BINARY_GUID_ATTRIBUTES = frozenset({"objectguid", "ms-ds-consistencyguid"})


class SkipEntry(Exception):
    """This entry cannot be synced; the message says why.

    The message never contains the DN (``exc.dn`` holds it, for the caller's log line) nor any
    secret. ``exc.exempt`` is True when the username is in ``LDAP_SYNC_USER_EXEMPT_FROM_SYNC``
    (an expected skip, to count rather than report as a problem).
    """

    def __init__(self, message: str, dn: str | None = None, *, exempt: bool = False) -> None:
        super().__init__(message)
        self.dn = dn
        self.exempt = exempt


# --------------------------------------------------------------------------------------------
# Identities and SIDs

#: A UUID in its canonical text form (lower case, hyphenated), as OpenLDAP's entryUUID reads.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def decode_identity(attr: str, raw: bytes) -> str:
    """An identity attribute's value as the canonical ``*_guid`` string.

    objectGUID (16 bytes) -> UUID string; a textual UUID (entryUUID, ipaUniqueID...) -> its
    canonical lower-case form; any other text (nsUniqueId...) -> stripped and lower-cased.
    ``ValueError`` (``UnicodeDecodeError`` included) when it cannot be decoded. Everything that
    compares entry ids (sync's "present" sets, identity links) must use this function.
    """
    if attr in BINARY_GUID_ATTRIBUTES:
        return guid_to_str(raw)
    text = raw.decode("utf-8").strip()
    if not text:
        raise ValueError("empty identity value")
    if _CANONICAL_UUID.fullmatch(text):
        return text  # already what str(uuid.UUID(text)) gives: skip two conversions
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return text.lower()


def _identity(entry: Entry, config: MappingConfig) -> str:
    raw = entry.first(config.identity_attribute)
    if raw is None:
        raise SkipEntry(f"no {config.identity_attribute} attribute", entry.dn)
    try:
        return decode_identity(config.identity_attribute, raw)
    except ValueError:  # includes UnicodeDecodeError
        raise SkipEntry(f"{config.identity_attribute} cannot be decoded", entry.dn) from None


def _sid(entry: Entry, problems: list[str]) -> str | None:
    raw = entry.first("objectsid")
    if raw is None:
        return None
    try:
        return sid_to_str(raw)
    except ValueError:
        problems.append("attribute objectsid cannot be decoded; ignored")
        return None


# --------------------------------------------------------------------------------------------
# Text values


def _decode_special(attr: str, values: list[bytes], separator: str) -> str | None:
    """Text form of the binary attributes we know; None for ordinary attributes."""
    if attr in BINARY_GUID_ATTRIBUTES:
        return separator.join(guid_to_str(v) for v in values)
    if attr == "objectsid":
        return separator.join(sid_to_str(v) for v in values)
    return None


def _text(
    attr: str,
    target: str,
    values: list[bytes] | None,
    separator: str | None,
    max_length: int | None,
    problems: list[str],
) -> str | None:
    """One text value for ``target`` (a field), or None to leave the field unchanged.

    ``separator`` None: the first value only; otherwise all values joined.
    """
    if not values:
        return ""
    chosen = values if separator is not None else values[:1]
    try:
        value = _decode_special(attr, chosen, separator or "")
        if value is None:
            value = join_values(chosen, separator or "")
    except UnicodeDecodeError:
        problems.append(f"attribute {attr} is not valid UTF-8 text; {target} left unchanged")
        return None
    except ValueError:
        problems.append(f"attribute {attr} cannot be decoded; {target} left unchanged")
        return None
    if "\x00" in value:
        value = value.replace("\x00", "")
        problems.append(f"attribute {attr} contains NUL characters; removed from {target}")
    if max_length is not None and len(value) > max_length:
        problems.append(
            f"attribute {attr} is {len(value)} characters long; {target} truncated to {max_length}"
        )
        value = value[:max_length]
    return value


def fieldcase(name: str, mode: str | None) -> str:
    """Apply ``LDAP_SYNC_USER_CHANGE_FIELDCASE`` (None, "lower" or "upper") to a name."""
    if mode is None:
        return name
    if mode == "lower":
        return name.lower()
    if mode == "upper":
        return name.upper()
    raise ValueError(f"fieldcase must be None, 'lower' or 'upper', not {mode!r}")


def join_values(values: Iterable[bytes], separator: str) -> str:
    """Decode (strict UTF-8) and join the values of a multi-valued attribute."""
    return separator.join(value.decode("utf-8") for value in values)


# --------------------------------------------------------------------------------------------
# DNs

_DN_VALUE = r'[^,=+"\\<>;#\x00-\x20\x7f](?:[^,=+"\\<>;\x00-\x1f\x7f]*[^,=+"\\<>;\x00-\x20\x7f])?'
_DN_TYPE = r"(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)*)"
_DN_AVA = f"{_DN_TYPE}={_DN_VALUE}"
#: DNs with nothing to unescape or reorder: their normal form is just their lower-case form.
_SIMPLE_DN = re.compile(f"{_DN_AVA}(?:,{_DN_AVA})*")


def normalize_dn(dn: str) -> str:
    """The canonical comparison key of a DN.

    Attribute types and values are lower-cased, escapes are resolved (``\\2c`` and ``\\,`` are
    the same comma, ``\\c3\\bc`` is ``ü``), spaces around separators dropped, and the values
    of a multi-valued RDN (``cn=a+sn=b``) sorted; the result is serialised by
    ``ldap.dn.dn2str``. A malformed DN falls back to its stripped lower-case form.

    Plain DNs (most of them) take a regular-expression fast path; the others are parsed by
    python-ldap and cached.
    """
    if _SIMPLE_DN.fullmatch(dn):
        return dn.lower()
    return _normalize_dn_parsed(dn)


@lru_cache(maxsize=1 << 16)
def _normalize_dn_parsed(dn: str) -> str:
    try:
        parsed = ldap.dn.str2dn(dn, flags=ldap.DN_FORMAT_LDAPV3)
    except (ldap.LDAPError, ValueError, TypeError):
        return dn.strip().lower()
    return ldap.dn.dn2str(
        [
            sorted((atype.lower(), (avalue or "").lower(), 1) for atype, avalue, _ in rdn)
            for rdn in parsed
        ]
    )


# --------------------------------------------------------------------------------------------
# Directory rules shared by batch runs and logins


def entry_guid(entry: Entry, identity_attribute: str) -> str | None:
    """An entry's immutable id as stored in identity links, or None when it has none."""
    raw = entry.first(identity_attribute)
    if raw is None:
        return None
    try:
        return decode_identity(identity_attribute.lower(), raw)
    except ValueError:
        return None


def username_attribute(config: MappingConfig) -> str:
    """The attribute mapped to the username field."""
    return next(a for a, f in config.user_attributes.items() if f == config.username_field)


def member_key_of(entry: Entry, config: MappingConfig) -> str:
    """How group member values name this entry (as :attr:`UserRecord.member_key`)."""
    if config.member_attribute == "memberuid":
        try:
            value = entry.text(username_attribute(config)) or ""
        except UnicodeDecodeError:  # map_user skips the entry and says why
            return ""
        return intern(value.lower())
    # Interned: the same string object as the group member values naming this entry
    # (group_entries), so that a run holding both keeps one copy of each key.
    return intern(normalize_dn(entry.dn))


def primary_group_sid_of(entry: Entry) -> str | None:
    """The SID of an AD entry's primary group (domain SID + ``primaryGroupID``), or None."""
    raw_sid, raw_rid = entry.first("objectsid"), entry.first("primarygroupid")
    if raw_sid is None or raw_rid is None:
        return None
    try:
        return f"{domain_sid_and_rid(sid_to_str(raw_sid))[0]}-{int(raw_rid)}"
    except ValueError:
        return None
