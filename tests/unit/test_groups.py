"""Unit tests of adldap_auth.groups.GroupGraph: nesting, cycles, primary groups, big graphs."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adldap_auth.groups import GroupGraph, StoredNesting, changed_nesting, member_digest
from adldap_auth.mapping import GroupRecord, normalize_dn

DOMAIN_SID = "S-1-5-21-1-2-3"


def group_dn(name: str) -> str:
    return f"CN={name},OU=Groups,DC=example,DC=com"


def user_key(name: str) -> str:
    return normalize_dn(f"CN={name},OU=People,DC=example,DC=com")


def group(name: str, *members: str, rid: int | None = None) -> GroupRecord:
    """A group record; members are user names, or ``group:Name`` for nested groups."""
    keys = [
        normalize_dn(group_dn(m[6:])) if m.startswith("group:") else user_key(m) for m in members
    ]
    return GroupRecord(
        dn=group_dn(name),
        guid=f"guid-{name}",
        name=name,
        fields={"name": name},
        member_keys=keys,
        object_sid=None if rid is None else f"{DOMAIN_SID}-{rid}",
    )


def names(guids) -> set[str]:
    return {g.removeprefix("guid-") for g in guids}


def lab_graph() -> GroupGraph:
    """The lab directory's groups (tests/lab/spec.py): nesting four deep and a cycle."""
    return GroupGraph(
        [
            group("Rocket Team", "alice"),
            group("Engineering", "group:Rocket Team", "bob"),
            group("R&D", "group:Engineering"),
            group("Staff", "group:R&D", "carol", "jdoe"),
            group("Everyone", "group:Staff", "erin", "zoe", "dave"),
            group("Cycle A", "group:Cycle B", "erin"),
            group("Cycle B", "group:Cycle A", "bob"),
            group("Sales", "carol", "dave", "zoe"),
            group("Domain Users", rid=513),
            group("All Domain", "group:Domain Users"),
            group("Empty Group"),
        ]
    )


def test_nesting_four_deep():
    graph = lab_graph()
    assert names(graph.groups_for(user_key("alice"))) == {
        "Rocket Team",
        "Engineering",
        "R&D",
        "Staff",
        "Everyone",
    }
    assert names(graph.ancestors("guid-R&D")) == {"R&D", "Staff", "Everyone"}
    assert names(graph.groups_for(user_key("carol"))) == {"Staff", "Everyone", "Sales"}


def test_lab_expectations_match_the_spec_closure():
    from tests.lab.spec import company

    spec = company()
    graph = GroupGraph([group(g.name, *g.members) for g in spec.groups if g.name != "All Bulk"])
    expected = spec.expected_groups()
    for user in spec.users[:7]:
        got = names(graph.groups_for(user_key(user.key)))
        assert got == expected[user.key] - {"All Bulk"}, user.key


def test_cycle_of_two():
    graph = lab_graph()
    assert names(graph.ancestors("guid-Cycle A")) == {"Cycle A", "Cycle B"}
    assert names(graph.ancestors("guid-Cycle B")) == {"Cycle A", "Cycle B"}
    # bob is in Cycle B (and Engineering), erin in Cycle A (and Everyone): both get both
    assert names(graph.groups_for(user_key("bob"))) == {
        "Cycle A",
        "Cycle B",
        "Engineering",
        "R&D",
        "Staff",
        "Everyone",
    }
    assert names(graph.groups_for(user_key("erin"))) == {"Cycle A", "Cycle B", "Everyone"}


def test_cycle_of_five_with_a_tail_and_a_parent():
    ring = ["G0", "G1", "G2", "G3", "G4"]
    groups = [group(ring[i], f"group:{ring[i - 1]}") for i in range(5)]  # G(i-1) in G(i)
    groups[2].member_keys.append(user_key("ursula"))
    groups.append(group("Top", "group:G3"))
    groups.append(group("Below", "tom"))
    groups[0].member_keys.append(normalize_dn(group_dn("Below")))
    graph = GroupGraph(groups)
    for name in ring:
        assert names(graph.ancestors(f"guid-{name}")) == {*ring, "Top"}
    assert names(graph.groups_for(user_key("ursula"))) == {*ring, "Top"}
    assert names(graph.groups_for(user_key("tom"))) == {*ring, "Top", "Below"}
    assert names(graph.ancestors("guid-Top")) == {"Top"}


