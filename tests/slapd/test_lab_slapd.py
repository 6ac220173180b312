"""The OpenLDAP lab works: layout, loading paths, limits, TLS, outages, generator, changes."""

from __future__ import annotations

import collections
from typing import Any

import ldap
import pytest
from ldap.controls import SimplePagedResultsControl

from tests.lab import ldif
from tests.lab.certs import make_wrong_ca
from tests.lab.generator import mutate, synthetic
from tests.lab.slapd import LabSlapd
from tests.lab.spec import LAB_PASSWORD, DirectorySpec, GroupSpec, UserSpec, company

#: Attributes compared between servers (entryUUID differs: random online, fixed offline).
DUMPED = ["objectClass", "uid", "cn", "sn", "givenName", "mail", "title", "department",
          "departmentNumber", "userAccountControl", "jpegPhoto", "userPassword", "member",
          "memberOf", "description", "ou"]  # fmt: skip


def paged_search(
    conn: Any, base: str, filterstr: str, attrs: list[str] | None = None, page_size: int = 200
) -> tuple[list[tuple[str, dict[str, list[bytes]]]], int]:
    """All results of a paged search, and the number of pages."""
    control = SimplePagedResultsControl(True, size=page_size, cookie=b"")
    results, pages = [], 0
    while True:
        msgid = conn.search_ext(base, ldap.SCOPE_SUBTREE, filterstr, attrs, serverctrls=[control])
        _, data, _, controls = conn.result3(msgid)
        pages += 1
        results.extend((dn, entry) for dn, entry in data if dn is not None)
        cookie = next(c.cookie for c in controls if c.controlType == control.controlType)
        if not cookie:
            return results, pages
        control.cookie = cookie


def dump(server: LabSlapd) -> dict[str, dict[str, list[bytes]]]:
    """Every entry under the suffix with the attributes in DUMPED, values sorted."""
    conn = server.admin_connection()
    try:
        entries = conn.search_s(server.base_dn, ldap.SCOPE_SUBTREE, "(objectClass=*)", DUMPED)
    finally:
        conn.unbind_s()
    return {dn.lower(): {k: sorted(v) for k, v in attrs.items()} for dn, attrs in entries}


# -- the session lab -----------------------------------------------------------------------


def test_lab_holds_every_user_and_group_of_the_company(slapd_lab: LabSlapd) -> None:
    spec = company()
    conn = slapd_lab.reader_connection()
    users, _ = paged_search(conn, ldif.PEOPLE_DN, "(objectClass=inetOrgPerson)", ["uid"])
    groups, _ = paged_search(conn, ldif.GROUPS_DN, "(objectClass=groupOfNames)", ["cn", "member"])
    assert sorted(e["uid"][0].decode() for _, e in users) == sorted(u.key for u in spec.users)
    members = {e["cn"][0].decode(): {m.decode() for m in e["member"]} for _, e in groups}
    assert members == {
        g.name: {slapd_lab.user_dn(m) if ":" not in m else slapd_lab.group_dn(m[6:])
                 for m in g.members} or {""}
        for g in spec.groups
    }  # fmt: skip
    assert len(members["All Bulk"]) == 1601
    assert members["Empty Group"] == {ldif.EMPTY_MEMBER}


def test_lab_user_entry_carries_profile_photo_and_memberof(slapd_lab: LabSlapd) -> None:
    conn = slapd_lab.reader_connection()
    [(dn, attrs)] = conn.search_s(
        slapd_lab.user_dn("alice"), ldap.SCOPE_BASE, attrlist=["*", "memberOf", "entryUUID"]
    )
    alice = company().user("alice")
    assert dn == "uid=alice,ou=Engineering,ou=People,dc=example,dc=test"
    assert attrs["givenName"] == [b"Alice"] and attrs["mail"] == [b"alice@example.test"]
    assert attrs["department"] == attrs["departmentNumber"] == [b"Engineering"]
    assert attrs["title"] == [b"Engineer"] and attrs["userAccountControl"] == [b"512"]
    assert attrs["jpegPhoto"] == [alice.photo]
    assert "userPassword" not in attrs  # the reader cannot read passwords
    assert attrs["memberOf"] == [slapd_lab.group_dn("Rocket Team").encode()]
    assert attrs["entryUUID"] == [ldif.entry_uuid("user", "alice")]
    zoe = conn.search_s(slapd_lab.user_dn("zoe"), ldap.SCOPE_BASE, attrlist=["givenName", "sn"])
    assert zoe[0][1] == {"givenName": ["Zoë".encode()], "sn": ["Zäller".encode()]}


