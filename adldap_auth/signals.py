"""Signals sent by the sync and the login backend. Receivers must not raise.

- ``user_synced(sender, user, created, attributes)``: a user was created or changed from the
  directory (batch or login).
- ``user_removed(sender, user, reason)``: removal callbacks ran for a user (``reason`` is
  ``"missing"`` or ``"disabled"``).
- ``group_synced(sender, group, created)``: a group was created or renamed from the directory.
- ``run_finished(sender, run, summary)``: a batch run ended (any status).
"""

from django.dispatch import Signal

user_synced = Signal()
user_removed = Signal()
group_synced = Signal()
run_finished = Signal()
