"""ADLDAPBackend against the Samba AD domain controller of the lab: what only AD has.

A userPrincipalName whose local part is not the sAMAccountName, and a security group above a
distribution group (which ``tokenGroups`` leaves out). The tests shared with OpenLDAP
(agreement with ``syncldap full``, name forms, refusals, failover, TLS, injection,
exemptions, renames, removals, password changes) are in ``tests/slapd/test_backend.py``.
"""

from __future__ import annotations

import ldap
import pytest
from django.contrib.auth import authenticate, get_user_model
from django.test import override_settings

from tests.backend_helpers import batch_state, login_path_state, login_settings
from tests.helpers import SearchSpy, samba_settings
from tests.lab.spec import LAB_PASSWORD

pytestmark = [pytest.mark.samba, pytest.mark.django_db]

User = get_user_model()


def settings_for(dc, **more):
    sync = {k: v for k, v in more.items() if k.startswith("LDAP_SYNC_")}
    other = {k: v for k, v in more.items() if not k.startswith("LDAP_SYNC_")}
    return login_settings(samba_settings(dc, **sync), **other)


def test_user_principal_name_is_matched_as_such(samba_clean):
    """A UPN whose local part is not the sAMAccountName (john.doe@ for jdoe) logs in."""
    conn = samba_clean.admin_connection()
    conn.modify_s(
        samba_clean.user_dn("jdoe"),
        [(ldap.MOD_REPLACE, "userPrincipalName", [b"john.doe@example.test"])],
    )
    with override_settings(**settings_for(samba_clean)):
        user = authenticate(username="john.doe@example.test", password=LAB_PASSWORD)
        assert authenticate(username="john.doe@other.test", password=LAB_PASSWORD) is None
    assert user is not None and user.username == "jdoe"


def test_security_group_above_a_distribution_group_counts(samba_clean):
    """tokenGroups leaves out a distribution group and what is above it; the graph does not,
    on both paths."""
    dc = samba_clean
    conn = dc.admin_connection()
    news, club = f"CN=Newsletter,{dc.lab_dn}", f"CN=Club,{dc.lab_dn}"
    conn.add_s(
        news,
        [
            ("objectClass", [b"group"]),
            ("sAMAccountName", [b"Newsletter"]),
            ("groupType", [b"2"]),  # a global distribution group
            ("member", [dc.user_dn("carol").encode()]),
        ],
    )
    conn.add_s(
        club,  # a security group (the default type)
        [("objectClass", [b"group"]), ("sAMAccountName", [b"Club"]), ("member", [news.encode()])],
    )
    keys = {"carol": LAB_PASSWORD, "alice": LAB_PASSWORD}
    with override_settings(**settings_for(dc)):
        by_login = login_path_state(keys)
        with SearchSpy().active() as spy:
            assert authenticate(username="carol", password=LAB_PASSWORD) is not None
        by_batch = batch_state()
    assert by_login["carol"] == by_batch["carol"]
    assert {"Newsletter", "Club"} <= by_login["carol"]["groups"]
    assert spy.count == 2
