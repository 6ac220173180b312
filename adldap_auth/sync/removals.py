"""A run's removals: disabled and missing users, under the threshold, and deletions after the grace."""

from __future__ import annotations

import logging
from collections.abc import Callable, Set

from django.utils import timezone

from ..callbacks import removed_user_deactivate, removed_user_delete, resolve_callback
from ..mapping import (
    UserRecord,
)
from ..models import DirectoryUser
from ..store import Store
from .guards import check_membership_removals, check_removal_threshold

logger = logging.getLogger("adldap_auth.sync")


class RemovalSteps:
    """Removals of a run, once every read completed (a mixin of
    :class:`~adldap_auth.sync.engine.SyncEngine`)."""

    # -- removals -----------------------------------------------------------------------------

    def _remove_disabled(self, store: Store, batch: list[UserRecord]) -> None:
        disabled = [r.guid for r in batch if r.disabled]
        if not disabled:
            return
        self.disabled_seen.update(disabled)
        links = DirectoryUser.objects.select_related("user").filter(
            guid__in=disabled, removed_at__isnull=True
        )
        store.remove_users(links, self._removed_callbacks(), DirectoryUser.REASON_DISABLED)

    def _remove_missing(self, store: Store, present: Set[str]) -> None:
        """The removals held back until the whole scope was read, if it is safe to make them:
        the memberships the batches found gone (see ``defer_membership_removals`` of
        :class:`~adldap_auth.store.Store`), then the removal callbacks for linked users gone
        from the scope. Both thresholds are checked before either is applied.

        Reached only when every search of the run completed: any incomplete read raised
        before this point, so a failed run removes no user and no membership.
        """
        if self.heartbeat:  # removals only by the lock's holder
            self.heartbeat()
        threshold, force = self.config.REMOVAL_THRESHOLD, self.options.force_removals
        candidates = store.removal_candidates(present)
        if candidates:
            active = DirectoryUser.objects.filter(removed_at__isnull=True).count()
            check_removal_threshold(len(candidates), active, len(present), threshold, force)
        pending = store.pending_membership_removals
        check_membership_removals(len(pending), store.managed_memberships, threshold, force)
        store.apply_membership_removals()
        if candidates:
            store.remove_users(
                candidates,
                self._removed_callbacks(),
                DirectoryUser.REASON_MISSING,
                managed_group_ids=self.managed_group_ids,
            )
        store.forget_gone_disabled_users(present, self.managed_group_ids)

    def _removed_callbacks(self) -> list[Callable]:
        """The removal callbacks; with LDAP_SYNC_REMOVAL_GRACE, deactivate instead of delete
        (the delete callback runs later, in :meth:`_delete_after_grace`)."""
        callbacks = [resolve_callback(path) for path in self.config.REMOVED_USER_CALLBACKS]
        if self.config.REMOVAL_GRACE is None or removed_user_delete not in callbacks:
            return callbacks
        first_step = [c for c in callbacks if c is not removed_user_delete]
        if removed_user_deactivate not in first_step:
            first_step.insert(callbacks.index(removed_user_delete), removed_user_deactivate)
        return first_step

    def _delete_after_grace(self, store: Store, present: Set[str]) -> None:
        """LDAP_SYNC_REMOVAL_GRACE: the delete callback, for users removed (deactivated) longer
        ago than the grace period and still gone, or still disabled.

        Reached only after a complete read, like :meth:`_remove_missing`. An entry back in scope
        was restored by this run (``removed_at`` cleared), so it is not a candidate; an entry in
        scope that could not be mapped is never deleted. A disabled entry counts as still
        disabled only when this run read it (full runs read every entry; incremental runs only
        the changed ones).
        """
        grace = self.config.REMOVAL_GRACE
        if grace is None:
            return
        callbacks = [resolve_callback(path) for path in self.config.REMOVED_USER_CALLBACKS]
        if removed_user_delete not in callbacks:
            return
        expired = DirectoryUser.objects.select_related("user").filter(
            removed_at__isnull=False, removed_at__lte=timezone.now() - grace
        )
        due = [
            link
            for link in expired
            if link.guid not in present
            or (
                link.removal_reason == DirectoryUser.REASON_DISABLED
                and link.guid in self.disabled_seen
            )
        ]
        if due:
            store.delete_removed_users(due, [removed_user_delete])
