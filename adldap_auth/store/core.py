"""The :class:`Store` itself: one run's (or one login's) state, assembled from the mixin of
each concern, and what they all use: transactions, lock-conflict retries, on-commit signals."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, TypeVar

from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import router, transaction
from django.utils import timezone

from .. import signals
from ..dbwrite import retry_locked, write_transaction
from ..mapping import MappingConfig, UserRecord
from ..models import DirectoryUser
from .adoption import AdoptionMixin
from .groups import GroupsMixin
from .memberships import MembershipsMixin
from .profiles import ProfilesMixin
from .removals import RemovalsMixin
from .report import RunReport
from .users import UsersMixin

T = TypeVar("T")


class Store(GroupsMixin, UsersMixin, AdoptionMixin, ProfilesMixin, MembershipsMixin, RemovalsMixin):
    """Applies records to the database for one run (batch sync) or one login.

    ``dry_run`` computes and reports every change but writes nothing.

    Its methods come from one mixin per concern (``groups``, ``users``, ``adoption``,
    ``profiles``, ``memberships``, ``removals``); here are the state they share and the
    transactions, lock retries and on-commit signals they all use.
    """

    def __init__(
        self,
        config: MappingConfig,
        report: RunReport,
        *,
        server: str = "",
        dry_run: bool = False,
        set_unusable_password: bool = True,
        user_callbacks: Sequence[Callable] = (),
        now: datetime | None = None,
        adopt_users: Iterable[str] = (),
        entry_gone: Callable[[DirectoryUser], bool] | None = None,
        defer_relinks: bool = False,
        defer_membership_removals: bool = False,
        before_membership_write: Callable[[], None] | None = None,
        lock_first: bool = True,
    ):
        self.config = config
        self.report = report
        self.server = server
        self.dry_run = dry_run
        self.set_unusable_password = set_unusable_password
        self.user_callbacks = list(user_callbacks)
        self.now = now or timezone.now()
        self.User = get_user_model()
        self.username_field = config.username_field
        self.profile_models = [(spec, apps.get_model(spec.label)) for spec in config.profiles]
        #: username (lower-case) -> guid of the entry that claimed it in this run
        self._claimed_usernames: dict[str, str] = {}
        #: (storage, name) of the photo files written in the current batch's transaction
        self._written_files: list[tuple[Any, str]] = []
        #: dry runs: placeholder id (negative) -> name of a user or group the run would create
        self._placeholders: dict[int, str] = {}
        #: usernames (lower-case) adopted whatever the adoption rules (``manage.py ldaplink``)
        self.adopt_users = {name.lower() for name in adopt_users}
        #: asked whether the entry of a link is gone from the directory, before a new entry
        #: with the same username takes its user over (see :meth:`_relink_decision`)
        self.entry_gone = entry_gone
        #: batch runs: such entries wait for the end of the read (:meth:`sync_deferred_users`)
        self.defer_relinks = defer_relinks
        self.deferred_relinks: list[UserRecord] = []
        #: guids of the directory groups skipped by a decision of this run (adoption refused,
        #: name held by another group): not tried again, so reported once
        self._skipped_groups: set[str] = set()
        #: batch runs: memberships found gone are only collected (row ids of the user-groups
        #: table) until the whole scope was read and the removal threshold checked
        #: (:meth:`apply_membership_removals`); a login applies them at once.
        self.defer_membership_removals = defer_membership_removals
        self.pending_membership_removals: list[int] = []
        #: memberships of managed groups held before the first membership write of the run
        self.managed_memberships = 0
        self._managed_counted = False
        #: batch runs: called once, before the first membership write (committed first, or
        #: with it), to say the stored nesting no longer describes Django's memberships
        self.before_membership_write = before_membership_write
        #: transactions take SQLite's write lock first (:meth:`_transaction`); a login sets
        #: False for its first attempt, which often writes nothing (an unchanged user)
        self.lock_first = lock_first

    def _placeholder_id(self, name: str) -> int:
        """Dry runs: a negative id standing for a user or group the run would create, so that
        the memberships of new users and groups are planned like the others."""
        self._placeholders[-len(self._placeholders) - 1] = name
        return -len(self._placeholders)

    def _transaction(self) -> AbstractContextManager[None]:
        """A write transaction: on SQLite it waits its turn for the write lock rather than
        failing when a login (or a run) writes (:func:`~adldap_auth.dbwrite.write_transaction`).
        A dry run writes nothing, so it takes no write lock; nor does a store made with
        ``lock_first=False``, whose transactions may fail at once on SQLite's lock instead."""
        if self.dry_run or not self.lock_first:
            return transaction.atomic()
        return write_transaction()

    def _retry_locked(
        self, write: Callable[[], T], what: str, before_retry: Callable[[], None] | None = None
    ) -> T:
        """``write()``, one write transaction of a batch run, done again after a growing pause
        while it meets a lock conflict (on SQLite: logins holding the write lock beyond the
        busy timeout), so that a run survives contention. Only when that transaction is the
        outermost one, so that the retry redoes all the rolled-back work (inside a caller's
        transaction the error is raised: :func:`~adldap_auth.dbwrite.retry_locked`). Before a
        retry, the report forgets what the attempt counted and ``before_retry`` reads again
        what the attempt relied on. A login's store (``lock_first=False``) and dry runs call
        ``write`` once."""
        if self.dry_run or not self.lock_first:
            return write()
        saved = self.report.snapshot()
        attempts = 0

        def attempt() -> T:
            nonlocal attempts
            if attempts:
                self.report.restore(saved)
                if before_retry is not None:
                    before_retry()
            attempts += 1
            return write()

        return retry_locked(attempt, what, using=router.db_for_write(Group))

    def _on_commit(self, func: Callable[[], None]) -> None:
        """Run ``func`` once the current transaction commits: at once when none is open (a
        batch run writes in transactions of its own), at the commit of the caller's (a login
        under ``ATOMIC_REQUESTS``, a site's ``transaction.atomic()``), and never when that one
        rolls back, so that callbacks and receivers only see rows that exist."""
        transaction.on_commit(func, using=router.db_for_write(self.User))

    def _send(self, signal, **kwargs: Any) -> None:
        """Send one of :mod:`adldap_auth.signals` once the rows it names are committed."""
        self._on_commit(lambda: self._send_now(signal, **kwargs))

    def _send_now(self, signal, **kwargs: Any) -> None:
        """Send ``signal`` to isolated receivers: a receiver that raises is logged and counted
        as a problem of the run, never stops it."""
        for failure in signals.send(signal, Store, **kwargs):
            self.report.problem("%s", failure)
