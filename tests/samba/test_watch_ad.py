"""``syncldap watch`` against the Samba AD DC: a look every interval (uSNChanged, or DirSync),
each change applied by the next batch, a removed user's session ended, and the state a full
run gives."""

from __future__ import annotations

import time
from collections.abc import Callable

import ldap
import pytest
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.test import Client, override_settings

from adldap_auth.models import SyncRun
from adldap_auth.sync import SyncOptions, SyncResult, run_sync
from adldap_auth.watch import WatchOptions, watch
from tests.helpers import samba_settings
from tests.slapd.test_sync_incremental import changes_of

pytestmark = pytest.mark.django_db


def in_group(username: str, group: str) -> Callable[[], bool]:
    return lambda: get_user_model().objects.filter(username=username, groups__name=group).exists()


def inactive(username: str) -> Callable[[], bool]:
    return lambda: get_user_model().objects.filter(username=username, is_active=False).exists()


@pytest.mark.parametrize("tracking", ["auto", "dirsync"])
def test_the_watch_applies_ad_changes_batch_by_batch(samba_clean, tracking):
    dc = samba_clean
    if tracking == "dirsync":
        dc.grant_replication_right(dc.reader_dn)
        dc.grant_deleted_objects(dc.reader_dn)
        dc.add_tombstone()
    conn = dc.admin_connection()
    User = get_user_model()
    settings = samba_settings(
        dc,
        LDAP_SYNC_REMOVAL_THRESHOLD=None,
        LDAP_SYNC_CHANGE_TRACKING=tracking,
        SESSION_ENGINE="django.contrib.sessions.backends.db",
    )
    steps: list[tuple[Callable[[], None], Callable[[], bool]]] = [
        (  # a field
            lambda: conn.modify_s(dc.user_dn("bob"), [(ldap.MOD_REPLACE, "sn", [b"Brewer"])]),
            lambda: User.objects.filter(username="bob", last_name="Brewer").exists(),
        ),
        (  # a membership through nesting: Rocket Team < Engineering < R&D
            lambda: conn.modify_s(
                dc.group_dn("Rocket Team"),
                [(ldap.MOD_ADD, "member", [dc.user_dn("erin").encode()])],
            ),
            in_group("erin", "R&D"),
        ),
        (  # disabled
            lambda: conn.modify_s(
                dc.user_dn("zoe"), [(ldap.MOD_REPLACE, "userAccountControl", [b"514"])]
            ),
            inactive("zoe"),
        ),
        (lambda: conn.delete_s(dc.user_dn("carol")), inactive("carol")),  # deleted
    ]
    latencies: list[float] = []
    pending: list = []
    options = WatchOptions(interval=0.3, duration=30)
    with override_settings(**settings):

        def on_batch(result: SyncResult) -> None:
            assert result.ok, result.error
            if pending and pending[0][1]():
                latencies.append(time.monotonic() - pending.pop()[2])
            if not pending:
                if not steps:
                    options.stop.set()
                    return
                write, done = steps.pop(0)
                write()
                pending.append((write, done, time.monotonic()))

        options.on_batch = on_batch
        client = Client()
        run_sync(SyncOptions(mode="full"))
        client.force_login(User.objects.get(username="carol"))
        summary = watch(options)
        assert summary.stopped_by == "stop" and summary.failed == 0, (
            summary,
            len(steps),
            latencies,
        )
        assert len(latencies) == 4
        if tracking == "dirsync":  # every batch read the feed, none swept the users
            last = SyncRun.objects.order_by("pk").last()
            assert "users_swept" not in last.counts and last.mode == "incremental", last.counts
        assert summary.full == 0  # the full run just made is recent: incremental batches
        assert not Session.objects.exists()  # carol's session ended with her account
        full = run_sync(SyncOptions(mode="full"))
    assert full.ok and changes_of(full) == {}, full.counts
