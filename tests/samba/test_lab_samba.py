"""The Samba AD lab works: it answers, binds, verifies TLS, and holds exactly the spec.

These tests check the lab itself (not adldap_auth), so expectations come from
:mod:`tests.lab.spec` and raw python-ldap calls only.
"""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import time

import ldap
import pytest
from ldap.dn import str2dn

from tests.lab.samba import (
    SambaDC,
    SambaError,
    display_name,
    sid_to_str,
    template_key,
    user_account_control,
)
from tests.lab.spec import LAB_PASSWORD, company

samba = pytest.mark.samba

USER_ATTRS = [
    "sAMAccountName", "userPrincipalName", "givenName", "sn", "displayName", "mail",
    "department", "title", "thumbnailPhoto", "userAccountControl", "objectClass",
]  # fmt: skip


def norm(dn: str | bytes) -> tuple:
    """A DN in comparable form (case and escaping differences removed)."""
    if isinstance(dn, bytes):
        dn = dn.decode()
    return tuple(tuple((a.lower(), v.lower()) for a, v, _ in rdn) for rdn in str2dn(dn))


def one(conn, dn: str, attrs: list[str]) -> dict[str, list[bytes]]:
    return conn.search_s(dn, ldap.SCOPE_BASE, "(objectClass=*)", attrs)[0][1]


def error_info(exc: ldap.LDAPError) -> str:
    return exc.args[0].get("info", "")


def process_runs(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (PID 1 here reaps orphans slowly)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(") ", 1)[1][0] not in "ZX"
    except FileNotFoundError:
        return False


# --- server ---------------------------------------------------------------------------------


@samba
def test_root_dse_answers(samba_dc: SambaDC) -> None:
    attrs = one(samba_dc.connect(), "", ["highestCommittedUSN", "dsServiceName"])
    assert int(attrs["highestCommittedUSN"][0]) > 0
    assert attrs["dsServiceName"][0].decode().startswith("CN=NTDS Settings,CN=DC1,")
    assert samba_dc.domain_sid.startswith("S-1-5-21-")


@samba
def test_domain_sid_matches_directory(samba_dc: SambaDC) -> None:
    conn = samba_dc.reader_connection()
    assert sid_to_str(one(conn, samba_dc.base_dn, ["objectSid"])["objectSid"][0]) == (
        samba_dc.domain_sid
    )


# --- binds and TLS --------------------------------------------------------------------------


@samba
def test_reader_binds_over_plain_ldap(samba_dc: SambaDC) -> None:
    conn = samba_dc.connect(samba_dc.uri)
    conn.simple_bind_s(samba_dc.reader_dn, samba_dc.reader_password)
    assert one(conn, samba_dc.reader_dn, ["sAMAccountName"])["sAMAccountName"] == [b"svc-reader"]


@samba
def test_reader_binds_over_verified_ldaps(samba_dc: SambaDC) -> None:
    conn = ldap.initialize(samba_dc.ldaps_uri)
    conn.set_option(ldap.OPT_X_TLS_CACERTFILE, str(samba_dc.ca_file))
    conn.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, ldap.OPT_X_TLS_DEMAND)
    conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)
    conn.simple_bind_s(samba_dc.reader_dn, samba_dc.reader_password)
    assert conn.get_option(ldap.OPT_X_TLS_CIPHER)  # really encrypted


@samba
def test_reader_binds_over_verified_starttls(samba_dc: SambaDC) -> None:
    conn = samba_dc.connect(samba_dc.uri, start_tls=True)
    conn.simple_bind_s(samba_dc.reader_dn, samba_dc.reader_password)
    assert conn.get_option(ldap.OPT_X_TLS_CIPHER)


@samba
def test_ldaps_with_wrong_ca_fails(samba_dc: SambaDC, wrong_ca_file) -> None:
    conn = ldap.initialize(samba_dc.ldaps_uri)
    conn.set_option(ldap.OPT_NETWORK_TIMEOUT, 5)
    conn.set_option(ldap.OPT_X_TLS_CACERTFILE, str(wrong_ca_file))
    conn.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, ldap.OPT_X_TLS_DEMAND)
    conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)
    with pytest.raises(ldap.SERVER_DOWN):
        conn.simple_bind_s(samba_dc.reader_dn, samba_dc.reader_password)


