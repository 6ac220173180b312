"""A :class:`~tests.lab.spec.DirectorySpec` as OpenLDAP entries, LDIF and change operations.

Layout (all under ``dc=example,dc=test``)::

    cn=admin                                 rootdn (test mutations), password ROOT_PASSWORD
    cn=reader                                read-only bind account, password READER_PASSWORD
    ou=People                                UserSpec.ou "People": users directly here
      ou=<UserSpec.ou>                       one OU per other UserSpec.ou
        uid=<key>                            inetOrgPerson + extensibleObject
    ou=Groups                                GroupSpec.ou "Groups": groups directly here
      ou=<GroupSpec.ou>                      one OU per other GroupSpec.ou
        cn=<name>                            groupOfNames, ``member`` = user and group DNs

Users are ``inetOrgPerson`` (uid, cn, givenName, sn, mail, title, departmentNumber,
userPassword, jpegPhoto). The auxiliary class ``extensibleObject`` (RFC 4512, core schema)
lets them also carry two Active Directory attributes of Debian's ``msuser`` schema, which has
no auxiliary class of its own: ``department`` (same value as ``departmentNumber``) and
``userAccountControl`` (512, or 514 = ACCOUNTDISABLE for a disabled user). So "disabled" is
the same bit as on AD, found with the same filter (:data:`DISABLED_FILTER`, slapd implements
the bitwise-AND matching rule), and an ACL in :mod:`tests.lab.slapd` refuses binds of disabled
users, as AD does. ``userAccountControl`` has no EQUALITY rule in msuser, so only that
extensible-match filter works on it, not ``(userAccountControl=514)``.

``groupOfNames`` requires a ``member``: a group without members holds one empty DN
(:data:`EMPTY_MEMBER`, ``member:`` in LDIF), which is no entry, so a sync must ignore it.

Suffixes: ``_dn`` a DN string, ``attrs`` an ``{attribute: [bytes, ...]}`` dict, ``entry`` a
``(dn, attrs)`` pair. Nothing here talks to a server; :mod:`tests.lab.slapd` does.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ldap.dn import escape_dn_chars

from tests.lab.spec import DirectorySpec, GroupSpec, UserSpec

__all__ = [
    "BASE_DN", "DISABLED_FILTER", "EMPTY_MEMBER", "GROUPS_DN", "PEOPLE_DN", "READER_DN",
    "READER_PASSWORD", "ROOT_DN", "ROOT_PASSWORD", "DnMap", "Op", "base_entries",
    "changes_ldif", "diff_operations", "group_attrs", "group_dn", "openldap_sync_settings",
    "spec_entries", "spec_ldif", "ssha", "to_ldif", "user_attrs", "user_dn",
]  # fmt: skip

Attrs = dict[str, list[bytes]]
Entry = tuple[str, Attrs]

BASE_DN = "dc=example,dc=test"
PEOPLE_DN = f"ou=People,{BASE_DN}"
GROUPS_DN = f"ou=Groups,{BASE_DN}"
ROOT_DN = f"cn=admin,{BASE_DN}"
ROOT_PASSWORD = "Admin-Passw0rd!"
READER_DN = f"cn=reader,{BASE_DN}"
READER_PASSWORD = "Reader-Passw0rd!"

#: The one ``member`` value of a group without members (groupOfNames requires one).
EMPTY_MEMBER = ""
#: userAccountControl of enabled and disabled users (NORMAL_ACCOUNT, + ACCOUNTDISABLE).
UAC_ENABLED = 512
UAC_DISABLED = 514
#: Disabled users, exactly as on AD.
DISABLED_FILTER = "(userAccountControl:1.2.840.113556.1.4.803:=2)"
#: Photo attribute of inetOrgPerson; "thumbnailPhoto" (msuser) works too, via extensibleObject.
PHOTO_ATTRIBUTE = "jpegPhoto"

GROUP_PREFIX = "group:"
_UUID_NAMESPACE = uuid.UUID("5b0c9c3e-3f7e-4d55-9a43-0c2b3d1f6a10")


# -- DNs -----------------------------------------------------------------------------------


def _container(ou: str, root_ou: str, root_dn: str) -> str:
    return root_dn if ou == root_ou else f"ou={escape_dn_chars(ou)},{root_dn}"


def user_dn(user: UserSpec) -> str:
    return f"uid={escape_dn_chars(user.key)},{_container(user.ou, 'People', PEOPLE_DN)}"


def group_dn(group: GroupSpec) -> str:
    return f"cn={escape_dn_chars(group.name)},{_container(group.ou, 'Groups', GROUPS_DN)}"


class DnMap:
    """DNs of a spec's users (by key) and groups (by name), and of ``member`` strings."""

    def __init__(self, spec: DirectorySpec) -> None:
        self.users = {user.key: user_dn(user) for user in spec.users}
        self.groups = {group.name: group_dn(group) for group in spec.groups}
        members = self.users | {GROUP_PREFIX + n: dn for n, dn in self.groups.items()}
        self._members = members
        self.member_bytes = {member: dn.encode() for member, dn in members.items()}

    def member(self, member: str) -> str:
        """The DN of a GroupSpec member: a user key, or ``group:`` and a group name."""
        return self._members[member]


