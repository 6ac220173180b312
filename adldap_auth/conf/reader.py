"""Raw reads of ``LDAP_SYNC_*`` settings with their defaults, aliases and inheritance.

Only :mod:`adldap_auth.conf` reads settings this way: everything else reads the validated
:class:`~adldap_auth.conf.config.SyncConfig` from :func:`~adldap_auth.conf.get_config`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Any

from .defaults import ALIASES, DEFAULTS, INHERITS, PREFIX


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


def without_bind_password(text: str) -> str:
    """``text`` with the bind password masked, should it quote it (an error, a message quoting
    a callback path or a filter). Reads the setting itself, so it works when the settings have
    errors too."""
    password = sync_settings.BIND_PASS
    if isinstance(password, str) and password:
        return text.replace(password, "********")
    return text