def test_disabled_users_match_the_ad_filter_and_cannot_bind(slapd_lab: LabSlapd) -> None:
    conn = slapd_lab.reader_connection()
    found = conn.search_s(ldif.PEOPLE_DN, ldap.SCOPE_SUBTREE, ldif.DISABLED_FILTER, ["uid"])
    assert [e["uid"] for _, e in found] == [[b"dave"]]
    with pytest.raises(ldap.INVALID_CREDENTIALS):
        slapd_lab.connect(slapd_lab.user_dn("dave"), LAB_PASSWORD)
    with pytest.raises(ldap.INVALID_CREDENTIALS):
        slapd_lab.connect(slapd_lab.user_dn("alice"), "wrong")
    alice = slapd_lab.connect(slapd_lab.user_dn("alice"), LAB_PASSWORD)
    assert alice.whoami_s() == "dn:" + slapd_lab.user_dn("alice")


def test_anonymous_sees_the_root_dse_but_no_entries(slapd_lab: LabSlapd) -> None:
    conn = slapd_lab.connect()
    [(_, root)] = conn.search_s("", ldap.SCOPE_BASE, attrlist=["namingContexts"])
    assert root["namingContexts"] == [ldif.BASE_DN.encode()]
    with pytest.raises(ldap.NO_SUCH_OBJECT):
        conn.search_s(ldif.BASE_DN, ldap.SCOPE_SUBTREE, "(uid=alice)")


def test_tls_verifies_against_the_lab_ca(slapd_lab: LabSlapd, tmp_path: Any) -> None:
    assert slapd_lab.ca_file and slapd_lab.ldaps_uri
    who = "dn:" + ldif.READER_DN
    started = slapd_lab.connect(ldif.READER_DN, ldif.READER_PASSWORD, start_tls=True)
    assert started.whoami_s() == who
    ldaps = slapd_lab.connect(ldif.READER_DN, ldif.READER_PASSWORD, uri=slapd_lab.ldaps_uri)
    assert ldaps.whoami_s() == who
    wrong = str(make_wrong_ca(tmp_path))
    with pytest.raises((ldap.CONNECT_ERROR, ldap.SERVER_DOWN)):
        slapd_lab.connect(ldif.READER_DN, ldif.READER_PASSWORD, start_tls=True, ca_file=wrong)
    with pytest.raises((ldap.CONNECT_ERROR, ldap.SERVER_DOWN)):
        slapd_lab.connect(
            ldif.READER_DN, ldif.READER_PASSWORD, uri=slapd_lab.ldaps_uri, ca_file=wrong
        )


def test_sync_settings_describe_the_layout(slapd_lab: LabSlapd) -> None:
    settings = slapd_lab.sync_settings()
    assert settings["LDAP_SYNC_BIND_URI"] == slapd_lab.uri
    assert settings["LDAP_SYNC_BIND_DN"] == slapd_lab.reader_dn == ldif.READER_DN
    assert settings["LDAP_SYNC_USER_FILTER"] == "(objectClass=inetOrgPerson)"
    assert settings["LDAP_SYNC_IDENTITY_ATTRIBUTE"] == "entryUUID"
    conn = slapd_lab.connect(settings["LDAP_SYNC_BIND_DN"], settings["LDAP_SYNC_BIND_PASS"])
    users = conn.search_s(
        settings["LDAP_SYNC_USER_SEARCH"], ldap.SCOPE_SUBTREE, settings["LDAP_SYNC_USER_FILTER"]
    )
    assert len(users) == len(slapd_lab.spec.users)
    since = settings["LDAP_SYNC_USER_FILTER_INCREMENTAL"].replace("?", "19700101000000Z")
    assert len(conn.search_s(settings["LDAP_SYNC_USER_SEARCH"], ldap.SCOPE_SUBTREE, since)) == len(
        users
    )
    assert slapd_lab.sync_settings("ldaps")["LDAP_SYNC_BIND_URI"] == slapd_lab.ldaps_uri
    starttls = slapd_lab.sync_settings("starttls")
    assert starttls["LDAP_SYNC_START_TLS"] and starttls["LDAP_SYNC_CA_FILE"] == slapd_lab.ca_file