def test_self_membership():
    graph = GroupGraph([group("Loop", "group:Loop", "amy")])
    assert names(graph.groups_for(user_key("amy"))) == {"Loop"}
    assert names(graph.ancestors("guid-Loop")) == {"Loop"}


def test_primary_group_and_its_parents():
    graph = lab_graph()
    sid = f"{DOMAIN_SID}-513"
    assert graph.find_by_sid(sid).name == "Domain Users"
    # frank is in no group by member values: only by his primary group
    assert names(graph.groups_for(user_key("frank"), sid)) == {"Domain Users", "All Domain"}
    assert names(graph.groups_above([], sid)) == {"Domain Users", "All Domain"}
    assert names(graph.groups_for(user_key("alice"), sid)) == {
        "Rocket Team",
        "Engineering",
        "R&D",
        "Staff",
        "Everyone",
        "Domain Users",
        "All Domain",
    }
    # unknown primary group SID, or none: no effect
    assert graph.groups_for(user_key("frank"), f"{DOMAIN_SID}-999") == frozenset()
    assert graph.groups_for(user_key("frank")) == frozenset()
    assert graph.find_by_sid(f"{DOMAIN_SID}-999") is None


def test_member_dn_outside_the_graph_is_an_unmatched_user_key():
    outside = normalize_dn("CN=Outside Scope,OU=Elsewhere,DC=example,DC=com")
    record = group("Inside", "amy")
    record.member_keys.append(outside)
    graph = GroupGraph([record])
    assert outside in graph.user_keys()
    assert names(graph.groups_for(outside)) == {"Inside"}
    assert names(graph.groups_for(user_key("amy"))) == {"Inside"}
    assert graph.groups_for(user_key("nobody")) == frozenset()


def test_member_dn_spelling_does_not_matter():
    parent = group("Parent")
    parent.member_keys.append(normalize_dn("cn=child, ou=groups, dc=EXAMPLE, dc=com"))
    graph = GroupGraph([parent, group("Child", "amy")])
    assert names(graph.groups_for(user_key("amy"))) == {"Child", "Parent"}


def test_lookups():
    graph = lab_graph()
    assert len(graph) == 11
    assert "guid-Staff" in graph
    assert graph.by_guid("guid-Staff").name == "Staff"
    assert {r.name for r in graph.records()} == {r.name for r in graph}
    with pytest.raises(KeyError):
        graph.by_guid("guid-Nope")
    with pytest.raises(KeyError):
        graph.ancestors("guid-Nope")
    assert graph.user_keys() == {
        user_key(n) for n in ("alice", "bob", "carol", "jdoe", "erin", "zoe", "dave")
    }
    assert graph.ancestors("guid-Empty Group") == frozenset({"guid-Empty Group"})


def test_duplicate_guid_last_record_wins():
    first = group("Old", "amy")
    second = group("New", "bob")
    second.guid = first.guid
    graph = GroupGraph([first, second])
    assert len(graph) == 1
    assert graph.by_guid(first.guid).name == "New"
    assert graph.groups_for(user_key("amy")) == frozenset()


def test_empty_graph():
    graph = GroupGraph([])
    assert len(graph) == 0
    assert graph.groups_for("x", "S-1-5-21-1-2-3-513") == frozenset()
    assert graph.user_keys() == set()
    assert graph.members_affected_by(["guid-x"]) == set()


def test_members_affected_by():
    graph = lab_graph()
    assert graph.members_affected_by(["guid-Rocket Team"]) == {user_key("alice")}
    assert graph.members_affected_by(["guid-R&D"]) == {user_key("alice"), user_key("bob")}
    assert graph.members_affected_by(["guid-Cycle A"]) == {user_key("bob"), user_key("erin")}
    assert graph.members_affected_by(["guid-Everyone", "guid-unknown"]) == {
        user_key(n) for n in ("alice", "bob", "carol", "jdoe", "erin", "zoe", "dave")
    }
    assert graph.members_affected_by([]) == set()


