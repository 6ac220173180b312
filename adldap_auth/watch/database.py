"""A watch's database connections: it lives for days, its connections may not.

Django closes a request's stale connections around every request (``close_old_connections``);
a watch does the same around every batch, and after a batch that could not even write its run
record it closes them, so that the next batch opens new ones.
"""

from __future__ import annotations

from django.db import DatabaseError, connections

from ..models import SyncRun
from ..sync import SyncResult


def drop_stale_connections() -> None:
    """Close the connections past ``CONN_MAX_AGE`` or left unusable by an error (as Django
    does between requests); never one inside a transaction."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()


def close_connections() -> None:
    """Close every connection outside a transaction: the next query opens a new one."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()


def failed_batch(mode: str, error: DatabaseError) -> SyncResult:
    """The result of a batch that failed before it had a run record."""
    return SyncResult(
        run_id=None,
        mode=mode,
        status=SyncRun.STATUS_FAILED,
        server="",
        dry_run=False,
        counts={},
        problems=[],
        error=f"the database failed: {error}",
        ldap_searches=0,
        seconds=0.0,
        error_kind=type(error).__name__,
    )