# -- attributes ----------------------------------------------------------------------------


def ssha(password: str, salt_source: str) -> bytes:
    """``{SSHA}`` with a salt derived from ``salt_source``: the same spec gives the same LDIF,
    so a diff between two specs never sees a password change that did not happen."""
    salt = hashlib.sha1(salt_source.encode()).digest()[:8]
    digest = hashlib.sha1(password.encode() + salt).digest()
    return b"{SSHA}" + base64.b64encode(digest + salt)


def user_attrs(user: UserSpec, photo_attribute: str = PHOTO_ATTRIBUTE) -> Attrs:
    attrs: Attrs = {
        "objectClass": [b"inetOrgPerson", b"extensibleObject"],
        "uid": [user.key.encode()],
        "cn": [user.common_name.encode()],
        "sn": [user.sn.encode()],
        "userAccountControl": [b"514" if user.disabled else b"512"],
    }
    if user.given_name:
        attrs["givenName"] = [user.given_name.encode()]
    if user.mail:
        attrs["mail"] = [user.mail.encode()]
    if user.title:
        attrs["title"] = [user.title.encode()]
    if user.department:
        attrs["departmentNumber"] = attrs["department"] = [user.department.encode()]
    if user.photo:
        attrs[photo_attribute] = [user.photo]
    if user.password:
        attrs["userPassword"] = [ssha(user.password, user.key)]
    return attrs


def group_attrs(group: GroupSpec, dns: DnMap) -> Attrs:
    member_bytes = dns.member_bytes
    members = [member_bytes[member] for member in group.members]
    attrs: Attrs = {
        "objectClass": [b"groupOfNames"],
        "cn": [group.name.encode()],
        "member": members or [EMPTY_MEMBER.encode()],
    }
    if group.description:
        attrs["description"] = [group.description.encode()]
    return attrs


def _ou_entries(spec: DirectorySpec) -> list[Entry]:
    entries: list[Entry] = []
    for ous, root_ou, root_dn in (
        (dict.fromkeys(u.ou for u in spec.users), "People", PEOPLE_DN),
        (dict.fromkeys(g.ou for g in spec.groups), "Groups", GROUPS_DN),
    ):
        for ou in ous:
            if ou != root_ou:
                dn = _container(ou, root_ou, root_dn)
                entries.append((dn, {"objectClass": [b"organizationalUnit"], "ou": [ou.encode()]}))
    return entries


def base_entries() -> list[Entry]:
    """The suffix, ``ou=People``, ``ou=Groups`` and the reader account."""
    ou = [b"organizationalUnit"]
    return [
        (BASE_DN, {"objectClass": [b"dcObject", b"organization"], "dc": [b"example"],
                   "o": [b"Example Test"]}),
        (PEOPLE_DN, {"objectClass": ou, "ou": [b"People"]}),
        (GROUPS_DN, {"objectClass": ou, "ou": [b"Groups"]}),
        (READER_DN, {"objectClass": [b"organizationalRole", b"simpleSecurityObject"],
                     "cn": [b"reader"], "userPassword": [ssha(READER_PASSWORD, READER_DN)],
                     "description": [b"read-only account of the sync"]}),
    ]  # fmt: skip


def entry_uuid(kind: str, name: str) -> bytes:
    """A deterministic entryUUID: two servers loaded from one spec look like replicas, and a
    user keeps its entryUUID across reloads and OU moves (like objectGUID on AD).

    The same value as ``uuid.uuid5(_UUID_NAMESPACE, f"{kind}:{name}")``, four times faster.
    """
    digest = bytearray(hashlib.sha1(_UUID_NAMESPACE.bytes + f"{kind}:{name}".encode()).digest())
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest[:16].hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode()


