"""The DirSync reader against the lab's Samba AD DC: first reads, deltas, deletions, rights.

Expectations come from the lab spec and plain python-ldap searches, never from the reader;
the assertions state what Samba 4.17 sends (deltas, cleared attributes, tombstones, refusals).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import ldap
import pytest
from ldap.controls import SimplePagedResultsControl
from ldap.dn import str2dn

from adldap_auth.directory import DirectoryError
from adldap_auth.directory.connection import ConnectionConfig, DirectorySession
from adldap_auth.directory.dirsync import (
    DIRSYNC_OID,
    LDAP_DIRSYNC_INCREMENTAL_VALUES,
    LDAP_DIRSYNC_OBJECT_SECURITY,
    DirSyncBatch,
    DirSyncCookieRejected,
    DirSyncRequestControl,
    DirSyncResponseControl,
    DirSyncUnavailable,
    read_changes,
)
from tests.lab.samba import SambaDC

#: People and groups; tombstones lose objectCategory, so the reader must add (isDeleted=TRUE).
FILTER = "(|(&(objectCategory=person)(objectClass=user))(objectClass=group))"
ATTRS = ["sAMAccountName", "title", "department", "member"]
OBJECT_SECURITY = LDAP_DIRSYNC_INCREMENTAL_VALUES | LDAP_DIRSYNC_OBJECT_SECURITY


def norm(dn: str | bytes) -> tuple:
    if isinstance(dn, bytes):
        dn = dn.decode()
    return tuple(tuple((a.lower(), v.lower()) for a, v, _ in rdn) for rdn in str2dn(dn))


@contextlib.contextmanager
def session(dc: SambaDC, who: str, password: str) -> Iterator[DirectorySession]:
    with DirectorySession.open(ConnectionConfig((dc.uri,), who, password)) as opened:
        yield opened


def admin(dc: SambaDC) -> contextlib.AbstractContextManager[DirectorySession]:
    return session(dc, dc.admin_dn, dc.admin_password)


def reader(dc: SambaDC) -> contextlib.AbstractContextManager[DirectorySession]:
    return session(dc, dc.reader_dn, dc.reader_password)


def in_scope(dc: SambaDC) -> dict[str, dict[str, list[bytes]]]:
    """objectGUID -> attributes of every entry matching FILTER, by a plain paged search."""
    conn = dc.reader_connection()
    page = SimplePagedResultsControl(True, size=500, cookie=b"")
    found: dict[str, dict[str, list[bytes]]] = {}
    while True:
        msgid = conn.search_ext(
            dc.base_dn, ldap.SCOPE_SUBTREE, FILTER, [*ATTRS, "objectGUID"], serverctrls=[page]
        )
        _type, data, _msgid, controls = conn.result3(msgid)
        for dn, attrs in data:
            if dn is not None:
                found[str(uuid.UUID(bytes_le=attrs["objectGUID"][0]))] = {
                    "dn": [dn.encode()],
                    **attrs,
                }
        page.cookie = next(c.cookie for c in controls if c.controlType == page.controlType)
        if not page.cookie:
            return found


def invocation_id(dc: SambaDC) -> str:
    conn = dc.reader_connection()
    service = conn.search_s("", ldap.SCOPE_BASE, attrlist=["dsServiceName"])[0][1]
    ntds = conn.search_s(
        service["dsServiceName"][0].decode(), ldap.SCOPE_BASE, attrlist=["invocationId"]
    )
    return str(uuid.UUID(bytes_le=ntds[0][1]["invocationId"][0]))


def guids_by_dn(batch: DirSyncBatch) -> dict[tuple, str]:
    return {norm(entry.dn): entry.guid for entry in batch.entries}


# -- first reads -----------------------------------------------------------------------------


def test_first_read_returns_every_user_and_group_with_whole_member_lists(samba_dc: SambaDC) -> None:
    expected = in_scope(samba_dc)
    with admin(samba_dc) as opened:
        batch = read_changes(opened, samba_dc.base_dn, FILTER, ATTRS, None)
    assert (batch.complete, batch.deleted, batch.searches) == (True, [], 1)
    assert batch.invocation_id == invocation_id(samba_dc)
    assert batch.cookie.startswith(b"MSDS")
    entries = {entry.guid: entry for entry in batch.entries}
    assert set(entries) == set(expected)
    assert len(entries) > len(samba_dc.spec.users) + len(samba_dc.spec.groups)  # and built-ins
    names = {entry.changed["samaccountname"][0].decode() for entry in batch.entries}
    assert {user.key for user in samba_dc.spec.users} <= names
    assert {group.name for group in samba_dc.spec.groups} <= names
    for guid, entry in entries.items():
        assert norm(entry.dn) == norm(expected[guid]["dn"][0])
        assert "instancetype" not in entry.changed and "objectguid" not in entry.changed
        assert "member" not in entry.changed and entry.removed == {}
        members = sorted(map(norm, entry.added.get("member", [])))
        assert members == sorted(map(norm, expected[guid].get("member", []))), entry.dn
    all_bulk = entries[guids_by_dn(batch)[norm(samba_dc.group_dn("All Bulk"))]]
    assert len(all_bulk.added["member"]) == 1601  # past MaxValRange, not ranged by DirSync


def test_an_unchanged_directory_returns_nothing(samba_dc: SambaDC) -> None:
    with admin(samba_dc) as opened:
        first = read_changes(opened, samba_dc.base_dn, FILTER, ATTRS, None)
        again = read_changes(opened, samba_dc.base_dn, FILTER, ATTRS, first.cookie)
    assert (again.entries, again.deleted, again.complete) == ([], [], False)
    assert again.invocation_id == first.invocation_id and again.cookie


# -- changes ---------------------------------------------------------------------------------


def test_a_read_with_the_cookie_returns_exactly_the_changes(samba_clean: SambaDC) -> None:
    dc = samba_clean
    new_dn = f"CN=Nina New,{dc.lab_dn}"
    alice, bob, zoe = (dc.user_dn(key) for key in ("alice", "bob", "zoe"))
    rocket = dc.group_dn("Rocket Team")
    with admin(dc) as opened:
        first = read_changes(opened, dc.base_dn, FILTER, ATTRS, None)
        guid = guids_by_dn(first)
        conn = dc.admin_connection()
        conn.add_s(new_dn, [
            ("objectClass", [b"user"]), ("sAMAccountName", [b"nnew"]),
            ("userAccountControl", [b"546"]), ("title", [b"Intern"]),
        ])  # fmt: skip
        conn.modify_s(bob, [(ldap.MOD_REPLACE, "title", [b"Principal"])])
        conn.modify_s(zoe, [(ldap.MOD_DELETE, "department", None)])
        conn.modify_s(rocket, [(ldap.MOD_ADD, "member", [bob.encode()])])
        conn.modify_s(rocket, [(ldap.MOD_DELETE, "member", [alice.encode()])])
        conn.delete_s(dc.user_dn("dave"))  # a member of Everyone and Sales
        second = read_changes(opened, dc.base_dn, FILTER, ATTRS, first.cookie)
        whole_lists = read_changes(opened, dc.base_dn, FILTER, ATTRS, first.cookie, flags=0)
        third = read_changes(opened, dc.base_dn, FILTER, ATTRS, second.cookie)

    assert second.deleted == [guid[norm(dc.user_dn("dave"))]]
    assert (second.complete, second.invocation_id) == (False, first.invocation_id)
    changes = {norm(entry.dn): entry for entry in second.entries}
    # Dave's groups lose him too, but Samba does not report links to a deleted object.
    assert set(changes) == {norm(new_dn), norm(bob), norm(zoe), norm(rocket)}
    created = changes[norm(new_dn)]
    assert created.guid not in guid.values()
    assert (created.changed, created.added, created.removed) == (
        {"samaccountname": [b"nnew"], "title": [b"Intern"]},
        {},
        {},
    )
    assert changes[norm(bob)].guid == guid[norm(bob)]
    assert changes[norm(bob)].changed == {"title": [b"Principal"]}
    assert changes[norm(zoe)].changed == {"department": []}  # cleared
    group = changes[norm(rocket)]
    assert group.guid == guid[norm(rocket)] and group.changed == {}
    assert [norm(dn) for dn in group.added["member"]] == [norm(bob)]
    assert [norm(dn) for dn in group.removed["member"]] == [norm(alice)]
    assert set(group.added) == set(group.removed) == {"member"}

    # Without LDAP_DIRSYNC_INCREMENTAL_VALUES a changed member list comes whole.
    whole = {norm(entry.dn): entry for entry in whole_lists.entries}[norm(rocket)]
    assert [norm(dn) for dn in whole.changed["member"]] == [norm(bob)]
    assert whole.added == whole.removed == {}

    assert (third.entries, third.deleted) == ([], [])


# -- rights ----------------------------------------------------------------------------------


def test_an_ordinary_account_is_refused_unless_it_asks_for_object_security(
    samba_dc: SambaDC,
) -> None:
    with reader(samba_dc) as opened:
        with pytest.raises(DirSyncUnavailable) as refused:
            read_changes(opened, samba_dc.base_dn, FILTER, ATTRS, None)
        batch = read_changes(opened, samba_dc.base_dn, FILTER, ATTRS, None, flags=OBJECT_SECURITY)
    assert "Replicating Directory Changes" in str(refused.value)
    assert "docs/ad-permissions.md" in str(refused.value)
    assert samba_dc.reader_dn in str(refused.value)
    assert {entry.guid for entry in batch.entries} == set(in_scope(samba_dc))


def test_object_security_shows_deletions_only_with_list_rights_on_deleted_objects(
    samba_clean: SambaDC,
) -> None:
    """Samba hides tombstones from a non-admin's DirSync (with or without the replication
    right) until it may list and read CN=Deleted Objects."""
    dc = samba_clean
    with reader(dc) as opened:
        first = read_changes(opened, dc.base_dn, FILTER, ATTRS, None, flags=OBJECT_SECURITY)
        dave = guids_by_dn(first)[norm(dc.user_dn("dave"))]
        dc.admin_connection().delete_s(dc.user_dn("dave"))
        hidden = read_changes(
            opened, dc.base_dn, FILTER, ATTRS, first.cookie, flags=OBJECT_SECURITY
        )
        assert (hidden.entries, hidden.deleted) == ([], [])

        dc.grant_deleted_objects(dc.reader_dn)
        shown = read_changes(opened, dc.base_dn, FILTER, ATTRS, first.cookie, flags=OBJECT_SECURITY)
    assert (shown.entries, shown.deleted) == ([], [dave])


def test_the_documented_grant_lets_the_reader_use_dirsync(samba_clean: SambaDC) -> None:
    """docs/ad-permissions.md: ``samba-tool dsacl set --sddl=(OA;;CR;<right>;;<SID>)``."""
    dc = samba_clean
    with reader(dc) as opened, pytest.raises(DirSyncUnavailable):
        read_changes(opened, dc.base_dn, FILTER, ATTRS, None)
    dc.grant_replication_right(dc.reader_dn)
    with reader(dc) as opened:
        batch = read_changes(opened, dc.base_dn, FILTER, ATTRS, None)
    assert {entry.guid for entry in batch.entries} == set(in_scope(dc))


# -- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize("cookie", [b"garbage", b"MSDS\x03\x00\x00\x00"])
def test_a_garbage_cookie_is_refused_clearly(samba_dc: SambaDC, cookie: bytes) -> None:
    with admin(samba_dc) as opened, pytest.raises(DirSyncCookieRejected, match="without a cookie"):
        read_changes(opened, samba_dc.base_dn, FILTER, ATTRS, cookie)


def test_a_base_below_the_naming_context_is_refused(samba_dc: SambaDC) -> None:
    with admin(samba_dc) as opened, pytest.raises(DirectoryError, match="naming context") as error:
        read_changes(opened, samba_dc.lab_dn, FILTER, ATTRS, None)
    assert not isinstance(error.value, DirSyncUnavailable)


def test_python_ldap_drops_the_response_control_it_has_no_class_for(samba_dc: SambaDC) -> None:
    """Why the reader passes its response class to result3(): Samba sends the control
    non-critical, and python-ldap silently drops a response control it does not know."""
    conn = samba_dc.connect()
    conn.simple_bind_s(samba_dc.admin_dn, samba_dc.admin_password)
    search = (samba_dc.base_dn, ldap.SCOPE_SUBTREE, "(sAMAccountName=alice)", ["cn"])
    control = DirSyncRequestControl(LDAP_DIRSYNC_INCREMENTAL_VALUES)
    msgid = conn.search_ext(*search, serverctrls=[control])
    assert conn.result3(msgid)[3] == []
    msgid = conn.search_ext(*search, serverctrls=[control])
    controls = conn.result3(msgid, resp_ctrl_classes={DIRSYNC_OID: DirSyncResponseControl})[3]
    assert [(c.controlType, c.criticality, c.more_results) for c in controls] == [
        (DIRSYNC_OID, False, False)
    ]