def test_deep_nesting_needs_no_recursion():
    depth = 2 * sys.getrecursionlimit()
    groups = [group("G0", "deep")]
    groups += [group(f"G{i}", f"group:G{i - 1}") for i in range(1, depth)]
    graph = GroupGraph(reversed(groups))
    assert len(graph.groups_for(user_key("deep"))) == depth
    assert names(graph.ancestors(f"guid-G{depth - 1}")) == {f"G{depth - 1}"}


def test_one_big_cycle_needs_no_recursion():
    size = 3 * sys.getrecursionlimit()
    groups = [group(f"G{i}", f"group:G{(i + 1) % size}") for i in range(size)]
    groups[0].member_keys.append(user_key("amy"))
    graph = GroupGraph(groups)
    result = graph.groups_for(user_key("amy"))
    assert len(result) == size
    assert graph.ancestors("guid-G7") is result  # one component, one shared set


def test_memberuid_keys():
    """posixGroup: member keys are lower-case uids, never group DNs."""
    record = GroupRecord(
        dn="cn=devs,ou=groups,dc=x",
        guid="g1",
        name="devs",
        fields={"name": "devs"},
        member_keys=["jdoe", "alice"],
        object_sid=None,
    )
    graph = GroupGraph([record])
    assert graph.groups_for("jdoe") == frozenset({"g1"})
    assert graph.user_keys() == {"jdoe", "alice"}


# -- property: the closure equals a naive breadth-first search ---------------------------------


def naive_groups(edges: dict[int, set[int]], direct: set[int], primary: int | None) -> set[int]:
    """``edges[g]``: groups that g is a direct member of. Plain BFS, no cleverness."""
    start = set(direct) | ({primary} if primary is not None else set())
    seen: set[int] = set()
    queue = list(start)
    while queue:
        current = queue.pop(0)
        if current in seen:
            continue
        seen.add(current)
        queue.extend(edges.get(current, ()))
    return seen


@st.composite
def random_directory(draw):
    group_count = draw(st.integers(min_value=1, max_value=14))
    user_count = draw(st.integers(min_value=0, max_value=8))
    groups = range(group_count)
    # (child, parent): child is a member of parent; self-loops and cycles allowed
    nesting = draw(st.sets(st.tuples(st.sampled_from(groups), st.sampled_from(groups))))
    memberships = draw(st.sets(st.tuples(st.integers(0, user_count + 1), st.sampled_from(groups))))
    primary = draw(
        st.lists(
            st.one_of(st.none(), st.sampled_from(groups)),
            min_size=user_count + 2,
            max_size=user_count + 2,
        )
    )
    with_sid = draw(st.sets(st.sampled_from(groups)))
    return group_count, user_count, nesting, memberships, primary, with_sid


@settings(max_examples=300, deadline=None)
@given(random_directory())
def test_groups_for_matches_naive_bfs(directory):
    group_count, user_count, nesting, memberships, primary, with_sid = directory
    members: dict[int, list[str]] = {g: [] for g in range(group_count)}
    edges: dict[int, set[int]] = {}
    for child, parent in nesting:
        members[parent].append(normalize_dn(group_dn(f"G{child}")))
        edges.setdefault(child, set()).add(parent)
    for user, parent in memberships:
        members[parent].append(user_key(f"U{user}"))
    records = [
        GroupRecord(
            dn=group_dn(f"G{g}"),
            guid=f"guid-G{g}",
            name=f"G{g}",
            fields={"name": f"G{g}"},
            member_keys=members[g],
            object_sid=f"{DOMAIN_SID}-{1000 + g}" if g in with_sid else None,
        )
        for g in range(group_count)
    ]
    graph = GroupGraph(records)
    for user in range(user_count + 2):  # the last users may be in no group
        direct = {g for u, g in memberships if u == user}
        pg = primary[user]
        sid = f"{DOMAIN_SID}-{1000 + pg}" if pg is not None else None
        usable_pg = pg if pg is not None and pg in with_sid else None
        expected = {f"guid-G{g}" for g in naive_groups(edges, direct, usable_pg)}
        assert graph.groups_for(user_key(f"U{user}"), sid) == expected
        # A login knows the direct groups (read live) and walks up the same graph.
        assert graph.groups_above({f"guid-G{g}" for g in direct}, sid) == expected
    for g in range(group_count):
        expected = {f"guid-G{a}" for a in naive_groups(edges, {g}, None)}
        assert graph.ancestors(f"guid-G{g}") == expected
    # members_affected_by: exactly the users whose closure contains the group
    for g in range(group_count):
        affected = graph.members_affected_by([f"guid-G{g}"])
        for user in range(user_count + 2):
            key = user_key(f"U{user}")
            assert (key in affected) == (f"guid-G{g}" in graph.groups_for(key)), (g, user)