def spec_entries(
    spec: DirectorySpec,
    *,
    member_of: bool = False,
    operational: bool = False,
    photo_attribute: str = PHOTO_ATTRIBUTE,
) -> Iterator[Entry]:
    """Every entry of the lab directory, parents first.

    ``member_of`` adds the ``memberOf`` values the memberof overlay would maintain (direct
    groups only), for ``slapadd``, which bypasses overlays. ``operational`` adds deterministic
    ``entryUUID`` values (``slapadd`` accepts them; it adds entryCSN, createTimestamp and
    modifyTimestamp itself).
    """
    dns = DnMap(spec)
    member_of_dns: dict[str, list[bytes]] = {}  # member string -> its groups' DNs
    if member_of:
        member_bytes = dns.member_bytes
        for group in spec.groups:
            group_dn_bytes = member_bytes[GROUP_PREFIX + group.name]
            for member in group.members:
                member_of_dns.setdefault(member, []).append(group_dn_bytes)
    for dn, attrs in [*base_entries(), *_ou_entries(spec)]:
        if operational:
            attrs = {**attrs, "entryUUID": [entry_uuid("dn", dn.lower())]}
        yield dn, attrs
    for user in spec.users:
        dn = dns.users[user.key]
        attrs = user_attrs(user, photo_attribute)
        if operational:
            attrs["entryUUID"] = [entry_uuid("user", user.key)]
        if user.key in member_of_dns:
            attrs["memberOf"] = member_of_dns[user.key]
        yield dn, attrs
    for group in spec.groups:
        dn = dns.groups[group.name]
        attrs = group_attrs(group, dns)
        if operational:
            attrs["entryUUID"] = [entry_uuid("group", group.name)]
        if GROUP_PREFIX + group.name in member_of_dns:
            attrs["memberOf"] = member_of_dns[GROUP_PREFIX + group.name]
        yield dn, attrs


# -- LDIF ----------------------------------------------------------------------------------

# RFC 2849 SAFE-STRING, not ending in a space; anything else (non-ASCII, binary, a leading
# space, colon or "<") is written in base64.
_SAFE = re.compile(
    rb"[\x01-\x09\x0b\x0c\x0e-\x1f\x21-\x39\x3b\x3d-\x7f]"
    rb"(?:[\x01-\x09\x0b\x0c\x0e-\x7f]*[\x01-\x09\x0b\x0c\x0e-\x1f\x21-\x7f])?"
)
_base64_cache: dict[bytes, bytes] = {}
#: Attributes whose values (DNs) repeat across entries: their lines are cached per LDIF.
_REPEATED = frozenset({"member", "memberOf"})


def _line(attribute: bytes, value: bytes) -> bytes:
    if not value:
        return attribute + b":\n"
    if _SAFE.fullmatch(value):
        return attribute + b": " + value + b"\n"
    if len(value) > 256:  # photos: a handful of distinct images shared by many users
        encoded = _base64_cache.get(value)
        if encoded is None:
            encoded = _base64_cache[value] = base64.b64encode(value)
    else:
        encoded = base64.b64encode(value)
    return attribute + b":: " + encoded + b"\n"


def _record(
    dn: str,
    attrs: Mapping[str, Sequence[bytes]],
    changetype: bytes = b"",
    cache: dict[str, dict[bytes, bytes]] | None = None,
) -> bytes:
    parts = [_line(b"dn", dn.encode()), changetype]
    append = parts.append
    for attribute, values in attrs.items():
        name = _names.get(attribute) or _names.setdefault(attribute, attribute.encode())
        if len(values) == 1:
            append(_line(name, values[0]))
        elif cache is not None and attribute in _REPEATED:
            lines = cache.setdefault(attribute, {})
            found = [lines.get(value) for value in values]
            if None in found:
                found = [lines.get(v) or lines.setdefault(v, _line(name, v)) for v in values]
            parts.extend(found)
        else:
            parts.extend([_line(name, value) for value in values])
    append(b"\n")
    return b"".join(parts)


_names: dict[str, bytes] = {}


def to_ldif(entries: Iterable[Entry]) -> bytes:
    """Content records, unfolded (slapadd and ldapadd accept long lines)."""
    cache: dict[str, dict[bytes, bytes]] = {}
    return b"".join([_record(dn, attrs, cache=cache) for dn, attrs in entries])


def spec_ldif(
    spec: DirectorySpec, *, member_of: bool = False, photo_attribute: str = PHOTO_ATTRIBUTE
) -> bytes:
    """The LDIF for ``slapadd`` (with deterministic entryUUIDs)."""
    return to_ldif(
        spec_entries(spec, member_of=member_of, operational=True, photo_attribute=photo_attribute)
    )


# -- changes -------------------------------------------------------------------------------

Modification = tuple[Literal["add", "delete", "replace"], str, list[bytes] | None]