@samba
def test_starttls_with_wrong_ca_fails(samba_dc: SambaDC, wrong_ca_file) -> None:
    with pytest.raises(ldap.CONNECT_ERROR):
        samba_dc.connect(samba_dc.uri, start_tls=True, ca_file=wrong_ca_file)


@samba
def test_reader_is_least_privileged(samba_dc: SambaDC) -> None:
    conn = samba_dc.reader_connection()
    attrs = one(conn, samba_dc.reader_dn, ["memberOf", "adminCount", "primaryGroupID"])
    assert "memberOf" not in attrs and "adminCount" not in attrs
    assert attrs["primaryGroupID"] == [b"513"]  # Domain Users only
    with pytest.raises(ldap.INSUFFICIENT_ACCESS):
        conn.add_s(f"CN=intruder,{samba_dc.lab_dn}", [("objectClass", [b"user"])])


@samba
@pytest.mark.parametrize("login", ["alice@example.test", "EXAMPLE\\alice", "dn"])
def test_alice_binds_with_lab_password(samba_dc: SambaDC, login: str) -> None:
    who = samba_dc.user_dn("alice") if login == "dn" else login
    conn = samba_dc.bind(who, LAB_PASSWORD)
    assert one(conn, samba_dc.user_dn("alice"), ["sAMAccountName"])["sAMAccountName"] == [b"alice"]


@samba
def test_disabled_dave_cannot_bind(samba_dc: SambaDC) -> None:
    with pytest.raises(ldap.INVALID_CREDENTIALS) as caught:
        samba_dc.bind("dave@example.test", LAB_PASSWORD)
    assert "data 533" in error_info(caught.value)  # account disabled, not a bad password


@samba
def test_wrong_password_is_rejected(samba_dc: SambaDC) -> None:
    with pytest.raises(ldap.INVALID_CREDENTIALS) as caught:
        samba_dc.bind("EXAMPLE\\bob", "not-" + LAB_PASSWORD)
    assert "data 52e" in error_info(caught.value)


@samba
def test_bulk_user_without_password_cannot_bind(samba_dc: SambaDC) -> None:
    with pytest.raises(ldap.INVALID_CREDENTIALS):
        samba_dc.bind("bulk0001@example.test", LAB_PASSWORD)


# --- the loaded directory -------------------------------------------------------------------


@samba
def test_every_user_matches_the_spec(samba_dc: SambaDC) -> None:
    conn = samba_dc.reader_connection()
    found = {
        attrs["sAMAccountName"][0].decode(): (dn, attrs)
        for dn, attrs in conn.search_s(
            samba_dc.lab_dn, ldap.SCOPE_SUBTREE, "(objectCategory=person)", USER_ATTRS
        )
    }
    spec = samba_dc.spec
    assert sorted(found) == sorted(u.key for u in spec.users)
    for user in spec.users:
        dn, attrs = found[user.key]
        assert norm(dn) == norm(samba_dc.user_dn(user.key)), user.key
        expected = {
            "sAMAccountName": user.key,
            "userPrincipalName": f"{user.key}@example.test",
            "givenName": user.given_name,
            "sn": user.sn,
            "displayName": display_name(user),
            "mail": user.mail,
            "department": user.department,
            "title": user.title,
            "userAccountControl": str(user_account_control(user)),
        }
        for name, value in expected.items():
            actual = attrs.get(name, [None])[0]
            assert actual == (value.encode() if value else None), (user.key, name)
        assert attrs.get("thumbnailPhoto", [None])[0] == user.photo, user.key
        assert b"user" in attrs["objectClass"]


@samba
def test_user_account_control_values(samba_dc: SambaDC) -> None:
    conn = samba_dc.reader_connection()

    def uac(key: str) -> int:
        return int(
            one(conn, samba_dc.user_dn(key), ["userAccountControl"])["userAccountControl"][0]
        )

    assert (uac("alice"), uac("dave"), uac("bulk0000")) == (512, 514, 544)


