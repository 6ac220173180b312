"""What the sync has been doing: recent runs, incremental markers and the run lock, as plain data.

Used by ``manage.py syncldap --status`` (text or ``--json``); everything returned is
JSON-serialisable. Read-only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .locking import RunLock
from .models import SyncMarker, SyncRun


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def run_summary(run: SyncRun, lock_held: bool = True) -> dict[str, Any]:
    """One run record as a dict. A "running" record while nobody holds the lock is flagged."""
    duration = run.duration
    return {
        "id": run.pk,
        "mode": run.mode,
        "mode_reason": run.mode_reason,
        "status": run.status,
        "interrupted": run.status == SyncRun.STATUS_RUNNING and not lock_held,
        "dry_run": run.dry_run,
        "server": run.server,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "seconds": round(duration.total_seconds(), 3) if duration is not None else None,
        "counts": dict(sorted((run.counts or {}).items())),
        "ldap_searches": run.ldap_searches,
        "error": run.error,
        "problems": len(run.problems or []),
    }


def sync_status(limit: int = 10) -> dict[str, Any]:
    """The last ``limit`` runs (newest first), every server's marker, and the lock's holder."""
    lock = RunLock().probe()
    return {
        "lock": {
            "held": lock.held,
            "owner": lock.owner.describe() if lock.owner else None,
            "pid": lock.owner.pid if lock.owner else None,
            "host": lock.owner.host if lock.owner else None,
            "since": _iso(lock.since),
            "heartbeat": _iso(lock.heartbeat),
        },
        "runs": [run_summary(run, lock.held) for run in SyncRun.objects.all()[:limit]],
        "markers": [
            {
                "server": marker.server,
                "invocation_id": marker.invocation_id,
                "highest_usn": marker.highest_usn,
                "timestamp": marker.timestamp,
                "incrementals_since_full": marker.incrementals_since_full,
                "updated_at": _iso(marker.updated_at),
            }
            for marker in SyncMarker.objects.order_by("server")
        ],
    }
