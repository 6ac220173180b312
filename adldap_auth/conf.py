"""The ``LDAP_SYNC_*`` settings, with the defaults of django-adldap-sync 0.5.2.

``sync_settings.USER_FILTER`` reads ``settings.LDAP_SYNC_USER_FILTER`` or its default. The
object caches nothing that ``override_settings`` could change: every read goes to
``django.conf.settings``, so tests and the ``setting_changed`` signal need no special care.
Values are validated by :mod:`adldap_auth.checks`, not here: reading a setting never raises
anything but ``AttributeError`` for a name that is not a setting.

This module imports nothing from Django models, so it is safe to import from ``settings.py``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

PREFIX = "LDAP_SYNC_"

#: Setting names that must be set by the site (no useful default).
REQUIRED = ("BIND_URI", "BIND_DN", "BIND_PASS", "BIND_SEARCH")

#: Names that follow another setting when unset.
INHERITS = {
    "USER_SEARCH": "BIND_SEARCH",
    "GROUP_SEARCH": "BIND_SEARCH",
    "MEMBERSHIP_SEARCH": "BIND_SEARCH",
}

DEFAULTS: dict[str, Any] = {
    # Connection (seed)
    "BIND_URI": None,
    "BIND_DN": None,
    "BIND_PASS": None,
    "BIND_SEARCH": None,
    "BIND_PAGESIZE": 200,
    # Connection (new): TLS, timeouts
    "CA_FILE": None,
    "START_TLS": False,
    "REQUIRE_CERT": True,
    "REQUIRE_TLS": False,
    "NETWORK_TIMEOUT": 5.0,
    "OPERATION_TIMEOUT": 60.0,
    "RANGE_SIZE": None,  # request member values in explicit ranges of this size (AD: 1500)
    # Users (seed)
    "USER": True,
    "USER_INCREMENTAL": True,
    "USER_SEARCH": None,
    "USER_FILTER": "(&(objectCategory=person)(objectClass=user))",
    "USER_FILTER_INCREMENTAL": "(&(objectCategory=person)(objectClass=user)(whenchanged>=?))",
    "USER_ATTRIBUTES": {
        "sAMAccountName": "username",
        "givenName": "first_name",
        "sn": "last_name",
        "mail": "email",
    },
    "USER_EXTRA_ATTRIBUTES": ["userAccountControl"],
    "USER_EXTRA_PROFILES": [],
    # Per profile model, {"telephoneNumber": "phone", ...}: attribute -> field. A profile listed
    # here is filled from its map only; the others by the seed's rule (fields named like the
    # attributes, after USER_CHANGE_FIELDCASE).
    "USER_PROFILE_ATTRIBUTES": {},
    "USER_CHANGE_FIELDCASE": "lower",
    "MULTIVALUE_SEPARATOR": "|",
    "USER_EXEMPT_FROM_SYNC": ["admin", "administrator", "administrador", "guest"],
    "USER_CALLBACKS": [],
    "USER_SET_UNUSABLE_PASSWORD": True,
    "USER_SHOW_PROGRESS": True,
    "USER_THUMBNAILPHOTO_NAME": "{username}_{uuid4}.jpg",
    "USERNAME_FIELD": None,  # None: the user model's USERNAME_FIELD
    "REMOVED_USER_CALLBACKS": ["adldap_auth.callbacks.removed_user_deactivate"],
    # Users (new)
    "IDENTITY_ATTRIBUTE": "auto",  # "auto": objectGUID on AD, entryUUID elsewhere
    "PHOTO_MAX_BYTES": 5 * 1024 * 1024,
    "PHOTO_MAX_PIXELS": 4096 * 4096,
    # A username the username field's validators refuse (o'neil): False syncs it with a
    # problem reported, True skips the entry.
    "USERNAME_STRICT": False,
    # Adoption (new): existing Django rows the directory may take over by name on first sight.
    # A user who is a superuser or staff or has a usable password, and a group the sync did not
    # create, are adopted only when named here (exact names, or fnmatch patterns such as
    # "app-*"; usernames compared case-insensitively). See docs/security.md.
    "ADOPT_USERS": [],
    "ADOPT_GROUPS": [],
    # Groups (seed)
    "GROUP": True,
    "GROUP_INCREMENTAL": True,
    "GROUP_SEARCH": None,
    "GROUP_FILTER": "(objectClass=group)",
    "GROUP_FILTER_INCREMENTAL": "(&(objectClass=group)(whenchanged>=?))",
    "GROUP_ATTRIBUTES": {"cn": "name"},
    "GROUP_REMOVAL_ACTION": "KEEP",
    # Memberships (seed)
    "GROUP_MEMBERSHIP": True,
    "GROUP_MEMBERSHIP_DN_FIELD": "distinguishedName",
    "GROUP_MEMBERSHIP_FILTER": "(member:1.2.840.113556.1.4.1941:={distinguishedName})",
    "GROUP_MEMBERSHIP_CREATE_IF_NOT_EXISTS": True,
    "GROUP_MEMBERSHIP_ADD_DEFAULT": [],
    # Memberships (new)
    "GROUP_MEMBERSHIP_MODE": "graph",  # "graph" (read groups once) or "filter" (seed, per user)
    "GROUP_MEMBER_ATTRIBUTE": "member",  # "member", "uniqueMember" or "memberUid"
    # The membership scope: every group whose nesting counts (in the group scope or not).
    # MEMBERSHIP_SEARCH None: BIND_SEARCH. MEMBERSHIP_FILTER None: GROUP_FILTER when it is one
    # objectClass/objectCategory term, else (|<GROUP_FILTER>(objectClass=group)(<member attr>=*)).
    "MEMBERSHIP_SEARCH": None,
    "MEMBERSHIP_FILTER": None,
    # Incremental (seed)
    "INCREMENTAL_BETWEEN_FULL": 5,
    "INCREMENTAL_TIME_OFFSET": 10,
    "INCREMENTAL_TIMESTAMPFORMAT": "%Y%m%d%H%M%S.0Z",
    # Incremental and safety (new)
    "CHANGE_TRACKING": "auto",  # "auto": "usn" on AD, "timestamp" elsewhere
    # Removals one run may make of each kind (users, groups, memberships): a count, a
    # percentage string like "10%", or {"percent": p, "minimum": n[, "maximum": m]}: p% of
    # what is synced, but at least n (never more than half of them), at most m. None: no limit.
    "REMOVAL_THRESHOLD": {"percent": 10, "minimum": 10},
    "REMOVAL_GRACE": None,  # seconds (or timedelta) a missing user stays deactivated before delete
    "LOCK_STALE_AFTER": 6 * 3600,  # seconds after which a lock whose holder is silent is taken over
    "WRITE_BATCH_SIZE": 1000,
    # Login backend (new): how adldap_auth.backends.ADLDAPBackend finds a user's groups. Both
    # values read the user's direct groups live and walk up the batch's group graph.
    # "auto": the nesting the last batch run stored (the graph is read live only before any
    # batch run, or when a direct group is new); "graph": always the live graph, cached.
    # "in_chain" (older versions) is read as "auto".
    "LOGIN_GROUP_RESOLUTION": "auto",
    # Seconds Django's cache keeps a live-read group graph and the stored nesting's version
    # (a batch run bumps the version in the cache at once; with a per-process cache other
    # processes see it after at most this delay). 0: the graph is read at every login.
    "LOGIN_GROUP_CACHE_TIMEOUT": 60,
}

#: Old settings names that the seed read (including its misspelling), mapped to ours.
ALIASES = {"LDAP_LDAP_SYNC_USER_CALLBACKS": "USER_CALLBACKS"}


@dataclass(frozen=True)
class RemovalThreshold:
    """What LDAP_SYNC_REMOVAL_THRESHOLD lets one run remove of ``total`` synced users, groups
    or memberships. Built by :func:`removal_threshold`, the one place that reads the setting."""

    count: int | None = None  # the count form: this many, whatever the total
    percent: float | None = None  # the percentage forms: this share of the total,
    minimum: int = 0  # but at least this many (never more than half the total),
    maximum: int | None = None  # and at most this many
    text: str = ""  # the "N%" string as the site wrote it, for messages

    def limit(self, total: int) -> float:
        """The most removals allowed out of ``total``."""
        if self.count is not None:
            return self.count
        # The floor lets a small site lose a few users without --force-removals, but never
        # half of them: 10 of 12 users is a wrong search base, not staff turnover.
        limit = max(self.percent * total / 100, min(self.minimum, total / 2))
        return limit if self.maximum is None else min(limit, self.maximum)

    def describe(self, total: int, noun: str) -> str:
        """The limit in words, e.g. ``10% of 77 synced users, at least 10: 10``."""
        if self.count is not None:
            return str(self.count)
        if self.text:
            return f"{self.text} of {total} {noun}"
        floor = f"at least {self.minimum}" if self.minimum else ""
        if self.minimum > total / 2:
            floor += " but at most half of them"
        ceiling = f"at most {self.maximum}" if self.maximum is not None else ""
        parts = ", ".join(p for p in (f"{self.percent:g}% of {total} {noun}", floor, ceiling) if p)
        return f"{parts}: {self.limit(total):g}"


_PERCENT_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*%\s*\Z")
_THRESHOLD_KEYS = {"percent", "minimum", "maximum"}


def removal_threshold(value: Any) -> RemovalThreshold | None:
    """LDAP_SYNC_REMOVAL_THRESHOLD read: None (no limit), a count, ``"N%"``, or
    ``{"percent": p, "minimum": n, "maximum": m}`` (minimum and maximum optional).

    Raises ``ValueError`` saying what is wrong (:mod:`adldap_auth.checks` reports it as E022).
    """
    if value is None:
        return None
    if _is_count(value):
        return RemovalThreshold(count=value)
    if isinstance(value, str):
        match = _PERCENT_RE.match(value)
        if match and 0 < float(match.group(1)) <= 100:
            return RemovalThreshold(percent=float(match.group(1)), text=value.strip())
        raise ValueError("a string must be a percentage above 0% and at most 100%")
    if isinstance(value, Mapping):
        unknown = set(value) - _THRESHOLD_KEYS
        if unknown:
            raise ValueError(f"unknown keys {sorted(map(str, unknown))}")
        percent = value.get("percent")
        is_number = isinstance(percent, int | float) and not isinstance(percent, bool)
        if not (is_number and 0 < percent <= 100):
            raise ValueError('"percent" must be a number above 0 and at most 100')
        minimum, maximum = value.get("minimum", 0), value.get("maximum")
        if not _is_count(minimum) or not (maximum is None or _is_count(maximum)):
            raise ValueError('"minimum" and "maximum" must be integers >= 0')
        return RemovalThreshold(percent=float(percent), minimum=minimum, maximum=maximum)
    raise ValueError("not an integer >= 0, a percentage string, a dict or None")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class SyncSettings:
    """Attribute access to ``LDAP_SYNC_*`` settings with defaults.

    ``sync_settings.is_set("BIND_URI")`` tells whether the site set a value itself, which the
    login backend uses to decide whether the ``LDAP_SYNC_*`` configuration is in use at all.
    """

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"{PREFIX}{name} is not an adldap-auth setting")
        from django.conf import settings

        value = getattr(settings, PREFIX + name, _MISSING)
        if value is _MISSING:
            for old, new in ALIASES.items():
                if new == name and hasattr(settings, old):
                    return getattr(settings, old)
            if name in INHERITS:
                return getattr(self, INHERITS[name])
            # A copy: a caller appending to a default list must not change it for everyone.
            return copy.deepcopy(DEFAULTS[name])
        if value is None and name in INHERITS:
            return getattr(self, INHERITS[name])
        return value

    def is_set(self, name: str) -> bool:
        from django.conf import settings

        return hasattr(settings, PREFIX + name)

    def configured(self) -> bool:
        """True when the site configured the directory with ``LDAP_SYNC_*`` settings."""
        return self.is_set("BIND_URI")

    @property
    def bind_uris(self) -> list[str]:
        uri = self.BIND_URI
        if not uri:
            return []
        return [uri] if isinstance(uri, str) else list(uri)

    def may_adopt_user(self, username: str) -> bool:
        """Whether LDAP_SYNC_ADOPT_USERS names ``username`` (case-insensitively)."""
        return name_listed(username.lower(), [p.lower() for p in self.ADOPT_USERS or ()])

    def may_adopt_group(self, name: str) -> bool:
        """Whether LDAP_SYNC_ADOPT_GROUPS names the Django group ``name`` (case-sensitively,
        as Django compares group names)."""
        return name_listed(name, self.ADOPT_GROUPS or ())


def name_listed(name: str, patterns: Iterable[str]) -> bool:
    """``name`` equals one of ``patterns`` or matches one with ``fnmatch`` rules (``*``, ``?``,
    ``[...]``): the meaning of LDAP_SYNC_ADOPT_USERS and LDAP_SYNC_ADOPT_GROUPS."""
    return any(name == pattern or fnmatchcase(name, pattern) for pattern in patterns)


def default_group_names(values: Iterable[Any]) -> list[str]:
    """LDAP_SYNC_GROUP_MEMBERSHIP_ADD_DEFAULT: names, or the seed's ``(dn, {"cn": [b"x"]})``."""
    names = []
    for value in values:
        if isinstance(value, str):
            names.append(value)
        else:
            _dn, attrs = value
            cn = attrs.get("cn") or attrs.get("CN")
            name = cn[0] if isinstance(cn, list | tuple) else cn
            names.append(name.decode() if isinstance(name, bytes) else str(name))
    return names


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()

sync_settings = SyncSettings()