@samba
def test_escaped_dn_round_trips(samba_dc: SambaDC) -> None:
    conn = samba_dc.reader_connection()
    [(dn, attrs)] = conn.search_s(
        samba_dc.lab_dn, ldap.SCOPE_SUBTREE, "(sAMAccountName=jdoe)", ["cn"]
    )
    assert attrs["cn"] == [b"Doe, John (IT)"]
    assert dn == samba_dc.user_dn("jdoe") == r"CN=Doe\, John (IT),OU=IT,OU=Lab,DC=example,DC=test"


@samba
def test_every_group_matches_the_spec(samba_dc: SambaDC) -> None:
    conn = samba_dc.reader_connection()
    found = {
        attrs["sAMAccountName"][0].decode(): (dn, attrs)
        for dn, attrs in conn.search_s(
            samba_dc.lab_dn,
            ldap.SCOPE_SUBTREE,
            "(objectClass=group)",
            ["sAMAccountName", "member", "description"],
        )
    }
    spec = samba_dc.spec
    assert sorted(found) == sorted(g.name for g in spec.groups)
    for group in spec.groups:
        dn, attrs = found[group.name]
        assert norm(dn) == norm(samba_dc.group_dn(group.name))
        expected = {
            norm(samba_dc.group_dn(m[6:]) if m.startswith("group:") else samba_dc.user_dn(m))
            for m in group.members
        }
        # Samba returns all values of a plain ``member`` request (Windows would range them).
        assert {norm(v) for v in attrs.get("member", [])} == expected, group.name
        assert attrs.get("description", [None])[0] == (
            group.description.encode() if group.description else None
        )


@samba
def test_member_ranges_on_the_big_group(samba_dc: SambaDC) -> None:
    conn = samba_dc.reader_connection()
    dn = samba_dc.group_dn("All Bulk")
    first = one(conn, dn, ["member;range=0-1499"])
    assert list(first) == ["member;range=0-1499"]
    assert len(first["member;range=0-1499"]) == 1500
    rest = one(conn, dn, ["member;range=1500-*"])
    assert list(rest) == ["member;range=1500-*"]
    assert len(rest["member;range=1500-*"]) == 101
    members = {norm(v) for v in first["member;range=0-1499"] + rest["member;range=1500-*"]}
    assert len(members) == 1601
    assert norm(samba_dc.user_dn("carol")) in members


def resolve_sids(samba_dc: SambaDC, conn, sids: list[bytes]) -> set[str]:
    query = "(|{})".format("".join(f"(objectSid={sid_to_str(s)})" for s in sids))
    return {
        attrs["sAMAccountName"][0].decode()
        for dn, attrs in conn.search_s(
            samba_dc.base_dn, ldap.SCOPE_SUBTREE, query, ["sAMAccountName"]
        )
        if dn is not None  # skip search continuation references (AD returns them)
    }


@samba
def test_alice_token_groups_cover_the_nesting(samba_dc: SambaDC) -> None:
    conn = samba_dc.reader_connection()
    nested = samba_dc.spec.expected_groups()["alice"]
    assert nested == {"Rocket Team", "Engineering", "R&D", "Staff", "Everyone"}

    sids = one(conn, samba_dc.user_dn("alice"), ["tokenGroups"])["tokenGroups"]
    assert f"{samba_dc.domain_sid}-513" in {sid_to_str(s) for s in sids}  # primary group
    # tokenGroups also lists domain-local/builtin groups: BUILTIN\Users (S-1-5-32-545)
    # holds Domain Users, so every user has it.
    assert "S-1-5-32-545" in {sid_to_str(s) for s in sids}
    assert resolve_sids(samba_dc, conn, sids) == nested | {"Domain Users", "Users"}

    attr = "tokenGroupsGlobalAndUniversal"
    global_sids = one(conn, samba_dc.user_dn("alice"), [attr])[attr]
    assert resolve_sids(samba_dc, conn, global_sids) == nested | {"Domain Users"}


