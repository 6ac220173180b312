"""A watch's run records: one per batch that changed something, one per stretch of quiet.

Each batch is a run with its own record (``SyncRun``), written as the run goes, so a watch
killed mid-batch leaves a record that says so. A watch looks at the directory every few
seconds, though, and a day of one record per look would bury the batches that did something.
So consecutive batches that changed nothing and reported nothing are folded into the first
of them: its ``finished_at`` moves on, ``counts["watch_batches"]`` counts them and
``ldap_searches`` adds theirs up. Every other batch keeps its own record.
"""

from __future__ import annotations

from django.utils import timezone

from ..models import SyncRun
from ..sync.results import SyncResult

#: Count names whose suffix says the run wrote something (users created, memberships added...).
CHANGE_SUFFIXES = ("created", "updated", "removed", "added", "restored", "adopted", "written")


def changed_anything(result: SyncResult) -> bool:
    """Whether a run wrote anything, or has something to say (problems, not a success)."""
    if result.status != SyncRun.STATUS_SUCCESS or result.problems:
        return True
    return any(v for k, v in result.counts.items() if k.endswith(CHANGE_SUFFIXES))


def counts_text(result: SyncResult) -> str:
    """A batch's non-zero counts in one line (``users_updated=2, ...``), the feed's own
    bookkeeping left out: for the watch's log and its console."""
    return ", ".join(
        f"{k}={v}" for k, v in sorted(result.counts.items()) if v and not k.startswith("feed_")
    )


class BatchHistory:
    """Folds a watch's quiet batches into one record (see the module docstring)."""

    def __init__(self) -> None:
        self.quiet_record: int | None = None  # the record of the current quiet stretch

    def add(self, result: SyncResult) -> None:
        if result.run_id is None or result.dry_run:
            return
        if changed_anything(result) or result.mode != SyncRun.MODE_INCREMENTAL:
            self.quiet_record = None
            return
        if self.quiet_record is None:
            self._start(result)
            return
        stretch = SyncRun.objects.filter(pk=self.quiet_record).first()
        if stretch is None:  # pruned meanwhile
            self._start(result)
            return
        stretch.counts["watch_batches"] = stretch.counts.get("watch_batches", 1) + 1
        stretch.finished_at = timezone.now()
        stretch.ldap_searches += result.ldap_searches
        stretch.save(update_fields=["counts", "finished_at", "ldap_searches"])
        SyncRun.objects.filter(pk=result.run_id).delete()

    def _start(self, result: SyncResult) -> None:
        self.quiet_record = result.run_id
        record = SyncRun.objects.get(pk=result.run_id)
        record.counts["watch_batches"] = 1
        record.save(update_fields=["counts"])
