"""The rule of every setting, and :func:`validate`, which runs them all: the one validation that
``manage.py check`` reports and that every run and login obeys."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from . import ldap_rules, model_rules
from .defaults import ALIASES, DEFAULTS, PREFIX
from .messages import E027, W001, W002, W003, W007, W008, Message
from .reader import sync_settings, without_bind_password
from .value_rules import (
    DEFAULT_ADVICE,
    boolean,
    callback_list,
    checked_value,
    choice,
    full_name,
    in_use,
    integer,
    photo_name,
    removal_grace,
    removal_threshold_rule,
    seconds,
    set_names,
    str_list,
    string,
    timestamp_format,
)

#: The validator of every setting of :data:`adldap_auth.conf.DEFAULTS`.
VALIDATORS: dict[str, Callable[[str, Any], list[Message]]] = {
    "BIND_URI": ldap_rules.bind_uri,
    "BIND_DN": ldap_rules.bind_dn,
    "BIND_PASS": ldap_rules.bind_pass,
    "BIND_SEARCH": ldap_rules.search_base(optional=False),
    "BIND_PAGESIZE": ldap_rules.page_size,
    "CA_FILE": ldap_rules.ca_file,
    "START_TLS": boolean,
    "REQUIRE_CERT": boolean,
    "REQUIRE_TLS": boolean,
    "NETWORK_TIMEOUT": seconds,
    "OPERATION_TIMEOUT": seconds,
    "RANGE_SIZE": integer(1, optional=True),
    "USER": boolean,
    "USER_INCREMENTAL": boolean,
    "USER_SEARCH": ldap_rules.search_base(optional=True),
    "USER_FILTER": ldap_rules.ldap_filter,
    "USER_FILTER_INCREMENTAL": ldap_rules.incremental_filter(
        "USER_INCREMENTAL", DEFAULTS["USER_FILTER_INCREMENTAL"]
    ),
    "USER_ATTRIBUTES": model_rules.user_attributes,
    "USER_EXTRA_ATTRIBUTES": str_list,
    "USER_EXTRA_PROFILES": model_rules.profiles,
    "USER_PROFILE_ATTRIBUTES": model_rules.profile_attributes,
    "USER_CHANGE_FIELDCASE": choice(None, "lower", "upper"),
    "MULTIVALUE_SEPARATOR": string(),
    "USER_EXEMPT_FROM_SYNC": str_list,
    "USER_CALLBACKS": callback_list,
    "USER_SET_UNUSABLE_PASSWORD": boolean,
    "USER_SHOW_PROGRESS": boolean,
    "USER_THUMBNAILPHOTO_NAME": photo_name,
    "USERNAME_FIELD": model_rules.username_field_setting,
    "REMOVED_USER_CALLBACKS": callback_list,
    "IDENTITY_ATTRIBUTE": string(),
    "PHOTO_MAX_BYTES": integer(1),
    "PHOTO_MAX_PIXELS": integer(1),
    "USERNAME_STRICT": boolean,
    "ADOPT_USERS": str_list,
    "ADOPT_GROUPS": str_list,
    "GROUP": boolean,
    "GROUP_INCREMENTAL": boolean,
    "GROUP_SEARCH": ldap_rules.search_base(optional=True),
    "MEMBERSHIP_SEARCH": ldap_rules.search_base(optional=True),
    "MEMBERSHIP_FILTER": ldap_rules.optional_filter,
    "GROUP_FILTER": ldap_rules.ldap_filter,
    "GROUP_FILTER_INCREMENTAL": ldap_rules.incremental_filter(
        "GROUP_INCREMENTAL", DEFAULTS["GROUP_FILTER_INCREMENTAL"]
    ),
    "GROUP_ATTRIBUTES": model_rules.group_attributes,
    "GROUP_REMOVAL_ACTION": choice("KEEP", "DELETE"),
    "GROUP_MEMBERSHIP": boolean,
    "GROUP_MEMBERSHIP_DN_FIELD": string(),
    "GROUP_MEMBERSHIP_FILTER": ldap_rules.membership_filter,
    "GROUP_MEMBERSHIP_CREATE_IF_NOT_EXISTS": boolean,
    "GROUP_MEMBERSHIP_ADD_DEFAULT": ldap_rules.add_default,
    "GROUP_MEMBERSHIP_MODE": ldap_rules.membership_mode,
    "GROUP_MEMBER_ATTRIBUTE": string(),
    "INCREMENTAL_BETWEEN_FULL": integer(-1),
    "INCREMENTAL_TIME_OFFSET": integer(0),
    "INCREMENTAL_TIMESTAMPFORMAT": timestamp_format,
    "CHANGE_TRACKING": choice("auto", "usn", "timestamp", "contentsync", "dirsync"),
    "REMOVAL_THRESHOLD": removal_threshold_rule,
    "REMOVAL_GRACE": removal_grace,
    "LOCK_STALE_AFTER": seconds,
    "WRITE_BATCH_SIZE": integer(1),
    "WATCH_INTERVAL": seconds,
    "WATCH_FULL_INTERVAL": seconds,
    "LOGIN_GROUP_RESOLUTION": choice("auto", "in_chain", "graph"),
    "LOGIN_GROUP_CACHE_TIMEOUT": integer(0),
}

#: Names of other packages' ``LDAP_SYNC_*`` settings that sites bring along, with advice.
FOREIGN_SETTINGS = {
    "USER_REMOVAL_ACTION": "django-ldap-sync's setting; adldap-auth applies "
    "LDAP_SYNC_REMOVED_USER_CALLBACKS to removed users instead.",
    "USER_EXEMPT_FROM_REMOVAL": "django-ldap-sync's setting; adldap-auth never touches the users "
    "of LDAP_SYNC_USER_EXEMPT_FROM_SYNC.",
}


def unknown_names(names: Iterable[str]) -> list[Message]:
    known = [full_name(n) for n in DEFAULTS]
    found = []
    for full in names:
        if not full.startswith(PREFIX) or full[len(PREFIX) :] in DEFAULTS:
            continue
        short = full[len(PREFIX) :]
        if short in FOREIGN_SETTINGS:
            hint = f"This is {FOREIGN_SETTINGS[short]}"
        else:
            close = difflib.get_close_matches(full, known, n=1, cutoff=0.8)
            hint = f"Did you mean {close[0]}?" if close else DEFAULT_ADVICE
        found.append(W007(full, advice=hint))
    return found


def old_aliases(names: Iterable[str]) -> list[Message]:
    found = []
    for old in names:
        if old not in ALIASES:
            continue
        new = full_name(ALIASES[old])
        state = (
            f"it is ignored because {new} is set"
            if hasattr(settings, new)
            else f"it is still read as {new}"
        )
        found.append(W008(old, state=state, new=new))
    return found


def configured_uris() -> list[str]:
    value = sync_settings.BIND_URI
    uris = [value] if isinstance(value, str) else value
    if not isinstance(uris, list | tuple):
        return []
    return [u for u in uris if isinstance(u, str)]


#: The ids of :func:`security_problems`: ``manage.py check --tag security`` shows them too.
SECURITY_IDS = frozenset({E027.id, W001.id, W002.id, W003.id})


def security_problems() -> list[Message]:
    """Clear-text URIs, unverified certificates and an empty bind password."""
    found = []
    start_tls = sync_settings.START_TLS is True
    require_tls = sync_settings.REQUIRE_TLS is True
    for uri in configured_uris():
        if start_tls or urlsplit(uri.strip()).scheme.lower() != "ldap":
            continue
        check = E027 if require_tls else W001
        found.append(check(full_name("BIND_URI"), uri=uri))
    if sync_settings.BIND_PASS == "":
        found.append(W002(full_name("BIND_PASS")))
    if sync_settings.REQUIRE_CERT is False:
        found.append(W003(full_name("REQUIRE_CERT")))
    return found


def validate() -> list[Message]:
    """Every problem of the ``LDAP_SYNC_*`` settings; none when the site does not use them."""
    if not in_use():
        return []
    names = set_names()
    found = unknown_names(names) + old_aliases(names)
    for name, rule in VALIDATORS.items():
        found.extend(rule(name, checked_value(name)))
    return [_without_password(m) for m in found + security_problems()]


def _without_password(message: Message) -> Message:
    """``message`` with the bind password masked, should a quoted value contain it (a callback
    path, a filter): check output and run records are read by more people than settings."""
    message.msg = without_bind_password(message.msg)
    if message.hint:
        message.hint = without_bind_password(message.hint)
    return message
