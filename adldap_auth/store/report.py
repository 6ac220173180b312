"""What one run or one login counted, planned and found wrong (:class:`RunReport`): every
part of the store reports to it; its counts and problems are what a run records."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("adldap_auth.sync")

#: How many problems a run keeps in its record (all are logged).
MAX_PROBLEMS = 200


@dataclass
class RunReport:
    """Counts, problems and (optionally) the list of planned/made changes of one run."""

    counts: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    changes: list[str] | None = None  # collected only when asked (dry runs, tests)
    #: users not written because another writer held the database (:func:`lock_conflict`):
    #: the login path waits and tries again
    lock_conflicts: int = 0

    def problem(self, message: str, *args: Any) -> None:
        text = message % args if args else message
        logger.warning("%s", text)
        self.counts["errors"] += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    def snapshot(self) -> tuple[Counter, int, int]:
        changes = len(self.changes) if self.changes is not None else 0
        return Counter(self.counts), changes, len(self.problems)

    def restore(self, saved: tuple[Counter, int, int]) -> None:
        """Forget what a rolled-back attempt counted and reported: its retry reports it again
        (errors and problem lines are counted once)."""
        counts, changes, problems = saved
        self.counts = Counter(counts)
        if self.changes is not None:
            del self.changes[changes:]
        del self.problems[problems:]

    def warning(self, message: str, *args: Any) -> None:
        """A problem that did not stop an entry from syncing (truncated value, bad photo)."""
        text = message % args if args else message
        logger.warning("%s", text)
        self.counts["warnings"] += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    def change(self, text: str) -> None:
        if self.changes is not None:
            self.changes.append(text)