# -- changed_nesting: what an incremental run rechecks ----------------------------------------


def stored(graph: GroupGraph) -> dict:
    """What a batch run would have stored of every group of ``graph``."""
    return {
        record.guid: StoredNesting(record.dn, sorted(record.member_keys))
        for record in graph.records()
    }


def test_changed_nesting_user_added_and_removed_is_only_that_user():
    before = stored(lab_graph())
    after = GroupGraph(
        [group("Staff", "group:R&D", "carol", "frank")]  # jdoe removed, frank added
        + [g for g in lab_graph().records() if g.name != "Staff"]
    )
    moved, keys, unknown = changed_nesting(after, before, ["guid-Staff"])
    assert (moved, unknown) == (set(), set())
    assert keys == {user_key("jdoe"), user_key("frank")}


def test_changed_nesting_nested_group_edge_moves_the_child():
    before = stored(lab_graph())
    records = [g for g in lab_graph().records() if g.name not in ("R&D", "Sales")]
    records += [group("R&D"), group("Sales", "carol", "dave", "zoe", "group:Engineering")]
    after = GroupGraph(records)
    moved, keys, unknown = changed_nesting(after, before, ["guid-R&D", "guid-Sales"])
    assert names(moved) == {"Engineering"}
    assert keys == set() and unknown == set()
    # The users to recheck are those below Engineering, not every member of R&D's parents.
    assert after.members_affected_by(moved) == {user_key("alice"), user_key("bob")}


def test_changed_nesting_unchanged_member_list_moves_nothing():
    graph = lab_graph()
    assert changed_nesting(graph, stored(graph), [r.guid for r in graph.records()]) == (
        set(),
        set(),
        set(),
    )


def test_changed_nesting_unknown_or_new_group_and_renamed_group():
    graph = lab_graph()
    before = stored(graph)
    before["guid-Engineering"] = StoredNesting(group_dn("Engineering"), None)  # older version
    del before["guid-Sales"]  # new in the database
    before["guid-R&D"] = StoredNesting(group_dn("Old R&D"), before["guid-R&D"].member_keys)
    moved, keys, unknown = changed_nesting(
        graph, before, ["guid-Engineering", "guid-Sales", "guid-R&D", "guid-gone"]
    )
    assert names(moved) == {"Engineering", "Sales", "R&D"}
    assert names(unknown) == {"Engineering", "Sales"}
    assert keys == set()


def test_nesting_is_sorted_members_digest_and_parents():
    graph = lab_graph()
    nesting = graph.nesting()
    engineering = nesting["guid-Engineering"]
    assert engineering.member_keys == sorted(engineering.member_keys)
    assert engineering.digest == member_digest(reversed(engineering.member_keys))
    assert names(engineering.parent_guids) == {"R&D"}
    assert names(nesting["guid-Cycle A"].parent_guids) == {"Cycle B"}
    assert nesting["guid-Everyone"].parent_guids == []
    assert member_digest(["a", "b"]) != member_digest(["a", "c"])


def test_a_member_key_is_one_string_in_every_group_listing_it():
    """At a million users, one copy per listing group would be most of the graph's memory."""
    sales, staff = group("Sales", "carol", "dave"), group("Staff", "carol")
    assert sales.member_keys[0] is not staff.member_keys[0]  # two equal strings read apart
    graph = GroupGraph([sales, staff])
    carol = [graph.by_guid(g).member_keys[0] for g in ("guid-Sales", "guid-Staff")]
    assert carol[0] == user_key("carol") and carol[0] is carol[1]
    assert names(graph.groups_for(user_key("carol"))) == {"Sales", "Staff"}
    assert graph.nesting_of("guid-Sales") == graph.nesting()["guid-Sales"]
