"""The user's entry as the login found it: django-auth-ldap's view of it, what the mapper
reads of it, and which server it came from."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import ldap

from ..directory import Entry
from ..directory.connection import DirectorySession
from ..mapping import MappingConfig, user_attribute_list


class DirectoryAttrs(ldap.cidict.cidict):
    """django-auth-ldap's view of a user's attributes (case-insensitive, values decoded to
    ``str`` when they are UTF-8), carrying the raw :class:`~adldap_auth.directory.Entry` (exact
    DN, ``bytes`` values) that the mapper needs, as ``entry``."""

    __slots__ = ("entry",)


def decoded_attrs(entry: Entry, raw: dict[str, list[bytes]]) -> DirectoryAttrs:
    """django-auth-ldap's decoding (each value to ``str`` when it is UTF-8) plus the entry."""
    attrs = DirectoryAttrs()
    for name, values in raw.items():
        attrs[name] = [_decode(value) for value in values]
    attrs.entry = entry
    return attrs


def _decode(value: bytes) -> str | bytes:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


def is_ad_entry(entry: Entry) -> bool:
    """Whether an entry comes from Active Directory: objectGUID and objectSid, no entryUUID.

    Used instead of a rootDSE read (one more round trip per login); it agrees with the
    batch's rootDSE test on AD, Samba AD and OpenLDAP. A site whose entries defeat it sets
    ``LDAP_SYNC_IDENTITY_ATTRIBUTE`` explicitly.
    """
    attrs = entry.attrs
    return "entryuuid" not in attrs and "objectguid" in attrs and "objectsid" in attrs


def mapping_entry(entry: Entry, config: MappingConfig) -> Entry:
    """The entry restricted to what a batch run reads, so callbacks see the same attributes."""
    wanted = set(user_attribute_list(config))
    return Entry(entry.dn, {k: v for k, v in entry.attrs.items() if k in wanted})


def complete_ranges(session: DirectorySession, entry: Entry) -> Entry:
    """Fetch the rest of attributes returned in ranges (``memberOf;range=0-1499`` on Windows
    AD for users in more than 1,500 groups): one more search, only in that case."""
    ranged = {key.partition(";")[0] for key in entry.attrs if ";range=" in key}
    if not ranged:
        return entry
    whole = session.read_entry(entry.dn, sorted(ranged))
    attrs = {k: v for k, v in entry.attrs.items() if ";range=" not in k}
    if whole is not None:
        attrs.update({k: v for k, v in whole.attrs.items() if k in ranged})
    return Entry(entry.dn, attrs)


def connected_uri(connection: Any, uris: Sequence[str]) -> str:
    """The URI of ``uris`` that ``connection`` (a libldap failover list) is connected to.

    Found from the socket's peer address; "" when it cannot be told (a host name, a proxy).
    Only used for :attr:`DirectoryUser.server`, an informative field.
    """
    try:
        fd = connection.get_option(ldap.OPT_DESC)
        with socket.socket(fileno=os.dup(fd)) as sock:
            host, port = sock.getpeername()[:2]
    except (ldap.LDAPError, OSError, TypeError, ValueError):
        return uris[0] if len(uris) == 1 else ""
    for uri in uris:
        parts = urlsplit(uri)
        default_port = 636 if parts.scheme.lower() == "ldaps" else 389
        try:
            uri_port = parts.port or default_port
        except ValueError:
            continue
        if parts.hostname == host and uri_port == port:
            return uri
    return uris[0] if len(uris) == 1 else ""
