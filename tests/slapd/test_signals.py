"""The signals of :mod:`adldap_auth.signals`, sent by real runs against a lab slapd."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import pytest
from django.contrib.auth.models import Group
from django.test import override_settings

from adldap_auth import signals
from adldap_auth.models import SyncRun
from adldap_auth.sync import SyncOptions, run_sync
from tests.helpers import slapd_settings
from tests.lab.spec import DirectorySpec, GroupSpec
from tests.slapd.test_admin import small_company

pytestmark = pytest.mark.django_db


@pytest.fixture
def received():
    """Every signal sent during the test: name -> list of keyword arguments."""
    seen: dict[str, list[dict]] = defaultdict(list)
    receivers = {}
    for name in ("user_synced", "user_removed", "group_synced", "run_finished"):

        def receiver(sender, signal, name=name, **kwargs):
            seen[name].append({"sender": sender, **kwargs})

        receivers[name] = receiver
        getattr(signals, name).connect(receiver, weak=False)
    yield seen
    for name, receiver in receivers.items():
        getattr(signals, name).disconnect(receiver)


@pytest.mark.django_db(transaction=True)  # callbacks and signals fire on commit
def test_signals_of_created_updated_removed_users_groups_and_finished_runs(make_slapd, received):
    server = make_slapd(spec=small_company())
    with override_settings(**slapd_settings(server, LDAP_SYNC_REMOVAL_THRESHOLD=None)):
        first = run_sync(SyncOptions(mode="full"))
        assert first.ok, first.error

        synced = {kw["user"].username: kw for kw in received["user_synced"]}
        assert set(synced) == {"ann", "ben", "cid"}
        assert all(kw["created"] for kw in synced.values())
        assert synced["ann"]["attributes"]["sn"] == [b"Alder"]
        groups = {kw["group"].name: kw["created"] for kw in received["group_synced"]}
        assert groups == {"Team": True, "Company": True}
        assert all(isinstance(kw["group"], Group) for kw in received["group_synced"])
        [finished] = received["run_finished"]
        assert isinstance(finished["run"], SyncRun) and finished["run"].pk == first.run_id
        assert finished["run"].status == "success"
        assert finished["summary"] == first.as_dict()
        assert not received["user_removed"]

        # Nothing changed: no user or group signal, one more run_finished.
        received.clear()
        assert run_sync(SyncOptions(mode="full")).ok
        assert set(received) == {"run_finished"}

        # A changed, a disabled and a deleted user; a new group.
        received.clear()
        old = server.spec
        new = DirectorySpec(
            users=[
                dataclasses.replace(old.user("ann"), sn="Alder-Smith"),
                dataclasses.replace(old.user("ben"), disabled=True),
            ],
            groups=[*old.groups[:1], GroupSpec("Company", members=["group:Team"]),
                    GroupSpec("Newcomers", members=["ann"])],
        )  # fmt: skip
        server.apply(old, new)
        third = run_sync(SyncOptions(mode="full"))
        assert third.ok, third.error
        updated = {kw["user"].username: kw["created"] for kw in received["user_synced"]}
        assert updated["ann"] is False
        assert "cid" not in updated
        removed = {kw["user"].username: kw["reason"] for kw in received["user_removed"]}
        assert removed == {"ben": "disabled", "cid": "missing"}
        assert {kw["group"].name: kw["created"] for kw in received["group_synced"]} == {
            "Newcomers": True
        }
        assert [kw["summary"]["run_id"] for kw in received["run_finished"]] == [third.run_id]

        # A dry run changes nothing, so it sends only run_finished.
        received.clear()
        newer = dataclasses.replace(new, users=[dataclasses.replace(new.user("ann"), sn="X")])
        server.apply(new, newer)
        dry = run_sync(SyncOptions(mode="full", dry_run=True))
        assert dry.counts["users_updated"] == 1
        assert set(received) == {"run_finished"}
        assert received["run_finished"][0]["summary"]["dry_run"] is True


def test_a_failed_run_sends_run_finished_with_its_error(make_slapd, received):
    server = make_slapd(spec=small_company())
    server.stop()
    with override_settings(**slapd_settings(server, LDAP_SYNC_NETWORK_TIMEOUT=2)):
        result = run_sync(SyncOptions(mode="full"))
    assert result.status == "failed"
    [finished] = received["run_finished"]
    assert finished["run"].status == "failed" and finished["run"].error == result.error
    assert finished["summary"]["error_kind"] == "DirectoryUnavailable"
    assert not received["user_synced"]
