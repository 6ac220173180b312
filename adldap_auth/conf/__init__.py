"""The ``LDAP_SYNC_*`` settings: defaults, validation, and the one validated settings object.

:func:`get_config` returns a :class:`SyncConfig` built from the settings once per change of
them; it raises :class:`ConfigError` when :func:`~adldap_auth.conf.validation.validate` finds
an error, the same messages ``manage.py check`` shows. The batch, the login backend and the
admin read settings only through it.
"""

from .config import ConfigError, SyncConfig, config_problems, get_config, in_use
from .defaults import ALIASES, DEFAULTS, INHERITS, PREFIX, REQUIRED
from .reader import (
    SyncSettings,
    default_group_names,
    name_listed,
    sync_settings,
    without_bind_password,
)
from .threshold import RemovalThreshold, removal_threshold

__all__ = [
    "ALIASES",
    "ConfigError",
    "SyncConfig",
    "config_problems",
    "get_config",
    "in_use",
    "DEFAULTS",
    "INHERITS",
    "PREFIX",
    "REQUIRED",
    "RemovalThreshold",
    "SyncSettings",
    "default_group_names",
    "name_listed",
    "removal_threshold",
    "sync_settings",
    "without_bind_password",
]
