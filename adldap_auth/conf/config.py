"""The validated settings object: what the batch, the login backend and the admin read.

:func:`get_config` builds a :class:`SyncConfig` once per change of the settings (Django's
``setting_changed`` signal) after
:func:`~adldap_auth.conf.validation.validate` found no error. With errors it raises
:class:`ConfigError` carrying the messages ``manage.py check`` shows, so a run, a login and the
check can never disagree about whether a configuration is valid.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from django.core.checks import ERROR
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from .defaults import ALIASES, DEFAULTS, PREFIX
from .messages import Message
from .reader import name_listed, sync_settings
from .threshold import RemovalThreshold, removal_threshold
from .validation import validate
from .value_rules import in_use as settings_in_use
from .value_rules import set_names


class ConfigError(ImproperlyConfigured):
    """The ``LDAP_SYNC_*`` settings have errors. ``messages`` holds every problem (errors and
    warnings) that ``manage.py check`` shows; the text names the errors."""

    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages
        errors = [m for m in messages if m.level >= ERROR]
        lines = "\n".join(
            f"  {m.id}: {m.msg}" + (f"\n    HINT: {m.hint}" if m.hint else "") for m in errors
        )
        super().__init__(
            f"the LDAP_SYNC_* settings have {len(errors)} error(s) "
            f"('manage.py check' shows them with hints):\n{lines}"
        )


@dataclass(frozen=True)
class SyncConfig:
    """Every ``LDAP_SYNC_*`` setting, validated, under its settings name (as django-auth-ldap's
    ``LDAPSettings`` does). Inherited search bases are resolved, durations are floats or
    timedeltas, the removal threshold is parsed. See docs/settings.md for each one."""

    # Connection
    BIND_URI: str | list[str] | tuple[str, ...] | None
    BIND_DN: str | None
    BIND_PASS: str | None
    BIND_SEARCH: str | None
    BIND_PAGESIZE: int
    CA_FILE: str | None
    START_TLS: bool
    REQUIRE_CERT: bool
    REQUIRE_TLS: bool
    NETWORK_TIMEOUT: float
    OPERATION_TIMEOUT: float
    RANGE_SIZE: int | None
    # Users
    USER: bool
    USER_INCREMENTAL: bool
    USER_SEARCH: str | None
    USER_FILTER: str
    USER_FILTER_INCREMENTAL: str | None
    USER_ATTRIBUTES: dict[str, str]
    USER_EXTRA_ATTRIBUTES: list[str]
    USER_EXTRA_PROFILES: list[str]
    USER_PROFILE_ATTRIBUTES: dict[str, dict[str, str]]
    USER_CHANGE_FIELDCASE: str | None
    MULTIVALUE_SEPARATOR: str
    USER_EXEMPT_FROM_SYNC: list[str]
    USER_CALLBACKS: list[str]
    USER_SET_UNUSABLE_PASSWORD: bool
    USER_SHOW_PROGRESS: bool
    USER_THUMBNAILPHOTO_NAME: str
    USERNAME_FIELD: str | None
    REMOVED_USER_CALLBACKS: list[str]
    IDENTITY_ATTRIBUTE: str
    PHOTO_MAX_BYTES: int
    PHOTO_MAX_PIXELS: int
    USERNAME_STRICT: bool
    ADOPT_USERS: list[str]
    ADOPT_GROUPS: list[str]
    # Groups
    GROUP: bool
    GROUP_INCREMENTAL: bool
    GROUP_SEARCH: str | None
    GROUP_FILTER: str
    GROUP_FILTER_INCREMENTAL: str | None
    GROUP_ATTRIBUTES: dict[str, str]
    GROUP_REMOVAL_ACTION: str
    # Memberships
    GROUP_MEMBERSHIP: bool
    GROUP_MEMBERSHIP_DN_FIELD: str
    GROUP_MEMBERSHIP_FILTER: str
    GROUP_MEMBERSHIP_CREATE_IF_NOT_EXISTS: bool
    GROUP_MEMBERSHIP_ADD_DEFAULT: list[Any]
    GROUP_MEMBERSHIP_MODE: str
    GROUP_MEMBER_ATTRIBUTE: str
    MEMBERSHIP_SEARCH: str | None
    MEMBERSHIP_FILTER: str | None
    # Incremental runs and safety
    INCREMENTAL_BETWEEN_FULL: int
    INCREMENTAL_TIME_OFFSET: int
    INCREMENTAL_TIMESTAMPFORMAT: str
    CHANGE_TRACKING: str
    REMOVAL_THRESHOLD: RemovalThreshold | None
    REMOVAL_GRACE: dt.timedelta | None
    LOCK_STALE_AFTER: float
    WRITE_BATCH_SIZE: int
    # syncldap watch
    WATCH_INTERVAL: float
    WATCH_FULL_INTERVAL: float
    # Logins
    LOGIN_GROUP_RESOLUTION: str
    LOGIN_GROUP_CACHE_TIMEOUT: int
    # Not a setting: which names the site set.
    set_names: frozenset[str] = field(default=frozenset(), repr=False)

    def is_set(self, name: str) -> bool:
        """Whether the site set ``LDAP_SYNC_<name>`` itself."""
        return PREFIX + name in self.set_names

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
        return name_listed(username.lower(), [p.lower() for p in self.ADOPT_USERS])

    def may_adopt_group(self, name: str) -> bool:
        """Whether LDAP_SYNC_ADOPT_GROUPS names the Django group ``name`` (case-sensitively,
        as Django compares group names)."""
        return name_listed(name, self.ADOPT_GROUPS)


#: Settings whose validated value is converted before it is stored on :class:`SyncConfig`.
_CONVERSIONS: dict[str, Callable[[Any], Any]] = {
    "NETWORK_TIMEOUT": float,
    "OPERATION_TIMEOUT": float,
    "LOCK_STALE_AFTER": float,
    "WATCH_INTERVAL": float,
    "WATCH_FULL_INTERVAL": float,
    "REMOVAL_THRESHOLD": removal_threshold,
    "REMOVAL_GRACE": lambda v: (
        v if v is None or isinstance(v, dt.timedelta) else dt.timedelta(seconds=v)
    ),
    "LOGIN_GROUP_RESOLUTION": lambda v: "auto" if v == "in_chain" else v,
    "USER_EXTRA_ATTRIBUTES": list,
    "USER_EXTRA_PROFILES": list,
    "USER_EXEMPT_FROM_SYNC": list,
    "USER_CALLBACKS": list,
    "REMOVED_USER_CALLBACKS": list,
    "ADOPT_USERS": list,
    "ADOPT_GROUPS": list,
    "GROUP_MEMBERSHIP_ADD_DEFAULT": list,
}


def build_config() -> SyncConfig:
    """Validate the settings and build the object; :class:`ConfigError` on any error."""
    problems = validate()
    if any(m.level >= ERROR for m in problems):
        raise ConfigError(problems)
    values = {}
    for name in DEFAULTS:
        value = getattr(sync_settings, name)
        convert = _CONVERSIONS.get(name)
        values[name] = convert(value) if convert and value is not None else value
    return SyncConfig(**values, set_names=frozenset(set_names()))


_cache_lock = threading.Lock()
_cached: SyncConfig | ConfigError | None = None


def get_config() -> SyncConfig:
    """The validated settings, built at the first read after a change of them (Django's
    ``setting_changed``: ``override_settings`` and pytest-django's ``settings`` send it; the
    settings of a running site do not change). Raises :class:`ConfigError`."""
    global _cached
    cached = _cached
    if cached is None:
        with _cache_lock:
            try:
                cached = build_config()
            except ConfigError as error:
                cached = error
            _cached = cached
    if isinstance(cached, ConfigError):
        raise cached
    return cached


_MODEL_SETTINGS = ("AUTH_USER_MODEL", "INSTALLED_APPS")
_in_use: bool | None = None


def in_use() -> bool:
    """Whether the site uses ``LDAP_SYNC_*`` settings at all (any of them set), kept until the
    settings change: the login backend asks at every step of a login."""
    global _in_use
    if _in_use is None:
        _in_use = settings_in_use()
    return _in_use


@receiver(setting_changed)
def _forget_config(sender: Any, setting: str, **kwargs: Any) -> None:
    global _cached, _in_use
    # The rules also read the user model and the installed apps' models.
    if setting.startswith(PREFIX) or setting in ALIASES or setting in _MODEL_SETTINGS:
        _cached = _in_use = None


def config_problems() -> list[Message]:
    """Errors and warnings of the current settings: what the system checks report (validated
    afresh: a misspelled name added since the last read is a warning, not a change)."""
    return validate()


def config_field_names() -> list[str]:
    """The settings names of :class:`SyncConfig` (a test compares them with DEFAULTS)."""
    return [f.name for f in fields(SyncConfig) if f.name.isupper()]
