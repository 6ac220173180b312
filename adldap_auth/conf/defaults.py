"""The ``LDAP_SYNC_*`` settings and their defaults (those of django-adldap-sync 0.5.2 for the
settings it had). Imports nothing from Django, so ``settings.py`` may import it."""

from __future__ import annotations

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
    "CHANGE_TRACKING": "auto",  # "auto": "usn" on AD, "timestamp" elsewhere; "contentsync", "dirsync"
    # Removals one run may make of each kind (users, groups, memberships): a count, a
    # percentage string like "10%", or {"percent": p, "minimum": n[, "maximum": m]}: p% of
    # what is synced, but at least n (never more than half of them), at most m. None: no limit.
    "REMOVAL_THRESHOLD": {"percent": 10, "minimum": 10},
    "REMOVAL_GRACE": None,  # seconds (or timedelta) a missing user stays deactivated before delete
    "LOCK_STALE_AFTER": 6 * 3600,  # seconds after which a lock whose holder is silent is taken over
    "WRITE_BATCH_SIZE": 1000,
    # syncldap watch (new): seconds between two looks at the directory when no change feed
    # rings sooner, and between two full runs of a long-running watch.
    "WATCH_INTERVAL": 3.0,
    "WATCH_FULL_INTERVAL": 24 * 3600,
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
