"""LDAP_SYNC_REMOVAL_THRESHOLD: how many removals one run may make, in its three forms."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RemovalThreshold:
    """What LDAP_SYNC_REMOVAL_THRESHOLD lets one run remove of ``total`` synced users, groups
    or memberships. Built by :func:`removal_threshold`, the one place that reads the setting."""

    count: int | None = None  # the count form: this many, whatever the total
    percent: float | None = None  # the percentage forms: this share of the total,
    minimum: int = 0  # but at least this many (never more than half the total),
    maximum: int | None = None  # and at most this many
    text: str = ""  # the "N%" string as the site wrote it, for messages

    def limit(self, total: int) -> float:
        """The most removals allowed out of ``total``."""
        if self.count is not None:
            return self.count
        # The floor lets a small site lose a few users without --force-removals, but never
        # half of them: 10 of 12 users is a wrong search base, not staff turnover.
        limit = max(self.percent * total / 100, min(self.minimum, total / 2))
        return limit if self.maximum is None else min(limit, self.maximum)

    def describe(self, total: int, noun: str) -> str:
        """The limit in words, e.g. ``10% of 77 synced users, at least 10: 10``."""
        if self.count is not None:
            return str(self.count)
        if self.text:
            return f"{self.text} of {total} {noun}"
        floor = f"at least {self.minimum}" if self.minimum else ""
        if self.minimum > total / 2:
            floor += " but at most half of them"
        ceiling = f"at most {self.maximum}" if self.maximum is not None else ""
        parts = ", ".join(p for p in (f"{self.percent:g}% of {total} {noun}", floor, ceiling) if p)
        return f"{parts}: {self.limit(total):g}"


_PERCENT_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*%\s*\Z")
_THRESHOLD_KEYS = {"percent", "minimum", "maximum"}


def removal_threshold(value: Any) -> RemovalThreshold | None:
    """LDAP_SYNC_REMOVAL_THRESHOLD read: None (no limit), a count, ``"N%"``, or
    ``{"percent": p, "minimum": n, "maximum": m}`` (minimum and maximum optional).

    Raises ``ValueError`` saying what is wrong (validation reports it as E022).
    """
    if value is None or isinstance(value, RemovalThreshold):  # already read
        return value
    if _is_count(value):
        return RemovalThreshold(count=value)
    if isinstance(value, str):
        match = _PERCENT_RE.match(value)
        if match and 0 < float(match.group(1)) <= 100:
            return RemovalThreshold(percent=float(match.group(1)), text=value.strip())
        raise ValueError("a string must be a percentage above 0% and at most 100%")
    if isinstance(value, Mapping):
        unknown = set(value) - _THRESHOLD_KEYS
        if unknown:
            raise ValueError(f"unknown keys {sorted(map(str, unknown))}")
        percent = value.get("percent")
        is_number = isinstance(percent, int | float) and not isinstance(percent, bool)
        if not (is_number and 0 < percent <= 100):
            raise ValueError('"percent" must be a number above 0 and at most 100')
        minimum, maximum = value.get("minimum", 0), value.get("maximum")
        if not _is_count(minimum) or not (maximum is None or _is_count(maximum)):
            raise ValueError('"minimum" and "maximum" must be integers >= 0')
        return RemovalThreshold(percent=float(percent), minimum=minimum, maximum=maximum)
    raise ValueError("not an integer >= 0, a percentage string, a dict or None")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
