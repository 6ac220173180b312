"""Rules for settings' types and plain values: bools, numbers, strings, lists, callbacks,
durations, the removal threshold and the name templates. Each rule takes the setting's short
name and its value and returns the messages."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from django.conf import settings

from ..callbacks import resolve_callback
from .defaults import ALIASES, INHERITS, PREFIX
from .messages import E004, E005, E006, E007, E008, E010, E020, E022, E023, E024, E025, Message
from .reader import sync_settings
from .threshold import removal_threshold


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def typed(value: Any) -> str:
    """A value and its type, for type errors: ``'yes' (str)``."""
    return f"{show(value)} ({type(value).__name__})"


def full_name(name: str) -> str:
    return PREFIX + name


def source_name(name: str) -> str:
    """The settings name a value was read from (an old alias when only that one is set)."""
    if not sync_settings.is_set(name):
        for old, new in ALIASES.items():
            if new == name and hasattr(settings, old):
                return old
    return full_name(name)


def checked_value(name: str) -> Any:
    """The value to validate: as the sync reads it, except that inherited names are not
    followed (their source is validated under its own name)."""
    if name in INHERITS:
        return getattr(settings, full_name(name), None)
    return getattr(sync_settings, name)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def set_names() -> list[str]:
    """The ``LDAP_SYNC_*`` names (and old aliases) present in the settings."""
    return sorted(n for n in dir(settings) if n.startswith(PREFIX) or n in ALIASES)


def in_use() -> bool:
    """True when the site uses the ``LDAP_SYNC_*`` configuration (the checks then run)."""
    return sync_settings.configured() or bool(set_names())


EXAMPLES = {
    "BIND_URI": '"ldaps://dc1.example.com"',
    "BIND_DN": '"CN=svc-django,OU=Service Accounts,DC=example,DC=com"',
    "BIND_PASS": 'os.environ["LDAP_SYNC_BIND_PASS"]',
    "BIND_SEARCH": '"DC=example,DC=com"',
}

ADVICE = {
    "BIND_DN": 'The reader account, e.g. "CN=svc-django,OU=Service Accounts,DC=example,DC=com" '
    '(Active Directory also takes "svc-django@example.com").',
    "BIND_PASS": 'The reader account\'s password, e.g. os.environ["LDAP_SYNC_BIND_PASS"].',
    "BIND_SEARCH": 'The default search base, e.g. "DC=example,DC=com".',
    "USER_FILTER": 'An LDAP filter, e.g. "(&(objectCategory=person)(objectClass=user))".',
    "USER_FILTER_INCREMENTAL": "An LDAP filter with '?' where the timestamp goes; None only "
    "when LDAP_SYNC_USER_INCREMENTAL is False.",
    "GROUP_FILTER": 'An LDAP filter, e.g. "(objectClass=group)".',
    "GROUP_FILTER_INCREMENTAL": "An LDAP filter with '?' where the timestamp goes; None only "
    "when LDAP_SYNC_GROUP_INCREMENTAL is False.",
    "GROUP_MEMBERSHIP_FILTER": "An LDAP filter with {distinguishedName} where the user's DN "
    'goes, e.g. "(member:1.2.840.113556.1.4.1941:={distinguishedName})".',
    "USER_THUMBNAILPHOTO_NAME": 'A file name template, e.g. "{username}_{uuid4}.jpg".',
    "INCREMENTAL_TIMESTAMPFORMAT": 'A strftime format, e.g. "%Y%m%d%H%M%S.0Z" for Active '
    "Directory.",
    "BIND_PAGESIZE": "Active Directory serves at most 1000 entries per page by default; "
    "200 to 1000 is typical.",
    "NETWORK_TIMEOUT": "Seconds to wait for a server to answer a connection, e.g. 5.",
    "OPERATION_TIMEOUT": "Seconds to wait for one LDAP operation, e.g. 60.",
    "LOCK_STALE_AFTER": "Seconds after which a batch lock whose holder is silent is taken "
    "over; longer than the longest run, e.g. 21600.",
    "PHOTO_MAX_BYTES": "The largest photo accepted, in bytes, e.g. 5242880.",
    "PHOTO_MAX_PIXELS": "The largest photo accepted, in pixels (width x height), e.g. 16777216.",
    "WRITE_BATCH_SIZE": "Rows written per database batch, e.g. 1000.",
    "WATCH_INTERVAL": "Seconds between two looks at the directory of 'syncldap watch', e.g. 5.",
    "WATCH_FULL_INTERVAL": "Seconds between two full runs of 'syncldap watch', e.g. 86400.",
    "RANGE_SIZE": "None lets the server choose; otherwise member values are requested in "
    "ranges of this size (Active Directory's MaxValRange is 1500).",
    "INCREMENTAL_BETWEEN_FULL": "A full run after this many incremental runs; -1 never, 0 always.",
    "INCREMENTAL_TIME_OFFSET": "Minutes subtracted from change timestamps to absorb clock "
    "skew, e.g. 10.",
    "USER_CHANGE_FIELDCASE": "Profile fields are matched to attribute names after this case "
    "change.",
    "GROUP_REMOVAL_ACTION": '"KEEP" leaves groups gone from the directory, "DELETE" deletes them.',
    "GROUP_MEMBERSHIP_MODE": '"graph" reads each group once per run; "filter" runs '
    "LDAP_SYNC_GROUP_MEMBERSHIP_FILTER once per user.",
    "CHANGE_TRACKING": '"auto" uses uSNChanged on Active Directory and modifyTimestamp elsewhere; '
    '"contentsync" the server\'s RFC 4533 change feed; "dirsync" Active Directory\'s DirSync.',
    "IDENTITY_ATTRIBUTE": '"auto" (objectGUID on Active Directory, entryUUID elsewhere) or '
    "the name of an immutable attribute.",
    "GROUP_MEMBER_ATTRIBUTE": 'The attribute of group entries that lists members: "member", '
    '"uniqueMember" or "memberUid".',
    "GROUP_MEMBERSHIP_DN_FIELD": 'The user attribute holding the DN, e.g. "distinguishedName".',
    "MULTIVALUE_SEPARATOR": 'The text that joins multi-valued attributes, e.g. "|".',
    "CA_FILE": "The path of a PEM file with the directory's CA certificate(s).",
    "USERNAME_FIELD": "None uses the user model's USERNAME_FIELD.",
    "USER_SEARCH": "None uses LDAP_SYNC_BIND_SEARCH.",
    "GROUP_SEARCH": "None uses LDAP_SYNC_BIND_SEARCH.",
    "LOGIN_GROUP_RESOLUTION": '"auto" walks up from the user\'s direct groups through the '
    'nesting stored by the last batch run; "graph" through the group graph read live.',
    "LOGIN_GROUP_CACHE_TIMEOUT": "Seconds Django's cache keeps a live group graph and the "
    "stored nesting's version; 0 reads the graph at every login.",
    "MEMBERSHIP_SEARCH": "None uses LDAP_SYNC_BIND_SEARCH.",
}

DEFAULT_ADVICE = "See the settings table in the adldap-auth documentation."


def advice(name: str) -> str:
    return ADVICE.get(name, DEFAULT_ADVICE)


def boolean(name: str, value: Any) -> list[Message]:
    if isinstance(value, bool):
        return []
    return [E004(source_name(name), value=typed(value))]


def integer(
    low: int, high: int | None = None, *, optional: bool = False
) -> Callable[[str, Any], list[Message]]:
    bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
    if optional:
        bounds += " (or None)"

    def validate(name: str, value: Any) -> list[Message]:
        if optional and value is None:
            return []
        if is_int(value) and value >= low and (high is None or value <= high):
            return []
        return [E005(full_name(name), bounds=bounds, value=typed(value), advice=advice(name))]

    return validate


def seconds(name: str, value: Any) -> list[Message]:
    if is_number(value) and value > 0:
        return []
    return [E006(full_name(name), value=typed(value), advice=advice(name))]


def string(*, optional: bool = False, empty: bool = False) -> Callable[[str, Any], list]:
    expected = "a string" if empty else "a non-empty string"
    if optional:
        expected += " or None"

    def validate(name: str, value: Any) -> list[Message]:
        if optional and value is None:
            return []
        if isinstance(value, str) and (empty or value.strip()):
            return []
        return [E007(full_name(name), expected=expected, value=typed(value), advice=advice(name))]

    return validate


def choice(*choices: Any) -> Callable[[str, Any], list[Message]]:
    def validate(name: str, value: Any) -> list[Message]:
        if any(value == c and type(value) is type(c) for c in choices):
            return []
        shown = ", ".join(show(c) for c in choices)
        return [E010(full_name(name), choices=shown, value=show(value), advice=advice(name))]

    return validate


def list_problem(value: Any) -> str | None:
    if isinstance(value, str):
        return f"got the string {show(value)}: wrap it in a list"
    if not isinstance(value, list | tuple):
        return f"got {typed(value)}"
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            return f"item {index} is {typed(item)}"
    return None


_LIST_EXAMPLES = {
    "USER_EXTRA_ATTRIBUTES": '["userAccountControl", "department", "title"]',
    "USER_EXTRA_PROFILES": '["myapp.Employee"]',
    "USER_EXEMPT_FROM_SYNC": '["admin", "administrator", "guest"]',
    "ADOPT_USERS": '["root", "jsmith"]',
    "ADOPT_GROUPS": '["Staff", "app-*"]',
    "USER_CALLBACKS": '["myapp.sync.on_user"]',
    "REMOVED_USER_CALLBACKS": '["adldap_auth.callbacks.removed_user_deactivate"]',
}


def str_list(name: str, value: Any) -> list[Message]:
    problem = list_problem(value)
    if problem is None:
        return []
    return [E008(source_name(name), detail=problem, example=_LIST_EXAMPLES[name])]


def callback_list(name: str, value: Any) -> list[Message]:
    found = str_list(name, value)
    if found:
        return found
    for path in value:
        try:
            resolve_callback(path)
        except (ImportError, TypeError) as error:
            found.append(E020(source_name(name), value=show(path), detail=str(error)))
    return found


DICT_EXAMPLES = {
    "USER_ATTRIBUTES": '{"sAMAccountName": "username", "givenName": "first_name", '
    '"sn": "last_name", "mail": "email"}',
    "GROUP_ATTRIBUTES": '{"cn": "name"}',
}


def dict_problem(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"got {typed(value)}"
    for key, field in value.items():
        if not isinstance(key, str) or not key.strip():
            return f"the key {typed(key)} is not an attribute name"
        if not isinstance(field, str) or not field.strip():
            return f"{key!r} maps to {typed(field)}"
    return None


def removal_threshold_rule(name: str, value: Any) -> list[Message]:
    try:
        removal_threshold(value)  # the setting's meaning lives in conf
    except ValueError as error:
        return [E022(full_name(name), value=typed(value), detail=error)]
    return []


def removal_grace(name: str, value: Any) -> list[Message]:
    if value is None or (is_number(value) and value >= 0):
        return []
    if isinstance(value, dt.timedelta) and value >= dt.timedelta(0):
        return []
    return [E023(full_name(name), value=typed(value))]


_SAMPLE_TIME = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def photo_name(name: str, value: Any) -> list[Message]:
    found = string()(name, value)
    if found:
        return found
    if "/" in value or "\\" in value or ".." in value or "\0" in value:
        problem = "contains a path separator, '..' or a NUL character"
        return [E024(full_name(name), problem=problem, value=show(value))]
    sample = value.replace("{username}", "jdoe").replace("{uuid4}", "0" * 32)
    try:
        _SAMPLE_TIME.strftime(sample)
    except (ValueError, UnicodeError) as error:
        return [E024(full_name(name), problem=f"cannot be formatted ({error})", value=show(value))]
    return []


def timestamp_format(name: str, value: Any) -> list[Message]:
    found = string()(name, value)
    if found:
        return found
    if "\0" in value:  # strftime would silently cut the result there
        return [E025(full_name(name), problem="it contains a NUL character", value=show(value))]
    try:
        formatted = _SAMPLE_TIME.strftime(value)
    except (ValueError, UnicodeError) as error:
        return [E025(full_name(name), problem=str(error), value=show(value))]
    if formatted == value:
        return [E025(full_name(name), problem="it has no strftime codes", value=show(value))]
    return []
