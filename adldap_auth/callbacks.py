"""Shipped callbacks for users that are gone from the directory, and how callbacks are found.

``LDAP_SYNC_REMOVED_USER_CALLBACKS`` and ``LDAP_SYNC_USER_CALLBACKS`` hold dotted paths.
:func:`resolve_callback` turns a path into the function, accepting the paths of
django-adldap-sync (``adldap_sync.callbacks.*``) for the two callbacks it shipped, so a site
moving from that package keeps its settings unchanged.

Safe to import from ``settings.py``: nothing here needs configured settings or the app registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.utils.module_loading import import_string

#: Callback paths of django-adldap-sync 0.5.2, mapped to the same callbacks here.
LEGACY_CALLBACKS = {
    "adldap_sync.callbacks.removed_user_deactivate": (
        "adldap_auth.callbacks.removed_user_deactivate"
    ),
    "adldap_sync.callbacks.removed_user_delete": "adldap_auth.callbacks.removed_user_delete",
}


def removed_user_deactivate(user: Any) -> None:
    """Deactivate a user that is gone from the directory (or disabled there).

    Writes only ``is_active``, and only when the user was active, so other fields changed
    meanwhile by the site are not overwritten and an inactive user costs no query.
    """
    if user.is_active:
        user.is_active = False
        user.save(update_fields=["is_active"])


def removed_user_delete(user: Any) -> None:
    """Delete a user that is gone from the directory (or disabled there)."""
    user.delete()


def resolve_callback(path: str) -> Callable[..., Any]:
    """The callable named by the dotted ``path``; legacy ``adldap_sync`` paths are mapped.

    Raises :class:`ImportError` when the path cannot be imported and :class:`TypeError` when
    it names something that is not callable.
    """
    target = import_string(LEGACY_CALLBACKS.get(path, path))
    if not callable(target):
        raise TypeError(f"{path} is not callable")
    return target