@dataclass(frozen=True)
class Op:
    """One LDAP write: ``add`` (attrs), ``modify`` (mods), ``delete``, or ``moddn``
    (new_rdn under new_superior)."""

    kind: Literal["add", "modify", "delete", "moddn"]
    dn: str
    attrs: Attrs = field(default_factory=dict)
    mods: list[Modification] = field(default_factory=list)
    new_rdn: str = ""
    new_superior: str = ""


def _attr_mods(old: Attrs, new: Attrs) -> list[Modification]:
    mods: list[Modification] = []
    for attribute, values in new.items():
        if old.get(attribute) != values:
            mods.append(("replace", attribute, values))
    mods.extend(("delete", attribute, None) for attribute in old if attribute not in new)
    return mods


def _member_mods(old: list[bytes], new: list[bytes]) -> list[Modification]:
    empty = [EMPTY_MEMBER.encode()]
    if old == new:
        return []
    if new == empty or old == empty:
        return [("replace", "member", new)]
    old_set, new_set = set(old), set(new)
    mods: list[Modification] = []
    added = [dn for dn in new if dn not in old_set]
    removed = [dn for dn in old if dn not in new_set]
    if added:
        mods.append(("add", "member", added))
    if removed:
        mods.append(("delete", "member", removed))
    return mods


def diff_operations(
    old: DirectorySpec,
    new: DirectorySpec,
    *,
    member_renames: bool = False,
    photo_attribute: str = PHOTO_ATTRIBUTE,
) -> list[list[Op]]:
    """The writes that turn a server loaded from ``old`` into ``new``, in phases.

    Operations within a phase are independent (they may be sent pipelined); phases must run
    in order: new OUs, new users, user moves, user changes, new groups (with the empty
    member), member changes, removed groups, removed users, OUs left empty. Users and groups
    are matched by key and name; a changed ``ou`` is a move (``moddn``), which keeps the
    entryUUID. ``member_renames`` says the server rewrites ``member`` values when a member
    is renamed (the memberof overlay with memberof-refint, or refint), so the groups of a
    moved user need no write of their own. ``diff_operations(DirectorySpec([], []), spec)``
    plus :func:`base_entries` loads a spec.
    """
    old_dns, new_dns = DnMap(old), DnMap(new)
    old_users = {user.key: user for user in old.users}
    new_users = {user.key: user for user in new.users}
    old_groups = {group.name: group for group in old.groups}
    new_groups = {group.name: group for group in new.groups}
    old_ous = [dn for dn, _ in _ou_entries(old)]
    new_ous = _ou_entries(new)
    new_ou_dns = {dn for dn, _ in new_ous}
    ous = [Op("add", dn, attrs) for dn, attrs in new_ous if dn not in old_ous]
    ou_deletes = [Op("delete", dn) for dn in old_ous if dn not in new_ou_dns]
    user_adds: list[Op] = []
    moves: list[Op] = []
    user_mods: list[Op] = []
    for key, user in new_users.items():
        before = old_users.get(key)
        if before is None:
            user_adds.append(Op("add", new_dns.users[key], user_attrs(user, photo_attribute)))
            continue
        if before is user:
            continue
        if before.ou != user.ou:
            rdn, _, _ = new_dns.users[key].partition(",")
            superior = new_dns.users[key][len(rdn) + 1 :]
            moves.append(Op("moddn", old_dns.users[key], new_rdn=rdn, new_superior=superior))
        mods = _attr_mods(user_attrs(before, photo_attribute), user_attrs(user, photo_attribute))
        if mods:
            user_mods.append(Op("modify", new_dns.users[key], mods=mods))
    user_deletes = [Op("delete", old_dns.users[key]) for key in old_users if key not in new_users]

    moved = {
        key for key in new_users if key in old_users and old_dns.users[key] != new_dns.users[key]
    }
    # DNs the server holds in member values after the moves: with member_renames, the server
    # rewrote them itself; otherwise the old DNs stay and the member changes replace them.
    renamed = {}
    if member_renames:
        renamed = {old_dns.users[key].encode(): new_dns.users[key].encode() for key in moved}
    empty = [EMPTY_MEMBER.encode()]
    group_adds: list[Op] = []
    group_mods: list[Op] = []
    for name, group in new_groups.items():
        before = old_groups.get(name)
        if before is group and not (moved and any(member in moved for member in group.members)):
            continue
        dn = new_dns.groups[name]
        attrs = group_attrs(group, new_dns)
        if before is None:
            old_attrs: Attrs = {**attrs, "member": empty}
            group_adds.append(Op("add", dn, dict(old_attrs)))
        elif old_dns.groups[name] != dn:
            raise ValueError(f"group {name!r} changed its OU: moving groups is not supported")
        else:
            old_attrs = group_attrs(before, old_dns)
        new_members, old_members = attrs.pop("member"), old_attrs.pop("member")
        if renamed:
            old_members = [renamed.get(member, member) for member in old_members]
        mods = _member_mods(old_members, new_members) + _attr_mods(old_attrs, attrs)
        if mods:
            group_mods.append(Op("modify", dn, mods=mods))
    group_deletes = [Op("delete", old_dns.groups[n]) for n in old_groups if n not in new_groups]
    phases = [
        ous, user_adds, moves, user_mods, group_adds, group_mods, group_deletes, user_deletes,
        ou_deletes,
    ]  # fmt: skip
    return [phase for phase in phases if phase]


