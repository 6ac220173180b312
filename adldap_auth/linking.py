"""Link one existing Django user to its directory entry on purpose: ``manage.py ldaplink``.

The sync never takes over (adopts) a Django user who is a superuser, staff, or has a usable
password, unless ``LDAP_SYNC_ADOPT_USERS`` names it; nor moves a user linked to an entry that
still exists to a new entry of the same username. :func:`link_user` is the deliberate way to do
either for one user: it finds the entry with the user's username in the user scope and writes
it through the path a login takes (mapper, group resolution, store), so the user is from then
on a synced user like any other: fields, groups and memberships from the directory, and
removals when the entry goes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from ldap.filter import escape_filter_chars

from .conf import get_config
from .directory import Entry
from .directory.connection import DirectorySession, connection_config
from .directory.readers import Scope, and_filter, read_entries
from .login import existing_user, mapping_entry, user_groups, username_attribute, write_user
from .mapping import (
    MappingConfig,
    SkipEntry,
    build_mapping_config,
    map_user,
    user_attribute_list,
)
from .models import DirectoryUser
from .store import adoption_obstacles


class LinkError(Exception):
    """The user was not linked; the message says why and what to do."""


@dataclass
class LinkResult:
    """What :func:`link_user` did."""

    username: str
    dn: str
    obstacles: list[str]  # why the sync would not have adopted it ("is a superuser"...)
    relinked_from: str = ""  # the DN of the entry the user was linked to before
    already_linked: bool = False

    def message(self) -> str:
        if self.already_linked:
            return f"Django user {self.username!r} was already linked to {self.dn}; synced it"
        text = f"linked Django user {self.username!r} to {self.dn}"
        if self.relinked_from:
            text += f" (it was linked to {self.relinked_from})"
        if self.obstacles:
            text += f"; note: it {' and '.join(self.obstacles)}, which the directory now controls"
        return text


def link_user(username: str, *, relink: bool = False) -> LinkResult:
    """Link the Django user ``username`` (case-insensitive) to the entry of the user scope
    with that username, and sync it. ``relink``: move it from the entry it is linked to,
    even if that entry still exists. Raises :class:`LinkError`, or
    :class:`~adldap_auth.directory.DirectoryError` when the directory cannot be read."""
    with DirectorySession.open(connection_config()) as session:
        root = session.root_dse()
        config = build_mapping_config(is_ad=root.is_ad)
        user = _django_user(username, config.username_field)
        name = getattr(user, config.username_field)
        entry = _directory_entry(session, config, name)
        try:
            record = map_user(mapping_entry(entry, config), config)
        except SkipEntry as skip:
            raise LinkError(f"the directory entry {entry.dn} cannot be synced: {skip}") from None
        if record.disabled:
            raise LinkError(f"the directory entry {entry.dn} is disabled")
        current = existing_user(record)
        if current is not None and current.user_id != user.pk:
            raise LinkError(
                f"the directory entry {entry.dn} is linked to another Django user "
                f"({getattr(current.user, config.username_field)!r})"
            )
        previous = DirectoryUser.objects.filter(user=user).exclude(guid=record.guid).first()
        if previous is not None and not relink:
            raise LinkError(
                f"Django user {name!r} is linked to another directory entry ({previous.dn}); "
                "add --relink to move it to this one"
            )
        obstacles = adoption_obstacles(user)
        groups = user_groups(session, entry, record, config, root.is_ad)
        written = write_user(
            record, groups, config, server=session.uri, session=session, adopt=True, relink=relink
        )
    if written is None:
        raise LinkError(f"Django user {name!r} was not linked (the log says why)")
    return LinkResult(
        username=name,
        dn=record.dn,
        obstacles=obstacles,
        relinked_from=previous.dn if previous is not None else "",
        already_linked=current is not None,
    )


def _django_user(username: str, field: str) -> Any:
    users = list(get_user_model().objects.filter(**{f"{field}__iexact": username}))
    if not users:
        raise LinkError(f"no Django user is named {username!r}")
    if len(users) > 1:
        names = " and ".join(repr(getattr(user, field)) for user in users)
        raise LinkError(f"Django users {names} differ only in case: rename or merge them first")
    return users[0]


def _directory_entry(session: DirectorySession, config: MappingConfig, name: str) -> Entry:
    s = get_config()
    filterstr = and_filter(
        s.USER_FILTER, f"({username_attribute(config)}={escape_filter_chars(name)})"
    )
    attributes = list(dict.fromkeys([*user_attribute_list(config), "memberof"]))
    entries = list(
        read_entries(session, Scope(s.USER_SEARCH, filterstr), attributes, ranged=["memberof"])
    )
    if not entries:
        raise LinkError(f"no directory entry of the user scope has the username {name!r}")
    if len(entries) > 1:
        dns = ", ".join(entry.dn for entry in entries)
        raise LinkError(f"several directory entries have the username {name!r}: {dns}")
    return entries[0]
