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
first (:class:`GuardedLDAP`): a clear-text URI under ``LDAP_SYNC_REQUIRE_TLS`` and an
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

import ldap
from django.core.exceptions import ImproperlyConfigured
from django_auth_ldap.backend import LDAPBackend

from .backend_settings import (
    DirectoryGroupType,
    DirectoryLookupError,
    DirectoryUserSearch,
    GuardedLDAP,
    LoginConnectionRefused,
    cache_of,
    derived_settings,
    login_mapping_config,
    lookup_error,
)
from .conf import ConfigError, get_config, in_use
from .dbwrite import retry_locked
from .directory import DirectoryError, Entry
from .directory.connection import (
    DirectorySession,
    connection_config,
)
from .login import (
    complete_ranges,
    connected_uri,
    existing_user,
    is_ad_entry,
    is_exempt,
    login_user_attributes,
    mapping_entry,
    normalize_login_name,
    user_groups,
    username_taken,
    write_user,
)
from .mapping import (
    GroupRecord,
    MappingConfig,
    SkipEntry,
    UserRecord,
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


def _settings_refuse(what: str, username: str) -> bool:
    """True (logged) when the settings have errors, those ``manage.py check`` shows."""
    try:
        get_config()
    except ConfigError as error:
        logger.error("directory %s of %r impossible: %s", what, username, error)
        return True
    return False


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
        """True when the site uses ``LDAP_SYNC_*`` settings (any of them: with errors, such as
        a missing LDAP_SYNC_BIND_URI, logins are refused as the checks say)."""
        return in_use()

    @property
    def ldap(self):  # type: ignore[override]
        """django-auth-ldap's ``ldap`` module; with ``LDAP_SYNC_*`` settings, every connection
        it opens is checked first (:class:`GuardedLDAP`)."""
        module = super().ldap
        if not self.uses_sync_settings():
            return module
        return GuardedLDAP(module, self)

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
        if _settings_refuse("login", username):
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
        if _settings_refuse("lookup", username):
            return None
        username = self._login_name(username)
        if username is None:
            return None
        return retry_locked(partial(super().populate_user, username), f"populate of {username}")

    def _login_name(self, username: str) -> str | None:
        login = normalize_login_name(username)
        if not login:
            logger.debug("directory login of %r refused: empty, or a control character", username)
            return None
        if is_exempt(login, get_config().USER_EXEMPT_FROM_SYNC):
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
            raise lookup_error(error) from None
        is_ad = is_ad_entry(entry)
        config = login_mapping_config(is_ad)
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
                raise lookup_error(error) from None
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
        cache = cache_of(get_config())
        config = cache.get("connection")
        if config is None:
            config = cache["connection"] = connection_config()
        return DirectorySession(ldap_user.connection, str(uri), config)

    def _server(self, ldap_user) -> str:
        return connected_uri(ldap_user.connection, get_config().bind_uris)
