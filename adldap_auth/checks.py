"""Django system checks for the ``LDAP_SYNC_*`` settings (``manage.py check``).

Every setting of :data:`adldap_auth.conf.DEFAULTS` is validated here, so that a wrong type or
value is reported with the setting's name and a hint before a run, not as a traceback in the
middle of one. Each kind of problem has a stable id (``adldap_auth.E001``...), listed with a short
description in :data:`CHECK_IDS` for the documentation; the message names the setting and its
``obj`` is the setting's name.

The checks only run when the site uses the ``LDAP_SYNC_*`` configuration (``LDAP_SYNC_BIND_URI``
or any other ``LDAP_SYNC_*`` name is set): a site that configures only django-auth-ldap's
``AUTH_LDAP_*`` settings gets nothing from here. They never touch the network; they may import
the callbacks named in the settings and look at ``LDAP_SYNC_CA_FILE`` on disk.

Two functions are registered under the tag ``adldap_auth``: :func:`check_settings` (types,
values, cross-setting consistency) and :func:`check_security` (also tagged ``security``:
clear-text URIs, unverified certificates, empty password), so
``manage.py check --tag adldap_auth`` runs them all.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import ldap.dn
from django.conf import settings
from django.core import checks

from .callbacks import resolve_callback
from .conf import ALIASES, DEFAULTS, INHERITS, PREFIX, removal_threshold, sync_settings

TAG = "adldap_auth"

Message = checks.CheckMessage


@dataclass(frozen=True)
class Check:
    """One kind of problem: a stable id, a level, a summary for the docs, message templates.

    Calling it with the setting's full name and the template fields gives the message.
    """

    id: str
    level: type[Message]
    summary: str
    msg: str
    hint: str

    def __call__(self, setting: str, **fields: Any) -> Message:
        return self.level(
            self.msg.format(setting=setting, **fields),
            hint=self.hint.format(setting=setting, **fields),
            obj=setting,
            id=self.id,
        )


E = checks.Error
W = checks.Warning

E001 = Check(
    "adldap_auth.E001", E, "A required connection setting is missing or empty.",
    "{setting} is required but is {state}.",
    "adldap-auth needs LDAP_SYNC_BIND_URI, LDAP_SYNC_BIND_DN, LDAP_SYNC_BIND_PASS and "
    "LDAP_SYNC_BIND_SEARCH. Example: {setting} = {example}",
)
E002 = Check(
    "adldap_auth.E002", E, "LDAP_SYNC_BIND_URI is not a URI string or a list of them.",
    "{setting} must be a URI string or a non-empty list of URI strings, not {value}.",
    '{setting} = ["ldaps://dc1.example.com", "ldaps://dc2.example.com"] tries the servers '
    "in order.",
)
E003 = Check(
    "adldap_auth.E003", E, "A URI of LDAP_SYNC_BIND_URI is not ldap://, ldaps:// or ldapi://.",
    "{setting} has {uri!r}, which is not an ldap://, ldaps:// or ldapi:// URI.",
    "Write each server as a URI, e.g. ldaps://dc1.example.com (or ldap://dc1.example.com with "
    "LDAP_SYNC_START_TLS = True).",
)
E004 = Check(
    "adldap_auth.E004", E, "A setting that must be a bool is not one.",
    "{setting} must be True or False, not {value}.",
    'Use a Python bool: strings such as "false" and numbers are not accepted.',
)
E005 = Check(
    "adldap_auth.E005", E, "A setting that must be an integer in a range is not.",
    "{setting} must be an integer {bounds}, not {value}.",
    "{advice}",
)
E006 = Check(
    "adldap_auth.E006", E, "A duration in seconds is not a positive number.",
    "{setting} must be a number of seconds greater than 0, not {value}.",
    "{advice}",
)
E007 = Check(
    "adldap_auth.E007", E, "A setting that must be a string is not one, or is empty.",
    "{setting} must be {expected}, not {value}.",
    "{advice}",
)
E008 = Check(
    "adldap_auth.E008", E, "A setting that must be a list of strings is not one.",
    "{setting} must be a list of strings; {detail}.",
    "Example: {setting} = {example}",
)
E009 = Check(
    "adldap_auth.E009", E, "An attribute map is not a dict of strings to strings.",
    "{setting} must be a dict of LDAP attribute names to model field names; {detail}.",
    "Example: {setting} = {example}",
)
E010 = Check(
    "adldap_auth.E010", E, "A setting has a value outside its choices.",
    "{setting} must be one of {choices}, not {value}.",
    "{advice}",
)
E011 = Check(
    "adldap_auth.E011", E, "A search filter is not a valid LDAP filter (RFC 4515).",
    "{setting} is not a valid LDAP filter ({problem}): {value}.",
    "Write every component in parentheses, e.g. (&(objectClass=user)(mail=*)); escape literal "
    "parentheses, '*' and '\\' in values as \\28, \\29, \\2a and \\5c.",
)
E012 = Check(
    "adldap_auth.E012", E, "A search base or group DN is not a valid distinguished name.",
    "{setting} has {value}, which is not a valid distinguished name.",
    "Write a DN such as OU=People,DC=example,DC=com (not a domain name like example.com).",
)
E013 = Check(
    "adldap_auth.E013", E, "A filter lacks the placeholder its mode needs.",
    "{setting} has no {placeholder} placeholder, so {consequence}.",
    "Example: {setting} = {example!r}",
)
E014 = Check(
    "adldap_auth.E014", E, "LDAP_SYNC_USER_ATTRIBUTES maps nothing to the username field.",
    "{setting} maps no LDAP attribute to the username field {field!r}{origin}.",
    'Add e.g. "sAMAccountName": "{field}" (Active Directory), "uid": "{field}" (OpenLDAP) or '
    '"mail": "{field}" (a model that logs in by e-mail address). The username field is '
    "LDAP_SYNC_USERNAME_FIELD, or else the user model's USERNAME_FIELD.",
)
E015 = Check(
    "adldap_auth.E015", E,
    "LDAP_SYNC_USER_ATTRIBUTES maps to a field the user model lacks, or that is not text.",
    "{setting} maps {attribute!r} to {field!r}, which is {problem} of {model}{origin}.",
    "The fields of {model} an attribute may map to: {fields}. Read other attributes with "
    "LDAP_SYNC_USER_EXTRA_ATTRIBUTES and fill a model of LDAP_SYNC_USER_EXTRA_PROFILES.",
)
E016 = Check(
    "adldap_auth.E016", E, "LDAP_SYNC_USERNAME_FIELD is not a unique field of the user model.",
    "{setting} is {value}, which is not {problem} of {model}.",
    "Remove {setting} to use the user model's USERNAME_FIELD, or name a unique field.",
)
E017 = Check(
    "adldap_auth.E017", E, 'LDAP_SYNC_GROUP_ATTRIBUTES maps nothing to the group\'s "name".',
    '{setting} maps no LDAP attribute to "name", the field that identifies a group.',
    'Add e.g. "cn": "name".',
)
E018 = Check(
    "adldap_auth.E018", E, "LDAP_SYNC_GROUP_ATTRIBUTES names a field auth.Group lacks.",
    "{setting} maps {attribute!r} to {field!r}, which is not a field of auth.Group.",
    'Groups have one field to fill: "name".',
)
E019 = Check(
    "adldap_auth.E019", E, "LDAP_SYNC_USER_EXTRA_PROFILES names no installed model.",
    "{setting} has {value}, which is not an installed model ({detail}).",
    'Name each profile model as "app_label.ModelName", from an app in INSTALLED_APPS.',
)
E020 = Check(
    "adldap_auth.E020", E, "A callback path cannot be imported as a callable.",
    "{setting} has {value}, which cannot be imported as a callable ({detail}).",
    'Give the dotted path of a function, e.g. "adldap_auth.callbacks.removed_user_deactivate".',
)
E021 = Check(
    "adldap_auth.E021", E, "LDAP_SYNC_GROUP_MEMBERSHIP_ADD_DEFAULT has a malformed item.",
    "{setting} must be a list of group names or of (dn, attributes) pairs; {detail}.",
    "Example: {setting} = [(\"CN=Domain Users,CN=Users,DC=example,DC=com\", "
    "{{\"cn\": [b\"Domain Users\"]}})]",
)
E022 = Check(
    "adldap_auth.E022", E, "LDAP_SYNC_REMOVAL_THRESHOLD is not a count, a percentage or None.",
    '{setting} must be an integer >= 0, a percentage string such as "10%" (above 0%, at most '
    '100%), a dict such as {{"percent": 10, "minimum": 10}}, or None; not {value}: {detail}.',
    "A run that would remove more users, groups or memberships than this is refused unless "
    "forced; None means no limit.",
)
E023 = Check(
    "adldap_auth.E023", E, "LDAP_SYNC_REMOVAL_GRACE is not None, seconds >= 0 or a timedelta.",
    "{setting} must be None, a number of seconds >= 0 or a datetime.timedelta >= 0, "
    "not {value}.",
    "Example: {setting} = datetime.timedelta(days=30)",
)
E024 = Check(
    "adldap_auth.E024", E, "LDAP_SYNC_USER_THUMBNAILPHOTO_NAME is not a safe file name.",
    "{setting} {problem}: {value}.",
    "Give a file name without directories, using {{username}}, {{uuid4}} and strftime codes, "
    "e.g. {{username}}_{{uuid4}}.jpg; the directory is the ImageField's upload_to.",
)
E025 = Check(
    "adldap_auth.E025", E, "LDAP_SYNC_INCREMENTAL_TIMESTAMPFORMAT cannot format a timestamp.",
    "{setting} cannot format a timestamp ({problem}): {value}.",
    'Active Directory\'s generalized time is "%Y%m%d%H%M%S.0Z".',
)
E026 = Check(
    "adldap_auth.E026", E, "LDAP_SYNC_CA_FILE is not a readable file.",
    "{setting} {problem}: {value}.",
    "Give the path of a PEM file with the CA certificate(s) that signed the directory's "
    "certificate, readable by the user that runs Django.",
)
E027 = Check(
    "adldap_auth.E027", E, "LDAP_SYNC_REQUIRE_TLS is set but a URI is clear text.",
    "{setting} has {uri!r}, a clear-text URI, but LDAP_SYNC_REQUIRE_TLS is True and "
    "LDAP_SYNC_START_TLS is not.",
    "Use ldaps:// or set LDAP_SYNC_START_TLS = True.",
)
E028 = Check(
    "adldap_auth.E028", E, "LDAP_SYNC_USER_PROFILE_ATTRIBUTES is not a dict of attribute maps.",
    "{setting} {detail}.",
    'Example: {setting} = {{"people.Employee": {{"telephoneNumber": "phone", '
    '"physicalDeliveryOfficeName": "office"}}}}',
)
E029 = Check(
    "adldap_auth.E029", E,
    "LDAP_SYNC_USER_PROFILE_ATTRIBUTES names a model that is not a profile being synced.",
    "{setting} {detail}.",
    'Name each model as "app_label.ModelName", and list it in LDAP_SYNC_USER_EXTRA_PROFILES.',
)
E030 = Check(
    "adldap_auth.E030", E,
    "LDAP_SYNC_USER_PROFILE_ATTRIBUTES maps to a field the sync cannot write.",
    "{setting} {detail}.",
    "Map each attribute to a char or text field of the profile model, or a photo attribute "
    "(thumbnailPhoto, jpegPhoto) to a file or image field.",
)
E031 = Check(
    "adldap_auth.E031", E,
    "LDAP_SYNC_USER_PROFILE_ATTRIBUTES fills one field twice or lists an attribute twice.",
    "{setting} {detail}.",
    "Keep one attribute per field; attribute names are compared ignoring case.",
)

W001 = Check(
    "adldap_auth.W001", W, "A clear-text ldap:// URI without StartTLS.",
    "{setting} has {uri!r}: without LDAP_SYNC_START_TLS the bind password and the directory's "
    "data cross the network in clear text.",
    "Use ldaps:// or set LDAP_SYNC_START_TLS = True (and LDAP_SYNC_REQUIRE_TLS = True to make "
    "this an error).",
)
W002 = Check(
    "adldap_auth.W002", W, "LDAP_SYNC_BIND_PASS is empty.",
    "{setting} is empty: a simple bind with an empty password is an unauthenticated bind "
    "(RFC 4513, 5.1.2), which servers accept without checking anything.",
    "Set the password of the reader account in LDAP_SYNC_BIND_DN, e.g. from the environment.",
)
W003 = Check(
    "adldap_auth.W003", W, "LDAP_SYNC_REQUIRE_CERT is False.",
    "{setting} is False: the directory's TLS certificate is not verified, so anyone on the path "
    "can pose as the directory and receive the bind password.",
    "Set LDAP_SYNC_CA_FILE to the CA that signed the directory's certificate and remove "
    "{setting}.",
)
W004 = Check(
    "adldap_auth.W004", W, "LDAP_SYNC_BIND_PAGESIZE is above Active Directory's MaxPageSize.",
    "{setting} is {value}, above Active Directory's default MaxPageSize of 1000, which AD "
    "applies instead.",
    "Use 1000 or less unless the domain's LDAP policy raises MaxPageSize.",
)
W005 = Check(
    "adldap_auth.W005", W, 'LDAP_SYNC_GROUP_MEMBERSHIP_MODE is the legacy "filter" mode.',
    '{setting} is "filter": memberships are read with one search per user, as '
    "django-adldap-sync did, which is slow on large directories.",
    'Use "graph" (the default), which reads each group once per run.',
)
W006 = Check(
    "adldap_auth.W006", W, 'A profile model has no OneToOneField "user" to the user model.',
    '{setting} has {value}, which has no OneToOneField named "user" to {user_model}, so the '
    "sync cannot find or create its rows.",
    "Add user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE) "
    "to the model.",
)
W007 = Check(
    "adldap_auth.W007", W, "An LDAP_SYNC_* setting that adldap-auth does not know (a typo?).",
    "{setting} is not an adldap-auth setting and is ignored.",
    "{advice}",
)
W008 = Check(
    "adldap_auth.W008", W, "The old misspelled name LDAP_LDAP_SYNC_USER_CALLBACKS is set.",
    "{setting} is the misspelled name that django-adldap-sync read; {state}.",
    "Rename it to {new}.",
)
# Deployment checks (``manage.py check --deploy`` only; see the last section of this module).
W009 = Check(
    "adldap_auth.W009", W, "The bind account is a domain administrator (deploy check).",
    "{setting} {account!r} is a member of {groups}: the sync only reads the directory, yet "
    "this account can change all of it, and its password sits in the site's settings.",
    "Bind with a least-privilege account (any domain user can read users and groups), or "
    "remove this account from {groups}.",
)
W010 = Check(
    "adldap_auth.W010", W, "The deploy check could not bind to the directory.",
    "{setting}: the deploy check could not bind to the directory to look at the bind "
    "account's privileges: {error}.",
    "Check LDAP_SYNC_BIND_URI, LDAP_SYNC_BIND_DN and LDAP_SYNC_BIND_PASS; "
    "'manage.py syncldap --dry-run' reports the same error.",
)
W011 = Check(
    "adldap_auth.W011", W, "A mapped attribute is not in the directory's schema (deploy check).",
    "{setting} maps {attribute!r}, which is not an attribute type of the directory's schema, so "
    "its field would stay empty.",
    "Check the spelling against the server's schema; a batch run reports the same warning.",
)

#: Every check id with a short description, in id order (for the documentation).
CHECK_IDS: dict[str, str] = {
    c.id: c.summary
    for c in sorted(
        # By name first: isinstance() on the lazy ``settings`` global would configure Django.
        (v for k, v in dict(globals()).items() if k[:1] in "EW" and isinstance(v, Check)),
        key=lambda c: c.id,
    )
}


# -- helpers ---------------------------------------------------------------------------------


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _typed(value: Any) -> str:
    """A value and its type, for type errors: ``'yes' (str)``."""
    return f"{_show(value)} ({type(value).__name__})"


def _full(name: str) -> str:
    return PREFIX + name


def _source(name: str) -> str:
    """The settings name a value was read from (an old alias when only that one is set)."""
    if not sync_settings.is_set(name):
        for old, new in ALIASES.items():
            if new == name and hasattr(settings, old):
                return old
    return _full(name)


def _value(name: str) -> Any:
    """The value to validate: as the sync reads it, except that inherited names are not
    followed (their source is validated under its own name)."""
    if name in INHERITS:
        return getattr(settings, _full(name), None)
    return getattr(sync_settings, name)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def set_names() -> list[str]:
    """The ``LDAP_SYNC_*`` names (and old aliases) present in the settings."""
    return sorted(n for n in dir(settings) if n.startswith(PREFIX) or n in ALIASES)


def in_use() -> bool:
    """True when the site uses the ``LDAP_SYNC_*`` configuration (the checks then run)."""
    return sync_settings.configured() or bool(set_names())


# -- LDAP syntax -----------------------------------------------------------------------------

_DESCR = r"[A-Za-z][A-Za-z0-9-]*"
_OID = r"[0-9]+(?:\.[0-9]+)+"
_ATTRIBUTE_RE = re.compile(rf"(?:{_DESCR}|{_OID})(?:;[A-Za-z0-9-]+)*\Z")
_RULE_RE = re.compile(rf"(?:{_DESCR}|{_OID})\Z")
_HEX = frozenset("0123456789abcdefABCDEF")


class _FilterSyntaxError(ValueError):
    pass


def filter_problem(text: str) -> str | None:
    """Why ``text`` is not an RFC 4515 search filter, or None if it is one.

    Checks what libldap would refuse to encode: balanced parentheses, ``&``/``|``/``!``
    composition, attribute descriptions, extensible matches (``attr:dn:rule:=value``) and
    escapes in values. Whitespace between components is tolerated, as libldap does.
    """
    stripped = text.strip()
    if not stripped:
        return "it is empty"
    if not stripped.startswith("("):
        return "it must be enclosed in parentheses"
    try:
        end = _parse_filter(stripped, 0)
    except _FilterSyntaxError as error:
        return str(error)
    except RecursionError:
        return "it is nested too deeply"
    if end != len(stripped):
        return f"unexpected {stripped[end:]!r} after the closing parenthesis"
    return None


def _skip_spaces(text: str, i: int) -> int:
    while i < len(text) and text[i] == " ":
        i += 1
    return i


def _parse_filter(text: str, i: int) -> int:
    """Parse ``( ... )`` starting at ``text[i] == "("``; return the index after ``)``."""
    i = _skip_spaces(text, i + 1)
    if i >= len(text):
        raise _FilterSyntaxError("unbalanced parentheses: a ')' is missing")
    if text[i] in "&|":
        i = _skip_spaces(text, i + 1)
        while i < len(text) and text[i] == "(":
            i = _skip_spaces(text, _parse_filter(text, i))
    elif text[i] == "!":
        i = _skip_spaces(text, i + 1)
        if i >= len(text) or text[i] != "(":
            raise _FilterSyntaxError("'!' must be followed by one filter in parentheses")
        i = _skip_spaces(text, _parse_filter(text, i))
    elif text[i] == ")":
        raise _FilterSyntaxError(f"empty parentheses at position {i}")
    else:
        i = _parse_item(text, i)
    if i >= len(text):
        raise _FilterSyntaxError("unbalanced parentheses: a ')' is missing")
    if text[i] != ")":
        raise _FilterSyntaxError(f"unexpected {text[i]!r} at position {i + 1}")
    return i + 1


def _parse_item(text: str, i: int) -> int:
    """Check the item ``attr op value`` at ``text[i:]``; return the index of its ``)``."""
    j = i
    while j < len(text) and text[j] != ")":
        if text[j] == "\\":
            j += 1
        elif text[j] == "(":
            raise _FilterSyntaxError(f"unescaped '(' at position {j + 1}")
        j += 1
    item = text[i:j]
    left, equals, value = item.partition("=")
    if not equals:
        raise _FilterSyntaxError(f"{item!r} has no '='")
    if left.endswith(("~", "<", ">")):
        _check_attribute(left[:-1])
    elif left.endswith(":"):
        _check_extensible(left[:-1])
    else:
        _check_attribute(left)
    _check_value(value)
    return j


def _check_attribute(name: str) -> None:
    if not _ATTRIBUTE_RE.match(name):
        raise _FilterSyntaxError(f"{name!r} is not an attribute name")


def _check_extensible(spec: str) -> None:
    attribute, *rest = spec.split(":")
    if attribute:
        _check_attribute(attribute)
    if rest and rest[0].lower() == "dn":
        rest = rest[1:]
    if len(rest) > 1 or (rest and not _RULE_RE.match(rest[0])):
        raise _FilterSyntaxError(f"{spec + ':='!r} is not an extensible match")
    if not attribute and not rest:
        raise _FilterSyntaxError("an extensible match needs an attribute or a matching rule")


def _check_value(value: str) -> None:
    k = 0
    while k < len(value):
        if value[k] == "\\":
            pair = value[k + 1 : k + 3]
            if len(pair) == 2 and set(pair) <= _HEX:
                k += 3
                continue
            if pair[:1] and pair[0] in "()*\\":  # the older RFC 1960 escapes libldap accepts
                k += 2
                continue
            raise _FilterSyntaxError(f"bad escape {value[k:k + 3]!r} in value {value!r}")
        k += 1


def is_dn(value: str) -> bool:
    """True for a non-empty, syntactically valid DN (parsed locally by libldap)."""
    return bool(value.strip()) and ldap.dn.is_dn(value)


# -- per-setting validators ------------------------------------------------------------------
# Each takes the setting's short name and its value and returns the messages.

_EXAMPLES = {
    "BIND_URI": '"ldaps://dc1.example.com"',
    "BIND_DN": '"CN=svc-django,OU=Service Accounts,DC=example,DC=com"',
    "BIND_PASS": 'os.environ["LDAP_SYNC_BIND_PASS"]',
    "BIND_SEARCH": '"DC=example,DC=com"',
}

_ADVICE = {
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
    "RANGE_SIZE": "None lets the server choose; otherwise member values are requested in "
    "ranges of this size (Active Directory's MaxValRange is 1500).",
    "INCREMENTAL_BETWEEN_FULL": "A full run after this many incremental runs; -1 never, "
    "0 always.",
    "INCREMENTAL_TIME_OFFSET": "Minutes subtracted from change timestamps to absorb clock "
    "skew, e.g. 10.",
    "USER_CHANGE_FIELDCASE": "Profile fields are matched to attribute names after this case "
    "change.",
    "GROUP_REMOVAL_ACTION": '"KEEP" leaves groups gone from the directory, "DELETE" deletes '
    "them.",
    "GROUP_MEMBERSHIP_MODE": '"graph" reads each group once per run; "filter" runs '
    "LDAP_SYNC_GROUP_MEMBERSHIP_FILTER once per user.",
    "CHANGE_TRACKING": '"auto" uses uSNChanged on Active Directory and modifyTimestamp '
    "elsewhere.",
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

_DEFAULT_ADVICE = "See the settings table in the adldap-auth documentation."


def _advice(name: str) -> str:
    return _ADVICE.get(name, _DEFAULT_ADVICE)


def _bool(name: str, value: Any) -> list[Message]:
    if isinstance(value, bool):
        return []
    return [E004(_source(name), value=_typed(value))]


def _integer(
    low: int, high: int | None = None, *, optional: bool = False
) -> Callable[[str, Any], list[Message]]:
    bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
    if optional:
        bounds += " (or None)"

    def validate(name: str, value: Any) -> list[Message]:
        if optional and value is None:
            return []
        if _is_int(value) and value >= low and (high is None or value <= high):
            return []
        return [E005(_full(name), bounds=bounds, value=_typed(value), advice=_advice(name))]

    return validate


def _seconds(name: str, value: Any) -> list[Message]:
    if _is_number(value) and value > 0:
        return []
    return [E006(_full(name), value=_typed(value), advice=_advice(name))]


def _string(*, optional: bool = False, empty: bool = False) -> Callable[[str, Any], list]:
    expected = "a string" if empty else "a non-empty string"
    if optional:
        expected += " or None"

    def validate(name: str, value: Any) -> list[Message]:
        if optional and value is None:
            return []
        if isinstance(value, str) and (empty or value.strip()):
            return []
        return [E007(_full(name), expected=expected, value=_typed(value), advice=_advice(name))]

    return validate


def _choice(*choices: Any) -> Callable[[str, Any], list[Message]]:
    def validate(name: str, value: Any) -> list[Message]:
        if any(value == c and type(value) is type(c) for c in choices):
            return []
        shown = ", ".join(_show(c) for c in choices)
        return [E010(_full(name), choices=shown, value=_show(value), advice=_advice(name))]

    return validate


def _list_problem(value: Any) -> str | None:
    if isinstance(value, str):
        return f"got the string {_show(value)}: wrap it in a list"
    if not isinstance(value, list | tuple):
        return f"got {_typed(value)}"
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            return f"item {index} is {_typed(item)}"
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


def _str_list(name: str, value: Any) -> list[Message]:
    problem = _list_problem(value)
    if problem is None:
        return []
    return [E008(_source(name), detail=problem, example=_LIST_EXAMPLES[name])]


def _callbacks(name: str, value: Any) -> list[Message]:
    found = _str_list(name, value)
    if found:
        return found
    for path in value:
        try:
            resolve_callback(path)
        except (ImportError, TypeError) as error:
            found.append(E020(_source(name), value=_show(path), detail=str(error)))
    return found


_DICT_EXAMPLES = {
    "USER_ATTRIBUTES": '{"sAMAccountName": "username", "givenName": "first_name", '
    '"sn": "last_name", "mail": "email"}',
    "GROUP_ATTRIBUTES": '{"cn": "name"}',
}


def _dict_problem(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"got {_typed(value)}"
    for key, field in value.items():
        if not isinstance(key, str) or not key.strip():
            return f"the key {_typed(key)} is not an attribute name"
        if not isinstance(field, str) or not field.strip():
            return f"{key!r} maps to {_typed(field)}"
    return None


def _concrete_field(model: Any, name: str) -> Any:
    """The concrete, non-many-to-many field ``name`` of ``model``, or None."""
    from django.core.exceptions import FieldDoesNotExist

    try:
        field = model._meta.get_field(name)
    except FieldDoesNotExist:
        return None
    if not getattr(field, "concrete", False) or field.many_to_many:
        return None
    return field


def _username_field() -> str:
    """LDAP_SYNC_USERNAME_FIELD when valid (E016 reports it otherwise), or USERNAME_FIELD."""
    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    configured = sync_settings.USERNAME_FIELD
    if isinstance(configured, str) and configured.strip():
        field = _concrete_field(user_model, configured)
        if field is not None and field.unique:
            return configured
    return user_model.USERNAME_FIELD


def _user_attributes(name: str, value: Any) -> list[Message]:
    problem = _dict_problem(value)
    if problem is not None:
        return [E009(_full(name), detail=problem, example=_DICT_EXAMPLES[name])]
    from django.contrib.auth import get_user_model

    from .mapping import default_user_attributes_note, user_text_fields

    user_model = get_user_model()
    origin = default_user_attributes_note(sync_settings, user_model)
    found = []
    username = _username_field()
    if username not in value.values():
        found.append(E014(_full(name), field=username, origin=origin))
    fits = user_text_fields(user_model)
    for attribute, field in value.items():
        if field in fits:
            continue
        model_field = _concrete_field(user_model, field)
        if model_field is None:
            problem = "not a field"
        elif field == "password":
            problem = "the password hash (never synced)"
        else:
            problem = f"a {type(model_field).__name__} (not text)"
        found.append(
            E015(
                _full(name), attribute=attribute, field=field, problem=problem,
                model=user_model._meta.label, origin=origin, fields=", ".join(fits),
            )
        )  # fmt: skip
    return found


def _group_attributes(name: str, value: Any) -> list[Message]:
    problem = _dict_problem(value)
    if problem is not None:
        return [E009(_full(name), detail=problem, example=_DICT_EXAMPLES[name])]
    from django.contrib.auth.models import Group

    found = []
    if "name" not in value.values():
        found.append(E017(_full(name)))
    for attribute, field in value.items():
        if _concrete_field(Group, field) is None:
            found.append(E018(_full(name), attribute=attribute, field=field))
    return found


def _username_field_setting(name: str, value: Any) -> list[Message]:
    found = _string(optional=True)(name, value)
    if found or value is None:
        return found
    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    field = _concrete_field(user_model, value)
    if field is None or not field.unique:
        problem = "a field" if field is None else "a unique field"
        model = user_model._meta.label
        return [E016(_full(name), value=_show(value), problem=problem, model=model)]
    return []


def _profiles(name: str, value: Any) -> list[Message]:
    found = _str_list(name, value)
    if found:
        return found
    from django.apps import apps
    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    for label in value:
        try:
            model = apps.get_model(label)
        except (LookupError, ValueError) as error:
            if label.count(".") == 1:
                detail = str(error).rstrip(".")
            else:
                detail = 'expected "app_label.ModelName"'
            found.append(E019(_full(name), value=_show(label), detail=detail))
            continue
        field = _user_link(model)
        if field is None or field.related_model is not user_model:
            found.append(W006(_full(name), value=_show(label), user_model=user_model._meta.label))
    return found


_PROFILE_MAP_CHECKS = {"type": E028, "model": E029, "field": E030, "duplicate": E031}


def _profile_attributes(name: str, value: Any) -> list[Message]:
    from .mapping import read_profile_attributes

    labels = sync_settings.USER_EXTRA_PROFILES
    if _list_problem(labels) is not None:
        labels = []  # E008 under LDAP_SYNC_USER_EXTRA_PROFILES
    _maps, problems = read_profile_attributes(value, labels)
    return [_PROFILE_MAP_CHECKS[p.kind](_full(name), detail=p.detail) for p in problems]


def _user_link(model: Any) -> Any:
    """The OneToOneField ``user`` of a profile model, or None."""
    from django.core.exceptions import FieldDoesNotExist

    try:
        field = model._meta.get_field("user")
    except FieldDoesNotExist:
        return None
    return field if field.one_to_one and field.concrete else None


def _search_base(*, optional: bool) -> Callable[[str, Any], list[Message]]:
    def validate(name: str, value: Any) -> list[Message]:
        if optional and value is None:
            return []
        if not optional and (value is None or value == ""):
            return _required(name, value)
        found = _string(optional=optional)(name, value)
        if found:
            return found
        if not is_dn(value):
            return [E012(_full(name), value=_show(value))]
        return []

    return validate


def _required(name: str, value: Any) -> list[Message]:
    if not sync_settings.is_set(name):
        state = "not set"
    elif value is None:
        state = "None"
    else:
        state = "empty"
    return [E001(_full(name), state=state, example=_EXAMPLES[name])]


def _bind_uri(name: str, value: Any) -> list[Message]:
    if value is None or value in ("", [], ()):
        return _required(name, value)
    uris = [value] if isinstance(value, str) else value
    if not isinstance(uris, list | tuple) or not all(isinstance(u, str) for u in uris):
        return [E002(_full(name), value=_typed(value))]
    return [
        E003(_full(name), uri=uri)
        for uri in uris
        if urlsplit(uri.strip()).scheme.lower() not in ("ldap", "ldaps", "ldapi")
    ]


def _bind_dn(name: str, value: Any) -> list[Message]:
    # Not checked as a DN: Active Directory also binds with user@domain or DOMAIN\user.
    if value is None or value == "":
        return _required(name, value)
    return _string()(name, value)


def _bind_pass(name: str, value: Any) -> list[Message]:
    if value is None:
        return _required(name, value)
    if not isinstance(value, str):  # never show the value: it is a password
        return [
            E007(
                _full(name),
                expected="a string",
                value=f"a value of type {type(value).__name__}",
                advice=_advice(name),
            )
        ]
    return []  # empty: W002 from check_security


def _filter(name: str, value: Any) -> list[Message]:
    found = _string()(name, value)
    if found:
        return found
    problem = filter_problem(value)
    return [E011(_full(name), problem=problem, value=_show(value))] if problem else []


def _optional_filter(name: str, value: Any) -> list[Message]:
    return [] if value is None else _filter(name, value)


def _incremental_filter(switch: str, example: str) -> Callable[[str, Any], list[Message]]:
    def validate(name: str, value: Any) -> list[Message]:
        if getattr(sync_settings, switch) is False and value in (None, ""):
            return []  # incremental runs are off: the filter is not used
        found = _filter(name, value)
        if found:
            return found
        if "?" not in value:
            return [
                E013(
                    _full(name), placeholder="'?'", example=example,
                    consequence="incremental runs cannot ask for what changed since the last "
                    "run",
                )
            ]
        return []

    return validate


def _membership_filter(name: str, value: Any) -> list[Message]:
    found = _filter(name, value)
    if found or sync_settings.GROUP_MEMBERSHIP_MODE != "filter":
        return found
    if "{distinguishedName}" not in value:
        return [
            E013(
                _full(name), placeholder="'{distinguishedName}'", example=DEFAULTS[name],
                consequence='the "filter" membership mode would give every user the same groups',
            )
        ]
    return []


def _membership_mode(name: str, value: Any) -> list[Message]:
    found = _choice("graph", "filter")(name, value)
    if not found and value == "filter":
        found.append(W005(_full(name)))
    return found


def _page_size(name: str, value: Any) -> list[Message]:
    found = _integer(1, 100_000)(name, value)
    if not found and value > 1000:
        found.append(W004(_full(name), value=value))
    return found


def _add_default(name: str, value: Any) -> list[Message]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        return [E021(_full(name), detail=f"got {_typed(value)}")]
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
                found.append(E012(_full(name), value=_show(item[0])))
            continue
        found.append(E021(_full(name), detail=f"item {index} is {_typed(item)}"))
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


def _removal_threshold(name: str, value: Any) -> list[Message]:
    try:
        removal_threshold(value)  # the setting's meaning lives in conf
    except ValueError as error:
        return [E022(_full(name), value=_typed(value), detail=error)]
    return []


def _removal_grace(name: str, value: Any) -> list[Message]:
    if value is None or (_is_number(value) and value >= 0):
        return []
    if isinstance(value, dt.timedelta) and value >= dt.timedelta(0):
        return []
    return [E023(_full(name), value=_typed(value))]


_SAMPLE_TIME = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def _photo_name(name: str, value: Any) -> list[Message]:
    found = _string()(name, value)
    if found:
        return found
    if "/" in value or "\\" in value or ".." in value or "\0" in value:
        problem = "contains a path separator, '..' or a NUL character"
        return [E024(_full(name), problem=problem, value=_show(value))]
    sample = value.replace("{username}", "jdoe").replace("{uuid4}", "0" * 32)
    try:
        _SAMPLE_TIME.strftime(sample)
    except (ValueError, UnicodeError) as error:
        return [E024(_full(name), problem=f"cannot be formatted ({error})", value=_show(value))]
    return []


def _timestamp_format(name: str, value: Any) -> list[Message]:
    found = _string()(name, value)
    if found:
        return found
    if "\0" in value:  # strftime would silently cut the result there
        return [E025(_full(name), problem="it contains a NUL character", value=_show(value))]
    try:
        formatted = _SAMPLE_TIME.strftime(value)
    except (ValueError, UnicodeError) as error:
        return [E025(_full(name), problem=str(error), value=_show(value))]
    if formatted == value:
        return [E025(_full(name), problem="it has no strftime codes", value=_show(value))]
    return []


def _ca_file(name: str, value: Any) -> list[Message]:
    found = _string(optional=True)(name, value)
    if found or value is None:
        return found
    if not os.path.isfile(value):
        return [E026(_full(name), problem="does not exist or is not a file", value=_show(value))]
    if not os.access(value, os.R_OK):
        return [E026(_full(name), problem="is not readable", value=_show(value))]
    return []


#: The validator of every setting of :data:`adldap_auth.conf.DEFAULTS`.
VALIDATORS: dict[str, Callable[[str, Any], list[Message]]] = {
    "BIND_URI": _bind_uri,
    "BIND_DN": _bind_dn,
    "BIND_PASS": _bind_pass,
    "BIND_SEARCH": _search_base(optional=False),
    "BIND_PAGESIZE": _page_size,
    "CA_FILE": _ca_file,
    "START_TLS": _bool,
    "REQUIRE_CERT": _bool,
    "REQUIRE_TLS": _bool,
    "NETWORK_TIMEOUT": _seconds,
    "OPERATION_TIMEOUT": _seconds,
    "RANGE_SIZE": _integer(1, optional=True),
    "USER": _bool,
    "USER_INCREMENTAL": _bool,
    "USER_SEARCH": _search_base(optional=True),
    "USER_FILTER": _filter,
    "USER_FILTER_INCREMENTAL": _incremental_filter(
        "USER_INCREMENTAL", DEFAULTS["USER_FILTER_INCREMENTAL"]
    ),
    "USER_ATTRIBUTES": _user_attributes,
    "USER_EXTRA_ATTRIBUTES": _str_list,
    "USER_EXTRA_PROFILES": _profiles,
    "USER_PROFILE_ATTRIBUTES": _profile_attributes,
    "USER_CHANGE_FIELDCASE": _choice(None, "lower", "upper"),
    "MULTIVALUE_SEPARATOR": _string(),
    "USER_EXEMPT_FROM_SYNC": _str_list,
    "USER_CALLBACKS": _callbacks,
    "USER_SET_UNUSABLE_PASSWORD": _bool,
    "USER_SHOW_PROGRESS": _bool,
    "USER_THUMBNAILPHOTO_NAME": _photo_name,
    "USERNAME_FIELD": _username_field_setting,
    "REMOVED_USER_CALLBACKS": _callbacks,
    "IDENTITY_ATTRIBUTE": _string(),
    "PHOTO_MAX_BYTES": _integer(1),
    "PHOTO_MAX_PIXELS": _integer(1),
    "USERNAME_STRICT": _bool,
    "ADOPT_USERS": _str_list,
    "ADOPT_GROUPS": _str_list,
    "GROUP": _bool,
    "GROUP_INCREMENTAL": _bool,
    "GROUP_SEARCH": _search_base(optional=True),
    "MEMBERSHIP_SEARCH": _search_base(optional=True),
    "MEMBERSHIP_FILTER": _optional_filter,
    "GROUP_FILTER": _filter,
    "GROUP_FILTER_INCREMENTAL": _incremental_filter(
        "GROUP_INCREMENTAL", DEFAULTS["GROUP_FILTER_INCREMENTAL"]
    ),
    "GROUP_ATTRIBUTES": _group_attributes,
    "GROUP_REMOVAL_ACTION": _choice("KEEP", "DELETE"),
    "GROUP_MEMBERSHIP": _bool,
    "GROUP_MEMBERSHIP_DN_FIELD": _string(),
    "GROUP_MEMBERSHIP_FILTER": _membership_filter,
    "GROUP_MEMBERSHIP_CREATE_IF_NOT_EXISTS": _bool,
    "GROUP_MEMBERSHIP_ADD_DEFAULT": _add_default,
    "GROUP_MEMBERSHIP_MODE": _membership_mode,
    "GROUP_MEMBER_ATTRIBUTE": _string(),
    "INCREMENTAL_BETWEEN_FULL": _integer(-1),
    "INCREMENTAL_TIME_OFFSET": _integer(0),
    "INCREMENTAL_TIMESTAMPFORMAT": _timestamp_format,
    "CHANGE_TRACKING": _choice("auto", "usn", "timestamp"),
    "REMOVAL_THRESHOLD": _removal_threshold,
    "REMOVAL_GRACE": _removal_grace,
    "LOCK_STALE_AFTER": _seconds,
    "WRITE_BATCH_SIZE": _integer(1),
    "LOGIN_GROUP_RESOLUTION": _choice("auto", "in_chain", "graph"),
    "LOGIN_GROUP_CACHE_TIMEOUT": _integer(0),
}

#: Names of other packages' ``LDAP_SYNC_*`` settings that sites bring along, with advice.
FOREIGN_SETTINGS = {
    "USER_REMOVAL_ACTION": "django-ldap-sync's setting; adldap-auth applies "
    "LDAP_SYNC_REMOVED_USER_CALLBACKS to removed users instead.",
    "USER_EXEMPT_FROM_REMOVAL": "django-ldap-sync's setting; adldap-auth never touches the users "
    "of LDAP_SYNC_USER_EXEMPT_FROM_SYNC.",
}


def _unknown_names(names: Iterable[str]) -> list[Message]:
    known = [_full(n) for n in DEFAULTS]
    found = []
    for full in names:
        if not full.startswith(PREFIX) or full[len(PREFIX) :] in DEFAULTS:
            continue
        short = full[len(PREFIX) :]
        if short in FOREIGN_SETTINGS:
            advice = f"This is {FOREIGN_SETTINGS[short]}"
        else:
            close = difflib.get_close_matches(full, known, n=1, cutoff=0.8)
            advice = f"Did you mean {close[0]}?" if close else _DEFAULT_ADVICE
        found.append(W007(full, advice=advice))
    return found


def _aliases(names: Iterable[str]) -> list[Message]:
    found = []
    for old in names:
        if old not in ALIASES:
            continue
        new = _full(ALIASES[old])
        state = (
            f"it is ignored because {new} is set"
            if hasattr(settings, new)
            else f"it is still read as {new}"
        )
        found.append(W008(old, state=state, new=new))
    return found


def _uris() -> list[str]:
    value = sync_settings.BIND_URI
    uris = [value] if isinstance(value, str) else value
    if not isinstance(uris, list | tuple):
        return []
    return [u for u in uris if isinstance(u, str)]


# -- registered checks -----------------------------------------------------------------------


@checks.register(TAG)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Message]:
    """Types, values and consistency of every ``LDAP_SYNC_*`` setting."""
    if not in_use():
        return []
    names = set_names()
    found = _unknown_names(names) + _aliases(names)
    for name, validate in VALIDATORS.items():
        found.extend(validate(name, _value(name)))
    return found


@checks.register(TAG, checks.Tags.security)
def check_security(app_configs: Any = None, **kwargs: Any) -> list[Message]:
    """Clear-text URIs, unverified certificates and an empty bind password."""
    if not in_use():
        return []
    found = []
    start_tls = sync_settings.START_TLS is True
    require_tls = sync_settings.REQUIRE_TLS is True
    for uri in _uris():
        if start_tls or urlsplit(uri.strip()).scheme.lower() != "ldap":
            continue
        check = E027 if require_tls else W001
        found.append(check(_full("BIND_URI"), uri=uri))
    if sync_settings.BIND_PASS == "":
        found.append(W002(_full("BIND_PASS")))
    if sync_settings.REQUIRE_CERT is False:
        found.append(W003(_full("REQUIRE_CERT")))
    return found


# ============================================================================================
# Deployment checks: these contact the directory
# ============================================================================================
#
# Registered with ``deploy=True``, so only ``manage.py check --deploy`` runs them (never a plain
# ``manage.py check``, ``runserver`` or ``migrate``). The sync logs the same warnings at the
# start of every batch run (:meth:`adldap_auth.sync.SyncEngine._warn_if_privileged` and
# :meth:`~adldap_auth.sync.SyncEngine._warn_unknown_attributes`).

#: Settings that must be valid before the deploy check can open a connection.
_CONNECTION_SETTINGS = (
    "BIND_URI", "BIND_DN", "BIND_PASS", "START_TLS", "CA_FILE", "REQUIRE_CERT",
    "NETWORK_TIMEOUT", "OPERATION_TIMEOUT", "BIND_PAGESIZE", "RANGE_SIZE",
)  # fmt: skip


@checks.register(TAG, checks.Tags.security, deploy=True)
def check_bind_privileges(app_configs: Any = None, **kwargs: Any) -> list[Message]:
    """W009 when the bind account is in Domain Admins (RID 512), Schema Admins (518),
    Enterprise Admins (519) or BUILTIN\\Administrators (S-1-5-32-544), from the rootDSE's
    ``tokenGroups`` of a bind with the site's settings (Active Directory only); W010 when that
    bind fails. Settings with errors are left to :func:`check_settings`."""
    if not in_use():
        return []
    for name in _CONNECTION_SETTINGS:
        if any(m.level >= checks.ERROR for m in VALIDATORS[name](name, _value(name))):
            return []
    from .directory import DirectoryError
    from .directory.connection import DirectorySession, connection_config

    try:
        with DirectorySession.open(connection_config()) as session:
            groups = session.root_dse().privileged_groups
    except DirectoryError as error:  # never carries the password
        return [W010(_full("BIND_URI"), error=error)]
    if not groups:
        return []
    return [W009(_full("BIND_DN"), account=sync_settings.BIND_DN, groups=", ".join(groups))]


#: Settings that must be valid before the deploy check can build the attribute mapping.
_MAPPING_SETTINGS = (
    "USER_ATTRIBUTES", "USER_EXTRA_ATTRIBUTES", "USER_EXTRA_PROFILES",
    "USER_PROFILE_ATTRIBUTES", "USER_CHANGE_FIELDCASE", "USERNAME_FIELD", "IDENTITY_ATTRIBUTE",
    "GROUP_ATTRIBUTES",
)  # fmt: skip


@checks.register(TAG, deploy=True)
def check_schema_attributes(app_configs: Any = None, **kwargs: Any) -> list[Message]:
    """W011 for each attribute mapped to a user or profile field that the directory's schema
    (its subschema entry, read once) does not define, as a batch run warns. Nothing when the
    settings have errors, the bind fails (W010 says so) or the server publishes no schema."""
    if not in_use():
        return []
    for name in (*_CONNECTION_SETTINGS, *_MAPPING_SETTINGS):
        if any(m.level >= checks.ERROR for m in VALIDATORS[name](name, _value(name))):
            return []
    from django.core.exceptions import ImproperlyConfigured

    from .directory import DirectoryError
    from .directory.connection import DirectorySession, connection_config
    from .mapping import build_mapping_config, unknown_schema_attributes

    try:
        with DirectorySession.open(connection_config()) as session:
            root = session.root_dse()
            schema = session.attribute_types(root.subschema_subentry)
    except DirectoryError:
        return []  # check_bind_privileges reports it (W010)
    if schema is None:
        return []
    try:
        config = build_mapping_config(is_ad=root.is_ad)
    except (ImproperlyConfigured, ValueError):
        return []
    return [
        W011(setting, attribute=attribute)
        for setting, attribute in unknown_schema_attributes(config, schema)
    ]