def test_access_log_counts_search_operations(slapd_lab: LabSlapd) -> None:
    conn = slapd_lab.reader_connection()
    mark = slapd_lab.log_position()
    _, pages = paged_search(conn, ldif.PEOPLE_DN, "(uid=bulk00*)", ["uid"], page_size=40)
    searches = slapd_lab.searches(since=mark)
    assert pages == 3  # 100 bulk users in pages of 40
    assert [(s.base, s.filter) for s in searches] == [(ldif.PEOPLE_DN, "(uid=bulk00*)")] * 3


# -- new servers ---------------------------------------------------------------------------


def test_synthetic_directory_loads_offline_and_pages_every_entry_once(make_slapd: Any) -> None:
    spec = synthetic(users=2500, groups=120, seed=5)
    server = make_slapd(spec)
    conn = server.reader_connection()
    entries, pages = paged_search(conn, server.base_dn, "(objectClass=*)", ["entryUUID", "uid"])
    dns = collections.Counter(dn.lower() for dn, _ in entries)
    assert max(dns.values()) == 1
    ous = {u.ou for u in spec.users}
    assert len(dns) == 2500 + 120 + len(ous) + 4  # base, People, Groups, reader
    assert pages == -(-len(dns) // 200)
    assert {e["uid"][0].decode() for _, e in entries if "uid" in e} == {u.key for u in spec.users}
    uuids = [e["entryUUID"][0] for _, e in entries]
    assert len(uuids) == len(set(uuids)) == len(dns)


def test_sizelimit_caps_unpaged_searches_only(make_slapd: Any) -> None:
    server = make_slapd(synthetic(users=300, groups=10, seed=1), sizelimit=100)
    conn = server.reader_connection()
    with pytest.raises(ldap.SIZELIMIT_EXCEEDED):
        conn.search_s(ldif.PEOPLE_DN, ldap.SCOPE_SUBTREE, "(objectClass=inetOrgPerson)", ["uid"])
    entries, _ = paged_search(conn, ldif.PEOPLE_DN, "(objectClass=inetOrgPerson)", ["uid"], 50)
    assert len(entries) == 300
    admin = server.admin_connection()  # the rootdn has no limits
    assert len(admin.search_s(ldif.PEOPLE_DN, ldap.SCOPE_SUBTREE, "(uid=*)", ["uid"])) == 300
    server.set_sizelimit(None)
    assert len(conn.search_s(ldif.PEOPLE_DN, ldap.SCOPE_SUBTREE, "(uid=*)", ["uid"])) == 300


def test_online_load_equals_offline_load(make_slapd: Any) -> None:
    spec = synthetic(users=200, groups=30, seed=2, cycles=2, passwords=3)
    offline, online = make_slapd(spec), make_slapd(spec, offline=False)
    assert dump(online) == dump(offline)  # memberOf written by slapadd == by the overlay


def test_stop_and_start_keep_the_data(make_slapd: Any) -> None:
    server = make_slapd(synthetic(users=20, groups=3, seed=1), access_log=False)
    server.stop()
    with pytest.raises(ldap.SERVER_DOWN):
        server.connect(server.reader_dn, server.reader_password, timeout=1)
    server.start()
    conn = server.reader_connection()
    assert len(conn.search_s(ldif.PEOPLE_DN, ldap.SCOPE_SUBTREE, "(uid=*)", ["1.1"])) == 20
    server.restart()
    assert server.reader_connection().whoami_s() == "dn:" + ldif.READER_DN


def test_empty_server_has_base_entries_and_reader(slapd_fresh: LabSlapd) -> None:
    conn = slapd_fresh.reader_connection()
    entries = conn.search_s(slapd_fresh.base_dn, ldap.SCOPE_SUBTREE, "(objectClass=*)", ["1.1"])
    assert sorted(dn for dn, _ in entries) == sorted(dn for dn, _ in ldif.base_entries())


@pytest.mark.parametrize("slapd_fresh", [synthetic(users=30, groups=4, seed=9)], indirect=True)
def test_slapd_fresh_takes_a_spec_by_indirect_parametrization(slapd_fresh: LabSlapd) -> None:
    key = slapd_fresh.spec.users[0].key
    conn = slapd_fresh.reader_connection()
    assert conn.search_s(slapd_fresh.user_dn(key), ldap.SCOPE_BASE, attrlist=["uid"])


@pytest.mark.parametrize("overlays", [("memberof",), ("memberof", "refint"), ("refint",), ()])
def test_applying_changes_gives_the_same_directory_as_loading_the_new_spec(
    make_slapd: Any, overlays: tuple[str, ...]
) -> None:
    old = synthetic(users=400, groups=40, seed=4, cycles=1, passwords=5)
    new, _ = mutate(old, fraction_users=0.1, fraction_memberships=0.1, add_users=5,
                    remove_users=5, seed=8)  # fmt: skip
    changed = make_slapd(old, overlays=overlays, access_log=False)
    changed.apply(old, new)
    assert changed.spec is new
    assert dump(changed) == dump(make_slapd(new, overlays=overlays, access_log=False))


@pytest.mark.parametrize(
    "old", [synthetic(5, 0), synthetic(3, 20, cycles=2), synthetic(10, 1, cycles=1), company()]
)
def test_applying_changes_to_small_or_odd_directories(make_slapd: Any, old: DirectorySpec) -> None:
    """Groups that become empty get the empty member; OUs that become empty go."""
    new, _ = mutate(old, 0.5, 0.5, remove_users=len(old.users) // 2, add_users=2)
    changed = make_slapd(old, access_log=False)
    changed.apply(old, new)
    assert dump(changed) == dump(make_slapd(new, access_log=False))


def test_changes_ldif_applies_with_ldapmodify(make_slapd: Any) -> None:
    old = synthetic(users=100, groups=12, seed=6)
    new, _ = mutate(old, fraction_users=0.2, fraction_memberships=0.2, add_users=2,
                    remove_users=2, seed=2)  # fmt: skip
    server = make_slapd(old, access_log=False)
    server.ldapmodify(ldif.changes_ldif(server.operations(old, new)).decode())
    assert dump(server) == dump(make_slapd(new, access_log=False))


# -- generator and spec --------------------------------------------------------------------


def test_synthetic_is_deterministic() -> None:
    assert synthetic(500, 60, seed=3, cycles=2) == synthetic(500, 60, seed=3, cycles=2)
    assert synthetic(500, 60, seed=3) != synthetic(500, 60, seed=4)


def test_synthetic_shape() -> None:
    spec = synthetic(users=2000, groups=200, depth=4, groups_per_user=5, photo_ratio=0.2)
    assert len(spec.users) == 2000 and len(spec.groups) == 200
    assert len({u.key for u in spec.users}) == 2000
    parents = collections.defaultdict(list)
    for group in spec.groups:
        for member in group.members:
            parents[member].append(group.name)
    levels = collections.Counter(g.name.split()[0] for g in spec.groups)
    assert sorted(levels) == ["L0", "L1", "L2", "L3"]
    assert levels["L0"] < levels["L1"] < levels["L2"] < levels["L3"]
    for group in spec.groups:
        count = len(parents["group:" + group.name])
        assert count == 0 if group.name.startswith("L0") else 1 <= count <= 2
    direct = [len(parents[u.key]) for u in spec.users]
    assert 4.5 <= sum(direct) / len(direct) <= 5.5
    photos = [u.photo for u in spec.users if u.photo]
    assert 0.15 <= len(photos) / 2000 <= 0.25
    assert len({id(p) for p in photos}) <= 8  # a few shared images, not one per user
    assert 5 <= sum(u.disabled for u in spec.users) <= 50
    deepest = max(len(groups) for groups in spec.expected_groups().values())
    assert deepest >= 4  # a leaf group and its three ancestors at least


def test_synthetic_cycles_are_reachable_loops() -> None:
    spec = synthetic(users=50, groups=20, seed=1, cycles=3)
    children = {g.name: {m[6:] for m in g.members if m.startswith("group:")} for g in spec.groups}

    def reaches(start: str, goal: str) -> bool:
        seen, queue = set(), list(children[start])
        while queue:
            name = queue.pop()
            if name == goal:
                return True
            if name not in seen:
                seen.add(name)
                queue.extend(children[name])
        return False

    assert sum(reaches(name, name) for name in children) >= 2


def test_mutate_changes_about_the_asked_fraction_and_leaves_the_original() -> None:
    spec = synthetic(users=2000, groups=100, seed=1)
    pristine = synthetic(users=2000, groups=100, seed=1)
    new, changes = mutate(spec, fraction_users=0.05, fraction_memberships=0.02, seed=3)
    assert spec == pristine
    assert len(changes.users_modified) == 100
    old_users = {u.key: u for u in spec.users}
    assert sum(old_users[u.key] != u for u in new.users) == 100
    total = sum(1 for g in spec.groups for m in g.members if not m.startswith("group:"))
    moved = len(changes.memberships_added) + len(changes.memberships_removed)
    assert moved == round(0.02 * total)

    def pairs(s: DirectorySpec) -> set[tuple[str, str]]:
        return {(g.name, m) for g in s.groups for m in g.members}

    assert pairs(new) - pairs(spec) == set(changes.memberships_added)
    assert pairs(spec) - pairs(new) == set(changes.memberships_removed)
    assert mutate(spec, 0.05, 0.02, seed=3)[0] == new


def test_mutate_adds_and_removes_users_with_their_memberships() -> None:
    spec = synthetic(users=100, groups=10, seed=1)
    new, changes = mutate(spec, 0, 0, add_users=3, remove_users=4, seed=5)
    keys = {u.key for u in new.users}
    assert len(new.users) == 99 and set(changes.users_added) <= keys
    assert not set(changes.users_removed) & keys
    members = {m for g in new.groups for m in g.members}
    assert not set(changes.users_removed) & members
    assert set(changes.users_added) <= members
    assert changes.users_changed == {*changes.users_added, *changes.users_removed}


def test_expected_groups_of_a_tiny_spec() -> None:
    spec = DirectorySpec(
        users=[UserSpec("ann", "Ann", "A"), UserSpec("bo", "Bo", "B"), UserSpec("cy", "Cy", "C")],
        groups=[
            GroupSpec("Leaf", members=["ann"]),
            GroupSpec("Mid", members=["group:Leaf", "bo"]),
            GroupSpec("Top", members=["group:Mid"]),
            GroupSpec("X", members=["group:Y", "cy"]),
            GroupSpec("Y", members=["group:X"]),
            GroupSpec("Empty"),
        ],
    )
    assert spec.expected_groups() == {
        "ann": {"Leaf", "Mid", "Top"},
        "bo": {"Mid", "Top"},
        "cy": {"X", "Y"},
    }


def test_company_expected_groups() -> None:
    groups = company().expected_groups()
    assert groups["alice"] == {"Rocket Team", "Engineering", "R&D", "Staff", "Everyone"}
    assert groups["bob"] == {"Engineering", "R&D", "Staff", "Everyone", "Cycle A", "Cycle B"}
    assert groups["bulk0000"] == {"All Bulk"}
