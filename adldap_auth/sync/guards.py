"""The removal guards: a run removes nothing when its read looks incomplete or its removals
exceed LDAP_SYNC_REMOVAL_THRESHOLD."""

from __future__ import annotations

from typing import Any

from ..conf import removal_threshold
from ..models import DirectoryGroup
from .results import RemovalRefused


def check_removal_threshold(
    removing: int, active: int, present: int, threshold: Any, force: bool
) -> None:
    """Raise :class:`RemovalRefused` when a run would remove more users than allowed.

    An empty directory result while synced users exist is refused even with ``force``: it
    is far more often a wrong filter or base than a company that lost every employee.
    """
    if present == 0 and active > 0:
        raise RemovalRefused(
            f"the directory returned no users while {active} synced users exist; "
            "nobody was removed (check LDAP_SYNC_USER_SEARCH and LDAP_SYNC_USER_FILTER)"
        )
    _refuse_above_threshold(
        removing, active, "users", "synced users", threshold, force, "nobody was removed"
    )


def linked_group_guids() -> set[str]:
    """Ids of the directory groups Django manages now (linked, not retired)."""
    return set(
        DirectoryGroup.objects.filter(removed_at__isnull=True).values_list("guid", flat=True)
    )


def check_group_read(present: set[str], linked: set[str], threshold: Any, force: bool) -> None:
    """Raise :class:`RemovalRefused` when the group read lost too many managed groups.

    Call it right after the groups are read, before anything is written: ``present`` holds
    the ids of the groups the run will keep managing, ``linked`` those of
    :func:`linked_group_guids`. Memberships are written a batch of users at a time, so a
    group read that returns nothing (a typo in LDAP_SYNC_GROUP_FILTER, an empty
    LDAP_SYNC_GROUP_SEARCH) must stop the run here, before the first batch strips every
    user of the lost groups; the same drop would then retire or delete the groups
    (LDAP_SYNC_GROUP_REMOVAL_ACTION). A read that finds none of the linked groups is refused
    whatever the threshold; ``force`` applies both.
    """
    if force or not linked:
        return
    gone = len(linked - present)
    if gone == len(linked):
        raise RemovalRefused(
            f"the directory returned none of the {len(linked)} synced groups; nothing was "
            "written (check LDAP_SYNC_GROUP_SEARCH and LDAP_SYNC_GROUP_FILTER). If they were "
            "all removed on purpose, run 'manage.py syncldap full --force-removals'."
        )
    _refuse_above_threshold(
        gone, len(linked), "synced groups are missing from the directory's answer and",
        "synced groups", threshold, force, "nothing was written",
    )  # fmt: skip


def check_membership_removals(removing: int, total: int, threshold: Any, force: bool) -> None:
    """Raise :class:`RemovalRefused` when a run would remove more memberships of managed
    groups than allowed (``total``: how many such memberships Django held before the run)."""
    _refuse_above_threshold(
        removing, total, "memberships", "managed memberships", threshold, force,
        "no membership and nobody was removed",
    )  # fmt: skip


def _refuse_above_threshold(
    removing: int, total: int, what: str, noun: str, threshold: Any, force: bool, outcome: str
) -> None:
    """The rule shared by every kind of removal: ``removing`` out of ``total`` against
    LDAP_SYNC_REMOVAL_THRESHOLD (read by :func:`~adldap_auth.conf.removal_threshold`)."""
    rule = removal_threshold(threshold)
    if force or rule is None or removing <= rule.limit(total):
        return
    raise RemovalRefused(
        f"{removing} {what} would be removed, more than LDAP_SYNC_REMOVAL_THRESHOLD "
        f"({rule.describe(total, noun)}); {outcome}. Check the directory, then run "
        "'manage.py syncldap full --force-removals' to apply them."
    )
