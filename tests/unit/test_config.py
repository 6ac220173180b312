"""One settings object: ``manage.py check``, a batch run and a login agree on every value.

Every case of ``CASES`` (tests/unit/test_checks.py: at least one wrong value of each setting,
and the accepted variants) is fed to the system checks and to the run's and the login's own
entry points. A configuration with a check error is refused by ``syncldap``, ``run_sync`` (a
failed run record) and the login backend before the directory is contacted; one without is accepted by everything a
run and a login build from the settings before they contact the directory.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.core import checks
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from adldap_auth import checks as adchecks
from adldap_auth.backends import ADLDAPBackend, derived_settings
from adldap_auth.conf import DEFAULTS, ConfigError, RemovalThreshold, get_config
from adldap_auth.conf.config import config_field_names
from adldap_auth.directory.connection import connection_config
from adldap_auth.mapping import build_mapping_config
from adldap_auth.sync import run_sync

from .test_checks import BASE, CASES, Case, prefixed


def _error_ids(messages: list[Any]) -> set[str]:
    return {m.id for m in messages if m.level >= checks.ERROR}


@pytest.mark.django_db
@pytest.mark.parametrize("item", CASES, ids=str)
def test_check_and_run_agree(item: Case, caplog: pytest.LogCaptureFixture) -> None:
    with override_settings(**prefixed(item.overrides)):
        errors = _error_ids(checks.run_checks(tags=[adchecks.TAG]))
        if errors:
            result = run_sync()  # recorded as failed, before the directory is contacted
            assert (result.status, result.error_kind, result.server) == (
                "failed",
                "ConfigError",
                "",
            )
            assert {e for e in errors if e in result.error} == errors
            with pytest.raises(ConfigError) as refused:
                get_config()
            assert _error_ids(refused.value.messages) == errors
            with pytest.raises(CommandError, match="sync failed: the LDAP_SYNC_"):
                call_command("syncldap", "full", verbosity=0)
            with caplog.at_level(logging.ERROR, logger="adldap_auth"):
                assert ADLDAPBackend().authenticate(None, username="jdoe", password="x") is None
            assert any(e.removeprefix("adldap_auth.") in caplog.text for e in errors)
        else:
            # What a run and a login build from the settings before contacting the directory.
            config = get_config()
            for is_ad in (True, False):
                build_mapping_config(is_ad=is_ad)
            connection_config()
            assert derived_settings()["SERVER_URI"] == " ".join(config.bind_uris)


def test_config_has_every_setting() -> None:
    assert config_field_names() == list(DEFAULTS)


@override_settings(**prefixed({"REMOVAL_THRESHOLD": "5%", "REMOVAL_GRACE": 60}))
def test_values_are_read_once_and_converted() -> None:
    config = get_config()
    assert config is get_config()
    assert RemovalThreshold(percent=5.0, text="5%") == config.REMOVAL_THRESHOLD
    assert config.REMOVAL_GRACE.total_seconds() == 60
    assert isinstance(config.NETWORK_TIMEOUT, float)
    assert BASE["BIND_SEARCH"] == config.USER_SEARCH  # inherited from BIND_SEARCH


def test_a_change_of_the_settings_is_seen(settings: Any) -> None:
    for name, value in prefixed({}).items():
        setattr(settings, name, value)
    settings.LDAP_SYNC_USER_ATTRIBUTES = {"sAMAccountName": "username"}
    assert get_config().USER_ATTRIBUTES == {"sAMAccountName": "username"}
    settings.LDAP_SYNC_USER_ATTRIBUTES = {"sAMAccountName": "username", "mail": "email"}
    assert get_config().USER_ATTRIBUTES == {"sAMAccountName": "username", "mail": "email"}
    # 0 == False in Python, yet one is refused and the other accepted.
    settings.LDAP_SYNC_START_TLS = 0
    with pytest.raises(ConfigError, match="E004"):
        get_config()
    settings.LDAP_SYNC_START_TLS = False
    assert get_config().START_TLS is False
