"""Django system checks for the ``LDAP_SYNC_*`` settings (``manage.py check``).

They report what :func:`adldap_auth.conf.validation.validate` finds, the same validation that
:func:`adldap_auth.conf.get_config` applies before every run and login, so the check and a run
never disagree. Ids are stable (``adldap_auth.E001``...; :data:`CHECK_IDS`); each message's
``obj`` is the setting's name. Nothing is reported for a site that uses only django-auth-ldap's
``AUTH_LDAP_*`` settings. Only the ``deploy=True`` checks contact the directory.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.core import checks

from .conf import ConfigError, config_problems, get_config
from .conf.messages import CHECK_IDS, W009, W010, W011, Message
from .conf.validation import SECURITY_IDS

__all__ = ["CHECK_IDS", "check_bind_privileges", "check_schema_attributes", "check_security"]

TAG = "adldap_auth"


def _for_this_app(app_configs: Iterable[Any] | None) -> bool:
    """Django passes ``app_configs`` to ask about some apps only (``check <app_label>``)."""
    return app_configs is None or any(c.name == "adldap_auth" for c in app_configs)


@checks.register(TAG)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Message]:
    """Types, values and consistency of every ``LDAP_SYNC_*`` setting."""
    if not _for_this_app(app_configs):
        return []
    return [m for m in config_problems() if m.id not in SECURITY_IDS]


@checks.register(TAG, checks.Tags.security)
def check_security(app_configs: Any = None, **kwargs: Any) -> list[Message]:
    """Clear-text URIs, unverified certificates and an empty bind password."""
    if not _for_this_app(app_configs):
        return []
    return [m for m in config_problems() if m.id in SECURITY_IDS]


# -- deployment checks: these contact the directory -------------------------------------------
# Registered with ``deploy=True``, so only ``manage.py check --deploy`` runs them (never a plain
# ``manage.py check``, ``runserver`` or ``migrate``). A batch run logs the same warnings.


def _valid_config() -> Any:
    """The settings object when the site uses ``LDAP_SYNC_*`` and they are valid, else None
    (errors are :func:`check_settings`' to report)."""
    try:
        config = get_config()
    except ConfigError:
        return None
    return config if config.configured() else None


@checks.register(TAG, checks.Tags.security, deploy=True)
def check_bind_privileges(app_configs: Any = None, **kwargs: Any) -> list[Message]:
    """W009 when the bind account is in Domain Admins (RID 512), Schema Admins (518),
    Enterprise Admins (519) or BUILTIN\\Administrators (S-1-5-32-544), from the rootDSE's
    ``tokenGroups`` of a bind with the site's settings (Active Directory only); W010 when that
    bind fails."""
    config = _valid_config() if _for_this_app(app_configs) else None
    if config is None:
        return []
    from .directory import DirectoryError
    from .directory.connection import DirectorySession, connection_config

    try:
        with DirectorySession.open(connection_config()) as session:
            groups = session.root_dse().privileged_groups
    except DirectoryError as error:  # never carries the password
        return [W010("LDAP_SYNC_BIND_URI", error=error)]
    if not groups:
        return []
    return [W009("LDAP_SYNC_BIND_DN", account=config.BIND_DN, groups=", ".join(groups))]


@checks.register(TAG, deploy=True)
def check_schema_attributes(app_configs: Any = None, **kwargs: Any) -> list[Message]:
    """W011 for each attribute mapped to a user or profile field that the directory's schema
    (its subschema entry, read once) does not define, as a batch run warns. Nothing when the
    bind fails (W010 says so) or the server publishes no schema."""
    config = _valid_config() if _for_this_app(app_configs) else None
    if config is None:
        return []
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
    mapping = build_mapping_config(is_ad=root.is_ad)
    return [
        W011(setting, attribute=attribute)
        for setting, attribute in unknown_schema_attributes(mapping, schema)
    ]
