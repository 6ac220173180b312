"""What a run is asked to do and what it reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..models import SyncRun

FULL = SyncRun.MODE_FULL
INCREMENTAL = SyncRun.MODE_INCREMENTAL


class RemovalRefused(Exception):
    """Removals were held back by a safety rule; the message says which and how to proceed."""


@dataclass
class SyncOptions:
    mode: str | None = None  # "full", "incremental", or None (follow the settings)
    dry_run: bool = False
    force_removals: bool = False
    collect_changes: bool = False
    progress: Callable[[str, int], None] | None = None  # (phase, entries read so far)


@dataclass
class SyncResult:
    """The summary of a run, JSON-serialisable through :meth:`as_dict`."""

    run_id: int | None
    mode: str
    status: str
    server: str
    dry_run: bool
    counts: dict[str, int]
    problems: list[str]
    error: str
    ldap_searches: int
    seconds: float
    changes: list[str] | None = field(default=None, repr=False)
    mode_reason: str = ""
    error_kind: str = ""  # class name of the failure, e.g. "DirectoryUnavailable"

    @property
    def ok(self) -> bool:
        return self.status != SyncRun.STATUS_FAILED

    def as_dict(self) -> dict[str, Any]:
        data = {
            "run_id": self.run_id,
            "mode": self.mode,
            "mode_reason": self.mode_reason,
            "status": self.status,
            "server": self.server,
            "dry_run": self.dry_run,
            "counts": dict(sorted(self.counts.items())),
            "problems": self.problems,
            "error": self.error,
            "error_kind": self.error_kind,
            "ldap_searches": self.ldap_searches,
            "seconds": round(self.seconds, 3),
        }
        if self.changes is not None:
            data["changes"] = self.changes
        return data
