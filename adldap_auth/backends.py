"""Login-time population: ``ADLDAPBackend``, a django-auth-ldap backend fed by ``LDAP_SYNC_*``.

Use it in ``AUTHENTICATION_BACKENDS`` (before ``ModelBackend``, so local accounts still work)::

    AUTHENTICATION_BACKENDS = [
        "adldap_auth.backends.ADLDAPBackend",
        "django.contrib.auth.backends.ModelBackend",
    ]

Two ways of configuring it:

**With the ``LDAP_SYNC_*`` settings** (``LDAP_SYNC_BIND_URI`` set), the site writes its directory
configuration once. The backend derives django-auth-ldap's settings from it
(:func:`derived_settings`, passed as ``default_settings``, so an ``AUTH_LDAP_*`` setting the
site sets explicitly still wins for the login path):

=========================  ===================================================================
``SERVER_URI``             ``LDAP_SYNC_BIND_URI`` joined with spaces: libldap tries the servers
                           in order (failover when a server refuses or cannot be reached)
``BIND_DN``/``_PASSWORD``  ``LDAP_SYNC_BIND_DN`` / ``LDAP_SYNC_BIND_PASS``
``START_TLS``              ``LDAP_SYNC_START_TLS``
``CONNECTION_OPTIONS``     referrals off, ``LDAP_SYNC_NETWORK_TIMEOUT``,
                           ``LDAP_SYNC_OPERATION_TIMEOUT``; with TLS ``LDAP_SYNC_CA_FILE``,
                           ``LDAP_SYNC_REQUIRE_CERT`` and a new TLS context (last, as libldap
                           requires)
``USER_SEARCH``            :class:`DirectoryUserSearch`: ``LDAP_SYNC_USER_SEARCH``, subtree,
                           ``(&<LDAP_SYNC_USER_FILTER>(<username attribute>=<name>))``, the
                           username attribute being the one ``LDAP_SYNC_USER_ATTRIBUTES`` maps
                           to the username field (``DOMAIN\\user`` and ``user@domain`` are
                           accepted, see :mod:`adldap_auth.login`)
``USER_ATTRLIST``          the mapper's attribute list (:func:`~adldap_auth.login.login_user_attributes`)
``USER_ATTR_MAP``          empty: fields, profiles and the photo are written by the shared
                           mapper and store, exactly as ``syncldap`` writes them
``ALWAYS_UPDATE_USER``     True
``GROUP_SEARCH``           ``LDAP_SYNC_GROUP_SEARCH`` with ``LDAP_SYNC_GROUP_FILTER``
``GROUP_TYPE``             :class:`DirectoryGroupType`: the user's recursive groups as the sync
                           computes them, so ``AUTH_LDAP_REQUIRE_GROUP``, ``DENY_GROUP``,
                           ``USER_FLAGS_BY_GROUP`` and ``MIRROR_GROUPS`` see the same groups
=========================  ===================================================================

On each login (:meth:`ADLDAPBackend.get_or_build_user`), the user's entry is mapped by
:func:`adldap_auth.mapping.map_user`, its groups are found (:func:`adldap_auth.login.user_groups`:
its direct groups read live, the nesting above them from the batch's group graph) and everything
is written by :class:`adldap_auth.store.Store`: fields, profiles, photo, identity link,
memberships (recursive, AD primary group included). The Django user is found by identity link
(objectGUID/entryUUID) first, so a renamed account keeps its Django user.

Refused, without touching Django: names in ``LDAP_SYNC_USER_EXEMPT_FROM_SYNC`` (no LDAP traffic
at all, so a local ``admin`` is never overwritten nor its password sent to the directory);
disabled accounts (``userAccountControl`` bit 0x2); entries the mapper cannot sync. A user the
batch removed (deactivated) whose account is enabled again is restored by the login. Wrong
password, unknown user, server down, any directory or TLS error: ``None``, logged without the
password, so the next backend still runs. Every connection django-auth-ldap opens is checked
first (:class:`_GuardedLDAP`): a clear-text URI under ``LDAP_SYNC_REQUIRE_TLS`` and an
unusable CA file are refused before anything is sent.

Inactive users (``is_active=False``) are refused by :meth:`ADLDAPBackend.authenticate` and
:meth:`ADLDAPBackend.get_user`, as by Django's ``ModelBackend``, so the session of a user the
sync deactivated is anonymous at its next request (see also :mod:`adldap_auth.sessions`).

**Without any ``LDAP_SYNC_*`` setting** the class is django-auth-ldap's ``LDAPBackend``
configured by ``AUTH_LDAP_*``, unchanged but for the refusal of inactive users.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import ldap
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django_auth_ldap.backend import LDAPBackend
from django_auth_ldap.config import LDAPGroupType, LDAPSearch

from .conf import sync_settings
from .dbwrite import retry_locked
from .directory import DirectoryError, Entry
from .directory.connection import (
    DirectorySession,
    clear_text_refusal,
    connection_config,
    tls_settings_refused,
)
from .directory.readers import and_filter
from .login import (
    DirectoryAttrs,
    complete_ranges,
    connected_uri,
    decoded_attrs,
    existing_user,
    is_ad_entry,
    is_exempt,
    login_user_attributes,
    mapping_entry,
    normalize_login_name,
    user_groups,
    user_search_filter,
    username_attribute,
    username_taken,
    write_user,
)
from .mapping import (
    GroupRecord,
    MappingConfig,
    SkipEntry,
    UserRecord,
    build_mapping_config,
    map_user,
)

logger = logging.getLogger("adldap_auth.login")

__all__ = [
    "ADLDAPBackend",
    "DirectoryGroupType",
    "DirectoryLookupError",
    "LoginConnectionRefused",
    "DirectoryUserSearch",
    "derived_settings",
]


class DirectoryLookupError(ldap.LDAPError):
    """A directory read of the login path failed (search error, timeout, partial result).

    An ``ldap.LDAPError``, so django-auth-ldap treats it as it treats its own: the login
    returns None, ``django_auth_ldap.backend.ldap_error`` is sent, and a permission check
    fails closed.
    """


def _lookup_error(error: DirectoryError) -> DirectoryLookupError:
    return DirectoryLookupError({"desc": "directory read failed", "info": str(error)})


class LoginConnectionRefused(ldap.LDAPError):
    """The login path refused to open a connection: a clear-text URI under
    ``LDAP_SYNC_REQUIRE_TLS``, or TLS settings libldap cannot use (an unusable CA file).

    An ``ldap.LDAPError``, so every django-auth-ldap entry point (login, ``populate_user``,
    group permissions) fails closed and returns None instead of raising.
    """


class _GuardedLDAP:
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
        if sync_settings.REQUIRE_TLS is True:
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
                raise _refused(tls_settings_refused(options.get(ldap.OPT_X_TLS_CACERTFILE))) from None
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


#: What depends on the settings only, computed once per process: ``"derived"`` (the settings
#: :func:`derived_settings` returns), ``("config", is_ad)`` (the login's mapping configs) and
#: ``"connection"`` (the sync's connection config). Emptied when a setting changes
#: (``override_settings`` in tests).
_settings_cache: dict[Any, Any] = {}


@receiver(setting_changed)
def _clear_settings_cache(sender: Any, setting: str, **kwargs: Any) -> None:
    # Any setting: the mapping config also depends on AUTH_USER_MODEL and the profile models.
    _settings_cache.clear()


def derived_settings() -> dict[str, Any]:
    """django-auth-ldap settings (names without ``AUTH_LDAP_``) from the ``LDAP_SYNC_*`` ones.

    Computed once per process (django-auth-ldap asks at every login) and again when a setting
    changes; settings that cannot be derived are not kept, so their error is logged each time.
    """
    derived = _settings_cache.get("derived")
    if derived is None:
        derived, complete = _derive_settings()
        if complete:
            _settings_cache["derived"] = derived
    return {**derived, "CONNECTION_OPTIONS": dict(derived["CONNECTION_OPTIONS"])}


def _derive_settings() -> tuple[dict[str, Any], bool]:
    s = sync_settings
    uris = s.bind_uris
    uses_tls = bool(s.START_TLS) or any(urlsplit(u).scheme.lower() == "ldaps" for u in uris)
    options: dict[int, Any] = {
        ldap.OPT_REFERRALS: 0,
        ldap.OPT_NETWORK_TIMEOUT: float(s.NETWORK_TIMEOUT),
        ldap.OPT_TIMEOUT: float(s.OPERATION_TIMEOUT),
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


def _mapping_config(is_ad: bool) -> MappingConfig:
    """``build_mapping_config(is_ad=...)``, kept like :func:`derived_settings` (the config also
    keeps the mapper's plan, which is then not made again at every login)."""
    key = ("config", is_ad)
    config = _settings_cache.get(key)
    if config is None:
        config = _settings_cache[key] = build_mapping_config(is_ad=is_ad)
    return config


@dataclass
class _DirectoryState:
    """What one login learnt about its entry (kept on the ``_LDAPUser``)."""

    entry: Entry
    is_ad: bool
    config: MappingConfig
    record: UserRecord
    groups: list[GroupRecord] | None = None


class ADLDAPBackend(LDAPBackend):
    """django-auth-ldap's backend, populating users through adldap-auth's mapper and store.

    See the module documentation. Hooks a subclass may extend: :meth:`get_or_build_user`
    (finds and writes the Django user), :meth:`directory_groups` (the user's groups).
    """

    @property
    def default_settings(self) -> dict[str, Any]:  # type: ignore[override]
        """Derived from ``LDAP_SYNC_*`` when configured; django-auth-ldap's own otherwise."""
        if not self.uses_sync_settings():
            return {}
        return derived_settings()

    @staticmethod
    def uses_sync_settings() -> bool:
        """True when the site configured the directory with ``LDAP_SYNC_*`` settings."""
        return sync_settings.configured()

    @property
    def ldap(self):  # type: ignore[override]
        """django-auth-ldap's ``ldap`` module; with ``LDAP_SYNC_*`` settings, every connection
        it opens is checked first (:class:`_GuardedLDAP`)."""
        module = super().ldap
        if not self.uses_sync_settings():
            return module
        return _GuardedLDAP(module, self)

    # -- Django's backend API ------------------------------------------------------------------

    def user_can_authenticate(self, user) -> bool:
        """Reject users with ``is_active=False`` (custom user models without that attribute
        are allowed), as Django's ``ModelBackend`` does: a user the sync deactivated neither
        logs in nor keeps a session (:meth:`get_user`)."""
        return getattr(user, "is_active", True) is not False

    def get_user(self, user_id):
        """The session's user, or None when it is inactive (the session becomes anonymous)."""
        user = super().get_user(user_id)
        return user if user is not None and self.user_can_authenticate(user) else None

    def authenticate(self, request, username=None, password=None, **kwargs):
        """The Django user of a directory login, or None: wrong credentials, an inactive
        user, or any directory or TLS error (logged), so the next backend still runs."""
        if not self.uses_sync_settings():
            user = super().authenticate(request, username=username, password=password, **kwargs)
            return self._active(user, username)
        username = kwargs.pop(self.get_user_model().USERNAME_FIELD, username)
        if username is None:
            return None
        login = self._login_name(username)
        if login is None:
            return None
        try:
            user = super().authenticate(request, username=login, password=password, **kwargs)
        except ImproperlyConfigured as error:
            logger.error("directory login of %r impossible: %s", login, error)
            return None
        except (ldap.LDAPError, DirectoryError) as error:
            logger.warning("directory login of %r failed: %s", login, error)
            return None
        return self._active(user, login)

    def _active(self, user, login: Any) -> Any:
        if user is None or self.user_can_authenticate(user):
            return user
        logger.info("directory login of %r refused: the Django user is inactive", login)
        return None

    def populate_user(self, username):
        """Create or update a Django user from the directory without a password (the
        django-auth-ldap API), through the same mapper and store as a login."""
        if not self.uses_sync_settings():
            return super().populate_user(username)
        username = self._login_name(username)
        if username is None:
            return None
        return retry_locked(partial(super().populate_user, username), f"populate of {username}")

    def _login_name(self, username: str) -> str | None:
        login = normalize_login_name(username)
        if not login:
            logger.debug("directory login of %r refused: empty, or a control character", username)
            return None
        if is_exempt(login, sync_settings.USER_EXEMPT_FROM_SYNC):
            logger.info(
                "directory login of %r refused: exempt from sync (LDAP_SYNC_USER_EXEMPT_FROM_SYNC)",
                login,
            )
            return None
        return login

    # -- django-auth-ldap hooks ---------------------------------------------------------------

    def authenticate_ldap_user(self, ldap_user, password):
        """django-auth-ldap's login, started again while a write meets a lock conflict
        (:func:`~adldap_auth.dbwrite.retry_locked`): after our writes, django-auth-ldap saves
        the user itself (``user.save()``), which on SQLite waits for a batch run's write
        transaction no longer than the busy timeout."""
        if not self.uses_sync_settings():
            return super().authenticate_ldap_user(ldap_user, password)
        return retry_locked(
            partial(super().authenticate_ldap_user, ldap_user, password),
            f"directory login of {ldap_user._username!r}",
        )

    def get_or_build_user(self, username, ldap_user):
        """Write the entry's user through the store and return ``(user, False)``.

        Called by django-auth-ldap once the user is bound (or for :meth:`populate_user`).
        Refusals raise ``AuthenticationFailed`` (the login returns None); directory failures
        raise :class:`DirectoryLookupError`.
        """
        if not self.uses_sync_settings():
            return super().get_or_build_user(username, ldap_user)
        state = self.directory_state(ldap_user)
        record = state.record
        if record.disabled:
            raise ldap_user.AuthenticationFailed(
                f"the directory account {record.username!r} is disabled"
            )
        link = existing_user(record)
        if link is None and self.settings.NO_NEW_USERS and not username_taken(record, state.config):
            raise ldap_user.AuthenticationFailed("user does not satisfy AUTH_LDAP_NO_NEW_USERS")
        if link is not None and link.removed_at is None and not self.settings.ALWAYS_UPDATE_USER:
            return link.user, False
        groups = self.directory_groups(ldap_user)
        server = link.server if link is not None else self._server(ldap_user)
        # The session: asked whether the old entry of a re-created account is gone.
        session = self._session(ldap_user)
        user = write_user(record, groups, state.config, server=server, link=link, session=session)
        if user is None:
            raise ldap_user.AuthenticationFailed(
                f"the directory entry of {record.username!r} could not be written"
            )
        return user, False

    # -- the directory side of one login ------------------------------------------------------

    def directory_state(self, ldap_user) -> _DirectoryState:
        """The user's entry, mapped (cached on ``ldap_user`` for the rest of the login)."""
        state = getattr(ldap_user, "_adldap_state", None)
        if state is not None:
            return state
        try:
            entry = self._user_entry(ldap_user)
        except DirectoryError as error:
            raise _lookup_error(error) from None
        is_ad = is_ad_entry(entry)
        config = _mapping_config(is_ad)
        try:
            record = map_user(mapping_entry(entry, config), config)
        except SkipEntry as skip:
            level = logging.INFO if skip.exempt else logging.WARNING
            logger.log(level, "directory login refused for %s: %s", entry.dn, skip)
            raise ldap_user.AuthenticationFailed(str(skip)) from None
        for problem in record.problems:
            logger.warning("directory login of %s: %s", entry.dn, problem)
        state = _DirectoryState(entry, is_ad, config, record)
        ldap_user._adldap_state = state
        return state

    def directory_groups(self, ldap_user) -> list[GroupRecord]:
        """The user's groups in the sync's scope, recursive, primary group included."""
        state = self.directory_state(ldap_user)
        if state.groups is None:
            try:
                state.groups = user_groups(
                    self._session(ldap_user), state.entry, state.record, state.config, state.is_ad
                )
            except DirectoryError as error:
                raise _lookup_error(error) from None
        return state.groups

    def _user_entry(self, ldap_user) -> Entry:
        attrs = ldap_user.attrs
        entry = getattr(attrs, "entry", None) if attrs is not None else None
        if entry is None:
            # The site's own AUTH_LDAP_USER_SEARCH or USER_DN_TEMPLATE, or django-auth-ldap's
            # DN cache: read the entry with the mapper's attributes (one more search).
            if ldap_user.dn is None:
                raise ldap_user.AuthenticationFailed("the user has no directory entry")
            entry = self._session(ldap_user).read_entry(ldap_user.dn, login_user_attributes())
            if entry is None:
                raise ldap_user.AuthenticationFailed("the user's directory entry is gone")
        if any(";range=" in name for name in entry.attrs):
            entry = complete_ranges(self._session(ldap_user), entry)
        return entry

    def _session(self, ldap_user) -> DirectorySession:
        """A session on django-auth-ldap's connection, bound as the service account."""
        uri = self.settings.SERVER_URI
        config = _settings_cache.get("connection")
        if config is None:
            config = _settings_cache["connection"] = connection_config()
        return DirectorySession(ldap_user.connection, str(uri), config)

    def _server(self, ldap_user) -> str:
        return connected_uri(ldap_user.connection, sync_settings.bind_uris)