@samba
def test_token_groups_need_a_base_search(samba_dc: SambaDC) -> None:
    conn = samba_dc.reader_connection()
    with pytest.raises(ldap.OPERATIONS_ERROR):
        conn.search_s(
            samba_dc.lab_dn, ldap.SCOPE_SUBTREE, "(sAMAccountName=alice)", ["tokenGroups"]
        )


# --- lifecycle ------------------------------------------------------------------------------


@samba
def test_reset_restores_the_template(samba_clean: SambaDC) -> None:
    dc = samba_clean
    assert dc.is_clean()
    admin = dc.admin_connection()
    admin.modify_s(dc.user_dn("bob"), [(ldap.MOD_REPLACE, "title", [b"Changed"])])
    admin.delete_s(dc.user_dn("zoe"))
    assert not dc.is_clean()
    started = time.monotonic()
    dc.reset()
    elapsed = time.monotonic() - started
    conn = dc.reader_connection()
    assert one(conn, dc.user_dn("bob"), ["title"])["title"] == [b"Lead"]
    assert one(conn, dc.user_dn("zoe"), ["sn"])["sn"] == ["Zäller".encode()]
    assert dc.is_clean()
    assert elapsed < 15, f"reset took {elapsed:.1f} s"


@samba
def test_first_bind_makes_the_dc_unclean(samba_clean: SambaDC) -> None:
    """A first login writes lastLogonTimestamp: the USN check notices, no flag needed."""
    assert samba_clean.is_clean()
    samba_clean.bind("carol@example.test", LAB_PASSWORD)
    assert not samba_clean.dirty
    assert not samba_clean.is_clean()


@samba
def test_relaxed_password_policy_allows_any_password(samba_clean: SambaDC) -> None:
    admin = samba_clean.admin_connection()
    admin.modify_s(
        samba_clean.user_dn("erin"), [(ldap.MOD_REPLACE, "unicodePwd", ['"x"'.encode("utf-16-le")])]
    )
    samba_clean.bind("erin@example.test", "x")
    with pytest.raises(ldap.INVALID_CREDENTIALS):
        samba_clean.bind("erin@example.test", LAB_PASSWORD)


@samba
def test_stop_and_start_keep_the_data(samba_clean: SambaDC) -> None:
    dc = samba_clean
    dc.admin_connection().modify_s(
        dc.user_dn("bob"), [(ldap.MOD_REPLACE, "title", [b"Survives restarts"])]
    )
    dc.stop()
    assert not dc.running
    with pytest.raises(ldap.SERVER_DOWN):
        dc.connect().simple_bind_s(dc.reader_dn, dc.reader_password)
    dc.start()
    conn = dc.reader_connection()
    assert one(conn, dc.user_dn("bob"), ["title"])["title"] == [b"Survives restarts"]


@samba
def test_leftover_samba_from_a_crashed_run_is_killed(samba_clean: SambaDC) -> None:
    """A samba started outside SambaDC (as if its pytest had crashed) gives way on start()."""
    dc = samba_clean
    dc.stop()
    subprocess.run(["samba", "-s", str(dc.smb_conf), "-D"], check=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            dc.connect().search_s("", ldap.SCOPE_BASE)
            break
        except ldap.LDAPError:
            assert time.monotonic() < deadline, "the stray samba did not start"
            time.sleep(0.1)
    stray_pid = int((dc.root / "run" / "samba.pid").read_text())
    dc.start()
    assert dc.pid != stray_pid
    assert not process_runs(stray_pid)
    assert dc.connect().search_s("", ldap.SCOPE_BASE, attrlist=["dsServiceName"])


@samba
def test_port_taken_by_another_server_fails_clearly(samba_clean: SambaDC) -> None:
    dc = samba_clean
    dc.stop()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", 389))
        squatter.listen()
        with pytest.raises(SambaError, match=r"127\.0\.0\.1:389 is already in use by pid"):
            dc.start()
    dc.start()
    assert dc.running


def test_template_key_tracks_the_spec() -> None:
    base = company()
    assert template_key(base) == template_key(company())
    changed = company()
    changed.users[0] = dataclasses.replace(changed.users[0], title="CTO")
    assert template_key(changed) != template_key(base)
