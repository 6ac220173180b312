"""Ending the sessions of users that a run removes or disables.

:meth:`adldap_auth.store.Store.remove_users` calls :func:`end_sessions` once per call, with
every user it removed (batch runs, and the admin's "sync from the directory" action), after
the removal callbacks. Django's session stores are not indexed by user, so how the sessions
are found depends on ``SESSION_ENGINE``:

- **database** (``db``, ``cached_db``, or any engine whose ``SessionStore`` derives from
  ``db.SessionStore``): one read of every unexpired session row, decoded in Python, in chunks;
  the rows of the removed users are then deleted (``cached_db`` also drops its cache entry).
  That read happens only in a call that removed someone, so a run costs at most one pass per
  removal step (disabled users of a batch, missing users), never one per user.
- **cache** (``cache``, or a subclass): the cache cannot be enumerated, so the keys of each
  user's sessions are recorded at login (:func:`record_session`, on ``user_logged_in``) in the
  session cache, under ``adldap_auth.sessions.<user pk>``, the :data:`KEPT_SESSION_KEYS` most
  recent kept. They are deleted from there. This needs a cache shared by the web workers and
  the process that runs the sync, which the cache engine needs anyway.
- **signed cookies**, files and other engines: nothing is deleted. The session's user is
  checked at every request by :meth:`adldap_auth.backends.ADLDAPBackend.get_user`, which
  refuses inactive users, so a deactivated or deleted user's session is anonymous at its next
  request in every engine.

The app's ``ready()`` imports this module, which registers :func:`record_session`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.contrib.auth.signals import user_logged_in
from django.dispatch import receiver
from django.utils import timezone

logger = logging.getLogger("adldap_auth.sessions")

__all__ = ["KEPT_SESSION_KEYS", "end_sessions", "record_session"]

#: How many session keys are remembered per user for the cache engine (the most recent ones).
KEPT_SESSION_KEYS = 50
#: Session rows read (decoded in Python), and keys deleted, per statement.
CHUNK_SIZE = 2000


def _store_class() -> type:
    return import_module(settings.SESSION_ENGINE).SessionStore


def _engine_kind(store_class: type) -> str:
    """``"db"``, ``"cache"`` or ``"other"`` for a ``SessionStore`` class."""
    from django.contrib.sessions.backends.cache import SessionStore as CacheStore
    from django.contrib.sessions.backends.db import SessionStore as DatabaseStore

    if issubclass(store_class, DatabaseStore):
        return "db"
    if issubclass(store_class, CacheStore):
        return "cache"
    return "other"


def _index_key(user_pk: Any) -> str:
    return f"adldap_auth.sessions.{user_pk}"


def _session_cache() -> Any:
    from django.core.cache import caches

    return caches[settings.SESSION_CACHE_ALIAS]


def end_sessions(user_pks: Iterable[Any]) -> int:
    """Delete every session of these users (primary keys) from the session store.

    Returns how many session keys were found and deleted. See the module documentation for
    what each ``SESSION_ENGINE`` costs; engines that keep nothing server-side delete nothing.
    """
    wanted = {str(pk) for pk in user_pks if pk is not None}
    if not wanted:
        return 0
    store_class = _store_class()
    kind = _engine_kind(store_class)
    if kind == "db":
        keys = _database_session_keys(store_class, wanted)
        _delete_database_sessions(store_class, keys)
    elif kind == "cache":
        keys = _indexed_session_keys(wanted)
        _session_cache().delete_many([store_class(session_key=key).cache_key for key in keys])
        _session_cache().delete_many([_index_key(pk) for pk in wanted])
    else:
        logger.debug("%s keeps no server-side sessions to end", settings.SESSION_ENGINE)
        return 0
    if keys:
        logger.info("ended %d sessions of %d removed users", len(keys), len(wanted))
    return len(keys)


def _database_session_keys(store_class: type, wanted: set[str]) -> list[str]:
    """Keys of the unexpired database sessions whose user is in ``wanted``."""
    decoder = store_class()
    rows = (
        store_class.get_model_class()
        .objects.filter(expire_date__gt=timezone.now())
        .values_list("session_key", "session_data")
    )
    return [
        key
        for key, data in rows.iterator(chunk_size=CHUNK_SIZE)
        if str(decoder.decode(data).get(SESSION_KEY)) in wanted
    ]


def _delete_database_sessions(store_class: type, keys: list[str]) -> None:
    """Delete the rows (``CHUNK_SIZE`` keys a statement) and, for ``cached_db``, their
    cache entries."""
    from django.contrib.sessions.backends.cached_db import SessionStore as CachedDatabaseStore

    model = store_class.get_model_class()
    for start in range(0, len(keys), CHUNK_SIZE):
        model.objects.filter(session_key__in=keys[start : start + CHUNK_SIZE]).delete()
    if issubclass(store_class, CachedDatabaseStore):
        _session_cache().delete_many([store_class(session_key=key).cache_key for key in keys])


def _indexed_session_keys(wanted: set[str]) -> list[str]:
    found = _session_cache().get_many([_index_key(pk) for pk in wanted])
    return [key for keys in found.values() for key in keys]


@receiver(user_logged_in, dispatch_uid="adldap_auth.sessions.record_session")
def record_session(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """Remember the session key of a login, for the cache engine only (see the module).

    Keys of sessions that no longer exist are dropped; two logins of one user at the same
    instant may lose one key (the cache has no atomic append), whose session then ends only
    through :meth:`~adldap_auth.backends.ADLDAPBackend.get_user`.
    """
    session = getattr(request, "session", None)
    key = getattr(session, "session_key", None)
    if key is None or user is None or _engine_kind(type(session)) != "cache":
        return
    cache = _session_cache()
    index = _index_key(user.pk)
    try:
        known = [k for k in cache.get(index, []) if k != key and session.exists(k)]
        cache.set(index, [*known[-(KEPT_SESSION_KEYS - 1) :], key], None)
    except Exception as error:  # a cache outage must not fail the login itself
        logger.warning("session key of user %s not recorded: %s", user.pk, error)
