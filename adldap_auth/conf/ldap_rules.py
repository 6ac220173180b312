"""Rules for the settings that talk to the directory: servers, bind, search bases, filters,
membership mode, default groups and the CA file."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from .defaults import DEFAULTS
from .ldap_syntax import filter_problem, is_dn
from .messages import E001, E002, E003, E007, E011, E012, E013, E021, E026, W004, W005, Message
from .reader import sync_settings
from .value_rules import EXAMPLES, advice, choice, full_name, integer, show, string, typed


def search_base(*, optional: bool) -> Callable[[str, Any], list[Message]]:
    def validate(name: str, value: Any) -> list[Message]:
        if optional and value is None:
            return []
        if not optional and (value is None or value == ""):
            return required(name, value)
        found = string(optional=optional)(name, value)
        if found:
            return found
        if not is_dn(value):
            return [E012(full_name(name), value=show(value))]
        return []

    return validate


def required(name: str, value: Any) -> list[Message]:
    if not sync_settings.is_set(name):
        state = "not set"
    elif value is None:
        state = "None"
    else:
        state = "empty"
    return [E001(full_name(name), state=state, example=EXAMPLES[name])]


def bind_uri(name: str, value: Any) -> list[Message]:
    if value is None or value in ("", [], ()):
        return required(name, value)
    uris = [value] if isinstance(value, str) else value
    if not isinstance(uris, list | tuple) or not all(isinstance(u, str) for u in uris):
        return [E002(full_name(name), value=typed(value))]
    return [
        E003(full_name(name), uri=uri)
        for uri in uris
        if urlsplit(uri.strip()).scheme.lower() not in ("ldap", "ldaps", "ldapi")
    ]


def bind_dn(name: str, value: Any) -> list[Message]:
    # Not checked as a DN: Active Directory also binds with user@domain or DOMAIN\user.
    if value is None or value == "":
        return required(name, value)
    return string()(name, value)


def bind_pass(name: str, value: Any) -> list[Message]:
    if value is None:
        return required(name, value)
    if not isinstance(value, str):  # never show the value: it is a password
        return [
            E007(
                full_name(name),
                expected="a string",
                value=f"a value of type {type(value).__name__}",
                advice=advice(name),
            )
        ]
    return []  # empty: W002 from check_security


def ldap_filter(name: str, value: Any) -> list[Message]:
    found = string()(name, value)
    if found:
        return found
    problem = filter_problem(value)
    return [E011(full_name(name), problem=problem, value=show(value))] if problem else []


def optional_filter(name: str, value: Any) -> list[Message]:
    return [] if value is None else ldap_filter(name, value)


def incremental_filter(switch: str, example: str) -> Callable[[str, Any], list[Message]]:
    def validate(name: str, value: Any) -> list[Message]:
        if getattr(sync_settings, switch) is False and value in (None, ""):
            return []  # incremental runs are off: the filter is not used
        found = ldap_filter(name, value)
        if found:
            return found
        if "?" not in value:
            return [
                E013(
                    full_name(name),
                    placeholder="'?'",
                    example=example,
                    consequence="incremental runs cannot ask for what changed since the last run",
                )
            ]
        return []

    return validate


def membership_filter(name: str, value: Any) -> list[Message]:
    found = ldap_filter(name, value)
    if found or sync_settings.GROUP_MEMBERSHIP_MODE != "filter":
        return found
    if "{distinguishedName}" not in value:
        return [
            E013(
                full_name(name),
                placeholder="'{distinguishedName}'",
                example=DEFAULTS[name],
                consequence='the "filter" membership mode would give every user the same groups',
            )
        ]
    return []


def membership_mode(name: str, value: Any) -> list[Message]:
    found = choice("graph", "filter")(name, value)
    if not found and value == "filter":
        found.append(W005(full_name(name)))
    return found


def page_size(name: str, value: Any) -> list[Message]:
    found = integer(1, 100_000)(name, value)
    if not found and value > 1000:
        found.append(W004(full_name(name), value=value))
    return found


def add_default(name: str, value: Any) -> list[Message]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        return [E021(full_name(name), detail=f"got {typed(value)}")]
    found = []
    for index, item in enumerate(value):
        if isinstance(item, str) and item.strip():
            continue
        if (
            isinstance(item, list | tuple)
            and len(item) == 2
            and isinstance(item[0], str)
            and _attrs_ok(item[1])
        ):
            if not is_dn(item[0]):
                found.append(E012(full_name(name), value=show(item[0])))
            continue
        found.append(E021(full_name(name), detail=f"item {index} is {typed(item)}"))
    return found


def _attrs_ok(attrs: Any) -> bool:
    """An attribute dict as django-adldap-sync documented it: ``{"cn": [b"Domain Users"]}``."""
    if not isinstance(attrs, dict):
        return False
    for key, values in attrs.items():
        if not isinstance(key, str):
            return False
        items = [values] if isinstance(values, str | bytes) else values
        if not isinstance(items, list | tuple) or not all(
            isinstance(v, str | bytes) for v in items
        ):
            return False
    return True


def ca_file(name: str, value: Any) -> list[Message]:
    found = string(optional=True)(name, value)
    if found or value is None:
        return found
    if not os.path.isfile(value):
        return [E026(full_name(name), problem="does not exist or is not a file", value=show(value))]
    if not os.access(value, os.R_OK):
        return [E026(full_name(name), problem="is not readable", value=show(value))]
    return []
