"""What django-auth-ldap is told when the ``LDAP_SYNC_*`` settings configure the login: its
settings derived from ours, the user search, the group type, and the ``ldap`` module that checks
every connection before it is opened (see :mod:`adldap_auth.backends` for the table)."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import ldap
from django.core.exceptions import ImproperlyConfigured
from django_auth_ldap.backend import LDAPBackend
from django_auth_ldap.config import LDAPGroupType, LDAPSearch

from .conf import ConfigError, SyncConfig, get_config
from .directory import DirectoryError, Entry
from .directory.connection import (
    clear_text_refusal,
    tls_settings_refused,
)
from .directory.readers import and_filter
from .login import (
    DirectoryAttrs,
    decoded_attrs,
    login_user_attributes,
    user_search_filter,
    username_attribute,
)
from .mapping import (
    MappingConfig,
    build_mapping_config,
)

logger = logging.getLogger("adldap_auth.login")


class DirectoryLookupError(ldap.LDAPError):
    """A directory read of the login path failed (search error, timeout, partial result).

    An ``ldap.LDAPError``, so django-auth-ldap treats it as it treats its own: the login
    returns None, ``django_auth_ldap.backend.ldap_error`` is sent, and a permission check
    fails closed.
    """


def lookup_error(error: DirectoryError) -> DirectoryLookupError:
    return DirectoryLookupError({"desc": "directory read failed", "info": str(error)})


class LoginConnectionRefused(ldap.LDAPError):
    """The login path refused to open a connection: a clear-text URI under
    ``LDAP_SYNC_REQUIRE_TLS``, or TLS settings libldap cannot use (an unusable CA file).

    An ``ldap.LDAPError``, so every django-auth-ldap entry point (login, ``populate_user``,
    group permissions) fails closed and returns None instead of raising.
    """


class GuardedLDAP:
    """The ``ldap`` module as django-auth-ldap sees it, with :meth:`initialize` checked.

    django-auth-ldap opens every connection with ``backend.ldap.initialize(uri)``, then sets
    ``CONNECTION_OPTIONS`` and starts TLS. Checked here, where the URI actually used is known
    (a site's own ``AUTH_LDAP_SERVER_URI`` or ``START_TLS`` included): no clear-text URI under
    ``LDAP_SYNC_REQUIRE_TLS``, and TLS options libldap accepts (python-ldap says only
    ``ValueError: option error`` for a truncated CA file, which django-auth-ldap re-raises).
    """

    def __init__(self, module: Any, backend: LDAPBackend) -> None:
        self._module = module
        self._backend = backend

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def initialize(self, uri: str, *args: Any, **kwargs: Any) -> Any:
        settings = self._backend.settings
        try:
            require_tls = get_config().REQUIRE_TLS
        except ConfigError as error:  # fail closed, as django-auth-ldap does on LDAPError
            raise _refused(f"the LDAP_SYNC_* settings have errors: {error}") from None
        if require_tls:
            refusal = clear_text_refusal(uri, bool(settings.START_TLS))
            if refusal:
                raise _refused(refusal)
        connection = self._module.initialize(uri, *args, **kwargs)
        options = dict(settings.CONNECTION_OPTIONS)
        if ldap.OPT_X_TLS_NEWCTX in options:
            # Applied once here to turn libldap's refusal into a clear error; django-auth-ldap
            # applies them again (a second new TLS context, harmless).
            try:
                for option, value in options.items():
                    connection.set_option(option, value)
            except ValueError:
                raise _refused(
                    tls_settings_refused(options.get(ldap.OPT_X_TLS_CACERTFILE))
                ) from None
        return connection


def _refused(reason: str) -> LoginConnectionRefused:
    logger.warning("directory login impossible: %s", reason)
    return LoginConnectionRefused({"desc": "connection refused by adldap-auth", "info": reason})


class DirectoryUserSearch(LDAPSearch):
    """The user search derived from ``LDAP_SYNC_*`` (``AUTH_LDAP_USER_SEARCH``).

    ``filterstr`` shows the documented form ``(&<filter>(<attr>=%(user)s))``; the search sent
    is :func:`adldap_auth.login.user_search_filter` of the typed name (``user@domain`` also
    matched by its local part and, on AD, as a userPrincipalName), every value escaped.
    Results are django-auth-ldap's (lower-case DN, decoded values), and each attribute dict
    also carries the raw entry (exact DN, bytes) for the mapper, as ``attrs.entry``.

    Only django-auth-ldap's public ``execute`` is overridden. Inside an ``LDAPSearchUnion``
    (which drives its searches through private methods) it is a plain ``LDAPSearch`` of
    ``filterstr``: the typed name as is, and the backend reads the entry once more.
    """

    def __init__(
        self,
        base_dn: str,
        user_filter: str,
        username_attr: str,
        attrlist: list[str],
        upn_attr: str | None = None,
    ) -> None:
        self.user_filter = user_filter
        self.username_attr = username_attr
        self.upn_attr = upn_attr
        template = and_filter(user_filter.replace("%", "%%"), f"({username_attr}=%(user)s)")
        super().__init__(base_dn, ldap.SCOPE_SUBTREE, template, attrlist)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.base_dn} {self.filterstr}>"

    def filter_for(self, login: str) -> str:
        return user_search_filter(self.user_filter, self.username_attr, login, self.upn_attr)

    @staticmethod
    def _login(filterargs: Any) -> str:
        value = filterargs.get("user") if isinstance(filterargs, dict) else filterargs[0]
        return str(value)

    def search_with_additional_terms(self, term_dict: dict, escape: bool = True) -> LDAPSearch:
        return self._plain().search_with_additional_terms(term_dict, escape)

    def search_with_additional_term_string(self, filterstr: str) -> LDAPSearch:
        return self._plain().search_with_additional_term_string(filterstr)

    def _plain(self) -> LDAPSearch:
        return LDAPSearch(self.base_dn, self.scope, self.filterstr, self.attrlist)

    def execute(self, connection: Any, filterargs: Any = (), escape: bool = True) -> list:
        # Values are always escaped, whatever ``escape`` says: they are what a user typed.
        login = self._login(filterargs)
        filterstr = self.filter_for(login)
        logger.debug("user search: base %r, filter %r", self.base_dn, filterstr)
        results = self._process(
            connection.search_s(self.base_dn, self.scope, filterstr, self.attrlist)
        )
        if len(results) > 1:
            # django-auth-ldap logs nobody in (and says so only at DEBUG): say why.
            logger.warning(
                "directory login of %r refused: the name matches %d directory entries (%s)",
                login,
                len(results),
                "; ".join(dn for dn, _attrs in results[:5]),
            )
        return results

    @staticmethod
    def _process(results: list) -> list[tuple[str, DirectoryAttrs]]:
        processed = []
        for dn, attrs in results:
            if dn is None:  # a continuation reference: referrals are not chased
                continue
            entry = Entry(dn, {name.lower(): list(values) for name, values in attrs.items()})
            processed.append((dn.lower(), decoded_attrs(entry, attrs)))
        return processed


class DirectoryGroupType(LDAPGroupType):
    """``AUTH_LDAP_GROUP_TYPE`` derived from ``LDAP_SYNC_*``: the user's groups as the sync
    computes them (recursive, AD primary group included), found once per login.

    Group infos are ``(lower-case DN, {"name": [Django group name]})``.
    """

    def __init__(self) -> None:
        super().__init__(name_attr="name")

    def user_groups(self, ldap_user: Any, group_search: Any) -> list[tuple[str, dict]]:
        from .backends import ADLDAPBackend  # the backend module imports this one

        backend = ldap_user.backend
        if not isinstance(backend, ADLDAPBackend) or not backend.uses_sync_settings():
            raise ImproperlyConfigured(
                "DirectoryGroupType needs ADLDAPBackend configured by LDAP_SYNC_* settings"
            )
        try:
            groups = backend.directory_groups(ldap_user)
        except ldap_user.AuthenticationFailed:
            return []  # an entry the sync refuses has no groups (its login fails anyway)
        return [(g.dn.lower(), {"name": [g.name]}) for g in groups]

    def group_name_from_info(self, group_info: tuple[str, dict]) -> str | None:
        names = group_info[1].get("name") or [None]
        return names[0]


#: What depends on the settings only, computed once per settings object: ``"derived"`` (the
#: settings :func:`derived_settings` returns), ``("config", is_ad)`` (the login's mapping
#: configs) and ``"connection"`` (the sync's connection config).
_settings_cache: dict[Any, Any] = {}


def cache_of(config: SyncConfig) -> dict[Any, Any]:
    """:data:`_settings_cache`, emptied when :func:`get_config` gives a new object (the
    settings changed)."""
    if _settings_cache.get("settings") is not config:
        _settings_cache.clear()
        _settings_cache["settings"] = config
    return _settings_cache


def derived_settings() -> dict[str, Any]:
    """django-auth-ldap settings (names without ``AUTH_LDAP_``) from the ``LDAP_SYNC_*`` ones.

    Computed once per process (django-auth-ldap asks at every login) and again when a setting
    changes; settings that cannot be derived are not kept, so their error is logged each time.
    """
    config = get_config()
    cache = cache_of(config)
    derived = cache.get("derived")
    if derived is None:
        derived, complete = _derive_settings(config)
        if complete:
            cache["derived"] = derived
    return {**derived, "CONNECTION_OPTIONS": dict(derived["CONNECTION_OPTIONS"])}


def _derive_settings(s: SyncConfig) -> tuple[dict[str, Any], bool]:
    uris = s.bind_uris
    uses_tls = bool(s.START_TLS) or any(urlsplit(u).scheme.lower() == "ldaps" for u in uris)
    options: dict[int, Any] = {
        ldap.OPT_REFERRALS: 0,
        ldap.OPT_NETWORK_TIMEOUT: s.NETWORK_TIMEOUT,
        ldap.OPT_TIMEOUT: s.OPERATION_TIMEOUT,
    }
    if uses_tls:
        if s.CA_FILE:
            options[ldap.OPT_X_TLS_CACERTFILE] = str(s.CA_FILE)
        options[ldap.OPT_X_TLS_REQUIRE_CERT] = (
            ldap.OPT_X_TLS_DEMAND if s.REQUIRE_CERT else ldap.OPT_X_TLS_NEVER
        )
        options[ldap.OPT_X_TLS_NEWCTX] = 0  # applies the options above; must come last
    derived: dict[str, Any] = {
        "SERVER_URI": " ".join(uris),
        "BIND_DN": s.BIND_DN or "",
        "BIND_PASSWORD": s.BIND_PASS or "",
        "START_TLS": bool(s.START_TLS),
        "CONNECTION_OPTIONS": options,
        "USER_ATTR_MAP": {},
        "ALWAYS_UPDATE_USER": True,
        "GROUP_SEARCH": LDAPSearch(s.GROUP_SEARCH or "", ldap.SCOPE_SUBTREE, s.GROUP_FILTER),
        "GROUP_TYPE": DirectoryGroupType(),
    }
    try:
        attrlist = login_user_attributes()
        name_attr = username_attribute()
    except (ImproperlyConfigured, ValueError) as error:
        # Reported by ``manage.py check`` too; logins fail (None) until it is fixed, and
        # other backends (ModelBackend) keep working.
        logger.error("directory login disabled: %s", error)
        return derived, False
    upn_attr = "userPrincipalName" if name_attr.lower() == "samaccountname" else None
    derived["USER_SEARCH"] = DirectoryUserSearch(
        s.USER_SEARCH or "", s.USER_FILTER, name_attr, attrlist, upn_attr
    )
    derived["USER_ATTRLIST"] = attrlist
    return derived, True


def login_mapping_config(is_ad: bool) -> MappingConfig:
    """``build_mapping_config(is_ad=...)``, kept like :func:`derived_settings` (the config also
    keeps the mapper's plan, which is then not made again at every login)."""
    cache = cache_of(get_config())
    config = cache.get(("config", is_ad))
    if config is None:
        config = cache[("config", is_ad)] = build_mapping_config(is_ad=is_ad)
    return config
