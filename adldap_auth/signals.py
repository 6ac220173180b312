"""Signals sent by the sync and the login backend.

- ``user_synced(sender, user, created, attributes)``: a user was created or changed from the
  directory (batch or login).
- ``user_removed(sender, user, reason)``: removal callbacks ran for a user (``reason`` is
  ``"missing"`` or ``"disabled"``).
- ``group_synced(sender, group, created)``: a group was created or renamed from the directory.
- ``run_finished(sender, run, summary)``: a batch run ended (any status).

Receivers are isolated (:func:`send`): one that raises is logged with its traceback and
reported, and neither stops the other receivers nor fails the run or the login.
"""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import Signal

logger = logging.getLogger("adldap_auth.signals")

user_synced = Signal()
user_removed = Signal()
group_synced = Signal()
run_finished = Signal()

_NAMES = {
    id(user_synced): "user_synced",
    id(user_removed): "user_removed",
    id(group_synced): "group_synced",
    id(run_finished): "run_finished",
}


def send(signal: Signal, sender: Any, **kwargs: Any) -> list[str]:
    """Send ``signal`` with Django's ``send_robust``: every receiver runs whatever another
    one raises. Each failure is logged at ERROR with its traceback; returns one line per
    failure ("receiver ... of signal ... failed: ..."), for the caller's report."""
    failures = []
    name = _NAMES.get(id(signal), "signal")
    for receiver, result in signal.send_robust(sender, **kwargs):
        if isinstance(result, Exception):
            who = getattr(receiver, "__qualname__", None)
            who = f"{receiver.__module__}.{who}" if who else repr(receiver)
            text = f"receiver {who} of signal {name} failed: {type(result).__name__}: {result}"
            logger.error("%s", text, exc_info=(type(result), result, result.__traceback__))
            failures.append(text)
    return failures
