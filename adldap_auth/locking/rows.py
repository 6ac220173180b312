"""The lock row on every database: a conditional UPDATE takes it, and a dead or silent
holder's row is taken over."""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from ..models import SyncLock
from .owner import LockHeld, LockOwner, stale_after

logger = logging.getLogger("adldap_auth.lock")


class RowLock:
    """:class:`~adldap_auth.locking.RunLock`'s lock row (every backend)."""

    name: str
    using: str
    owner: LockOwner

    def _rows(self):
        return SyncLock.objects.using(self.using).filter(name=self.name)

    def _ensure_row(self) -> None:
        if self._rows().exists():
            return
        try:
            with transaction.atomic(using=self.using):
                SyncLock.objects.using(self.using).create(name=self.name)
        except IntegrityError:
            pass  # another run created it at the same moment

    def _acquire_row(self) -> None:
        self._ensure_row()
        row = self._rows().values("owner", "acquired_at", "heartbeat_at").get()
        now = timezone.now()
        mine = {"owner": str(self.owner), "acquired_at": now, "heartbeat_at": now}
        if row["owner"]:
            holder = LockOwner.parse(row["owner"])
            if holder.is_dead():
                logger.warning(
                    "sync lock %r: holder %s is dead; taking the lock over",
                    self.name,
                    holder.describe(),
                )
            elif self._is_stale(row["heartbeat_at"], now):
                logger.warning(
                    "sync lock %r: holder %s silent since %s (LDAP_SYNC_LOCK_STALE_AFTER); "
                    "taking the lock over",
                    self.name,
                    holder.describe(),
                    row["heartbeat_at"],
                )
            else:
                raise LockHeld(holder, row["acquired_at"])
            # Compare-and-swap on the exact owner seen: of two runs taking over, one wins.
            taken = self._rows().filter(owner=row["owner"]).update(**mine)
        else:
            taken = self._rows().filter(owner="").update(**mine)
        if not taken:
            holder, since, _beat = self.status()
            raise LockHeld(holder, since)

    def _is_stale(self, heartbeat_at: datetime | None, now: datetime) -> bool:
        return heartbeat_at is None or heartbeat_at < now - stale_after()
