"""Group entries -> :class:`GroupRecord`: the group name, other Group fields and member
keys."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from sys import intern

from ..directory import Entry
from .config import MappingConfig
from .values import SkipEntry, _identity, _sid, _text, normalize_dn

# nameAndOptionalUID (uniqueMember): "cn=x,dc=y#'0101'B"
_OPTIONAL_UID = re.compile(r"#'[01]*'B\Z")


@dataclass
class GroupRecord:
    """A group entry mapped to Django state.

    ``member_keys`` are ``normalize_dn`` of each ``member``/``uniqueMember`` value, or each
    ``memberUid`` value lower-cased (uid matching is case-insensitive), without duplicates.
    They compare equal to :attr:`UserRecord.member_key` of the member user, or to
    ``normalize_dn(group.dn)`` of a nested group.
    """

    dn: str
    guid: str
    name: str
    fields: dict[str, str]  # Group field -> value, always with "name"
    member_keys: list[str]
    object_sid: str | None
    problems: list[str] = field(default_factory=list)
    #: in the group scope (LDAP_SYNC_GROUP_SEARCH and _FILTER), or only in the membership
    #: scope (a group whose nesting counts, managed only with ..._CREATE_IF_NOT_EXISTS)
    in_scope: bool = True


def map_group(entry: Entry, config: MappingConfig) -> GroupRecord:
    """Map a group entry. :class:`SkipEntry` for no identity, no usable name, or a name longer
    than ``Group.name`` allows (150): a truncated name could merge two groups."""
    plan = config._plan
    attrs = entry.attrs
    guid = _identity(entry, config)
    name = _group_name(entry, config)

    problems: list[str] = []
    fields = {"name": name}
    for attr, fname, field_max in plan.group_fields:
        value = _text(attr, fname, attrs.get(attr), None, field_max, problems)
        if value is not None:
            fields[fname] = value

    member_keys = _member_keys(attrs.get(config.member_attribute) or (), config, problems)

    return GroupRecord(
        dn=entry.dn,
        guid=guid,
        name=name,
        fields=fields,
        member_keys=member_keys,
        object_sid=_sid(entry, problems),
        problems=problems,
    )


def _group_name(entry: Entry, config: MappingConfig) -> str:
    """The Django group name; :class:`SkipEntry` when it cannot be one."""
    plan = config._plan
    raw_name = entry.first(plan.group_name_attr)
    if raw_name is None:
        raise SkipEntry(f"no {plan.group_name_attr} attribute (the group name)", entry.dn)
    try:
        name = raw_name.decode("utf-8")
    except UnicodeDecodeError:
        raise SkipEntry(
            f"{plan.group_name_attr} (the group name) is not valid UTF-8", entry.dn
        ) from None
    if not name.strip():
        raise SkipEntry(f"{plan.group_name_attr} (the group name) is empty", entry.dn)
    max_length = config.group_field_max_lengths.get("name", 150)
    if max_length is not None and len(name) > max_length:
        raise SkipEntry(
            f"group name is {len(name)} characters long, more than the {max_length} allowed",
            entry.dn,
        )
    if "\x00" in name:
        raise SkipEntry("group name contains NUL characters", entry.dn)
    return name


def _member_keys(values: Iterable[bytes], config: MappingConfig, problems: list[str]) -> list[str]:
    """The member attribute's values as member keys (normalised DNs, or lower-case uids),
    in order, without duplicates."""
    member_keys: dict[str, None] = {}
    undecodable = 0
    is_uid = config.member_attribute == "memberuid"
    strip_uid = config.member_attribute == "uniquemember"
    for raw in values:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            undecodable += 1
            continue
        if is_uid:
            key = text.strip().lower()
        else:
            if strip_uid:
                text = _OPTIONAL_UID.sub("", text)
            key = normalize_dn(text)
        if key:
            member_keys[intern(key)] = None  # one object per key in a run (GroupGraph)
    if undecodable:
        problems.append(
            f"{undecodable} value(s) of attribute {config.member_attribute} are not valid UTF-8; "
            f"ignored"
        )
    return list(member_keys)