def changes_ldif(phases: Iterable[Iterable[Op]]) -> bytes:
    """:func:`diff_operations` as change records for ``ldapmodify``."""
    parts: list[bytes] = []
    for phase in phases:
        for op in phase:
            if op.kind == "add":
                parts.append(_record(op.dn, op.attrs, b"changetype: add\n"))
            elif op.kind == "delete":
                parts.append(_record(op.dn, {}, b"changetype: delete\n"))
            elif op.kind == "moddn":
                body = _line(b"newrdn", op.new_rdn.encode()) + b"deleteoldrdn: 1\n"
                body += _line(b"newsuperior", op.new_superior.encode())
                parts.append(_record(op.dn, {}, b"changetype: moddn\n" + body))
            else:
                body = b"".join(
                    _line(kind.encode(), attribute.encode())
                    + b"".join(_line(attribute.encode(), v) for v in values or ())
                    + b"-\n"
                    for kind, attribute, values in op.mods
                )
                parts.append(_record(op.dn, {}, b"changetype: modify\n" + body))
    return b"".join(parts)


# -- sync settings -------------------------------------------------------------------------


class _Server(Protocol):
    @property
    def uri(self) -> str: ...
    @property
    def ldaps_uri(self) -> str | None: ...
    @property
    def ca_file(self) -> str | None: ...


def openldap_sync_settings(
    server: _Server,
    *,
    tls: Literal["none", "starttls", "ldaps"] = "none",
    photo_attribute: str = PHOTO_ATTRIBUTE,
) -> dict[str, Any]:
    """The ``LDAP_SYNC_*`` settings that sync this layout (for ``override_settings``)."""
    settings: dict[str, Any] = {
        "LDAP_SYNC_BIND_URI": server.uri,
        "LDAP_SYNC_BIND_DN": READER_DN,
        "LDAP_SYNC_BIND_PASS": READER_PASSWORD,
        "LDAP_SYNC_BIND_SEARCH": BASE_DN,
        "LDAP_SYNC_USER_SEARCH": PEOPLE_DN,
        "LDAP_SYNC_USER_FILTER": "(objectClass=inetOrgPerson)",
        "LDAP_SYNC_USER_FILTER_INCREMENTAL": "(&(objectClass=inetOrgPerson)(modifyTimestamp>=?))",
        "LDAP_SYNC_USER_ATTRIBUTES": {
            "uid": "username",
            "givenName": "first_name",
            "sn": "last_name",
            "mail": "email",
        },
        "LDAP_SYNC_USER_EXTRA_ATTRIBUTES": [
            "userAccountControl",
            "department",
            "title",
            photo_attribute,
        ],
        "LDAP_SYNC_GROUP_SEARCH": GROUPS_DN,
        "LDAP_SYNC_GROUP_FILTER": "(objectClass=groupOfNames)",
        "LDAP_SYNC_GROUP_FILTER_INCREMENTAL": "(&(objectClass=groupOfNames)(modifyTimestamp>=?))",
        "LDAP_SYNC_GROUP_ATTRIBUTES": {"cn": "name"},
        "LDAP_SYNC_GROUP_MEMBER_ATTRIBUTE": "member",
        "LDAP_SYNC_IDENTITY_ATTRIBUTE": "entryUUID",
        "LDAP_SYNC_CHANGE_TRACKING": "timestamp",
        "LDAP_SYNC_INCREMENTAL_TIMESTAMPFORMAT": "%Y%m%d%H%M%SZ",
    }
    if tls != "none":
        if server.ca_file is None:
            raise ValueError("this lab server was started without TLS")
        settings["LDAP_SYNC_CA_FILE"] = server.ca_file
        if tls == "ldaps":
            settings["LDAP_SYNC_BIND_URI"] = server.ldaps_uri
        else:
            settings["LDAP_SYNC_START_TLS"] = True
    return settings
