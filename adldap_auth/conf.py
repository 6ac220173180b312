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
from typing import Any

PREFIX = "LDAP_SYNC_"

#: Setting names that must be set by the site (no useful default).
REQUIRED = ("BIND_URI", "BIND_DN", "BIND_PASS", "BIND_SEARCH")

#: Names that follow another setting when unset.
INHERITS = {"USER_SEARCH": "BIND_SEARCH", "GROUP_SEARCH": "BIND_SEARCH"}

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
    # Incremental (seed)
    "INCREMENTAL_BETWEEN_FULL": 5,
    "INCREMENTAL_TIME_OFFSET": 10,
    "INCREMENTAL_TIMESTAMPFORMAT": "%Y%m%d%H%M%S.0Z",
    # Incremental and safety (new)
    "CHANGE_TRACKING": "auto",  # "auto": "usn" on AD, "timestamp" elsewhere
    "REMOVAL_THRESHOLD": 500,  # a count, or a percentage string like "10%"; None: no limit
    "REMOVAL_GRACE": None,  # seconds (or timedelta) a missing user stays deactivated before delete
    "LOCK_STALE_AFTER": 6 * 3600,  # seconds after which a lock whose holder is silent is taken over
    "WRITE_BATCH_SIZE": 1000,
    # Login backend (new): how adldap_auth.backends.ADLDAPBackend finds a user's groups.
    # "auto": on Active Directory tokenGroups plus one search of the group scope (falling back
    # to "in_chain" when that cannot answer for sure); elsewhere the group graph, read once and
    # kept in the process. "in_chain": on AD one LDAP_MATCHING_RULE_IN_CHAIN search (slower on
    # the server). "graph": always the cached group graph.
    "LOGIN_GROUP_RESOLUTION": "auto",
    # Seconds a login process keeps the group graph it read (graph resolution only); 0 reads
    # the graph at every login. Group changes reach logins after at most this delay.
    "LOGIN_GROUP_CACHE_TIMEOUT": 60,
}

#: Old settings names that the seed read (including its misspelling), mapped to ours.
ALIASES = {"LDAP_LDAP_SYNC_USER_CALLBACKS": "USER_CALLBACKS"}


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


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()

sync_settings = SyncSettings()
