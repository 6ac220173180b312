"""A batch run: read the directory, make Django match, record what happened.

Order of a full run, and why:

1. Read the rootDSE first, so an incremental marker never skips a change made during the run.
2. Read every group (paged, ranged ``member`` values) and build the group graph once; a read
   that lost too many managed groups fails the run here, before anything is written
   (:func:`check_group_read`).
3. Stream users a page at a time; map, write and add memberships in batches of
   ``LDAP_SYNC_WRITE_BATCH_SIZE``, each batch its own transaction (no lock held for minutes,
   no half-applied batch). Memberships found gone are only collected.
4. Only when every search completed: removals of memberships, users and groups, each guarded
   by ``LDAP_SYNC_REMOVAL_THRESHOLD``.

Any incomplete read (error, limit, timeout) ends the run as failed *before* step 4.
"""

from ..directory.connection import connection_config
from .engine import SyncEngine, close_interrupted_runs, run_sync
from .guards import (
    check_group_read,
    check_membership_removals,
    check_removal_threshold,
    linked_group_guids,
)
from .planner import MembershipPlanner, user_ids_holding
from .results import FULL, INCREMENTAL, RemovalRefused, SyncOptions, SyncResult

__all__ = [
    "FULL",
    "INCREMENTAL",
    "MembershipPlanner",
    "RemovalRefused",
    "SyncEngine",
    "SyncOptions",
    "SyncResult",
    "check_group_read",
    "check_membership_removals",
    "check_removal_threshold",
    "close_interrupted_runs",
    "connection_config",
    "linked_group_guids",
    "run_sync",
    "user_ids_holding",
]
