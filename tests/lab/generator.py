"""Deterministic synthetic directories, and deterministic changes to them.

:func:`synthetic` builds a company of any size (benchmarks use 100,000 users in 10,000 groups)
as a :class:`~tests.lab.spec.DirectorySpec`; :func:`mutate` returns a changed copy and the
:class:`Changes`, for incremental-sync tests and benchmarks. Both depend only on their
arguments (a seeded ``random.Random``), so the same call gives the same spec on every
machine. Speed matters more than variety: photos are a handful of JPEGs shared by many users,
and specs share unchanged :class:`UserSpec` objects (treat specs as read-only).
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import random
from dataclasses import dataclass, field

from tests.lab.spec import LAB_PASSWORD, DirectorySpec, GroupSpec, UserSpec, jpeg

__all__ = ["Changes", "mutate", "synthetic"]

DEPARTMENTS = (
    "Engineering", "Sales", "Marketing", "Finance", "Human Resources", "IT", "Legal",
    "Operations", "Support", "Research",
)  # fmt: skip
TITLES = ("Engineer", "Manager", "Analyst", "Consultant", "Director", "Assistant", "Specialist")
GIVEN_NAMES = (
    "Anna", "Ben", "Chloé", "David", "Emma", "Felix", "Grace", "Hugo", "Ines", "Jonas",
    "Karin", "Liam", "Maja", "Noah", "Olivia", "Paul", "Quinn", "Rosa", "Søren", "Tom",
    "Uma", "Victor", "Wen", "Xavier", "Yara", "Zoë", "Jürgen", "Åsa",
)  # fmt: skip
SURNAMES = (
    "Smith", "Müller", "García", "Rossi", "Dubois", "Nowak", "Jensen", "Silva", "Kim", "Lee",
    "O'Brien", "Novák", "Öztürk", "Haddad", "Tanaka", "Kowalski", "Larsen", "Moreau",
)  # fmt: skip
DISABLED_RATIO = 0.01
DISTINCT_PHOTOS = 8
LEAF_RATIO = 0.9  # share of a user's direct groups that are leaf groups
SECOND_PARENT_RATIO = 0.25  # share of non-top groups with two parent groups
GROUP_PREFIX = "group:"


@functools.cache
def _photo(number: int) -> bytes:
    return jpeg(1000 + number)


def _level_sizes(groups: int, depth: int) -> list[int]:
    """Groups per nesting level, top first, each level three times the one above."""
    depth = max(1, min(depth, groups))
    weights = [3**level for level in range(depth)]
    sizes = [max(1, groups * weight // sum(weights)) for weight in weights[:-1]]
    return [*sizes, groups - sum(sizes)]


def synthetic(
    users: int,
    groups: int,
    depth: int = 4,
    groups_per_user: int = 5,
    photo_ratio: float = 0.2,
    seed: int = 0,
    cycles: int = 0,
    passwords: int = 0,
) -> DirectorySpec:
    """A company of ``users`` people in ``groups`` groups nested ``depth`` levels deep.

    Groups form a forest: each group below the top level is a member of one parent (a
    quarter of them of two) on the level above. Each user is a direct member of about
    ``groups_per_user`` groups (90% leaf groups). ``cycles`` adds that many back edges (a
    group becomes a member of one of its descendants). About ``photo_ratio`` of the users
    have a photo and 1% are disabled. The first ``passwords`` users get ``LAB_PASSWORD``.
    Users are ``user000000``...; groups ``L<level> Group <n>``; one OU per department.
    """
    rng = random.Random(seed)
    sizes = _level_sizes(groups, depth) if groups else []
    levels: list[list[str]] = []
    for level, size in enumerate(sizes):
        levels.append([f"L{level} Group {index:05d}" for index in range(size)])
    members: dict[str, list[str]] = {name: [] for level in levels for name in level}
    parents: dict[str, list[str]] = {}
    for upper, lower in zip(levels, levels[1:], strict=False):
        for name in lower:
            chosen = [upper[rng.randrange(len(upper))]]
            if len(upper) > 1 and rng.random() < SECOND_PARENT_RATIO:
                other = upper[rng.randrange(len(upper))]
                if other != chosen[0]:
                    chosen.append(other)
            parents[name] = chosen
            for parent in chosen:
                members[parent].append(GROUP_PREFIX + name)
    _add_cycles(rng, levels, parents, members, cycles)

    leaves = levels[-1] if levels else []
    inner = [name for level in levels[:-1] for name in level]
    spec_users: list[UserSpec] = []
    width = max(6, len(str(users)))
    for index in range(users):
        key = f"user{index:0{width}d}"
        department = DEPARTMENTS[rng.randrange(len(DEPARTMENTS))]
        photo = _photo(rng.randrange(DISTINCT_PHOTOS)) if rng.random() < photo_ratio else None
        spec_users.append(
            UserSpec(
                key=key,
                given_name=GIVEN_NAMES[rng.randrange(len(GIVEN_NAMES))],
                sn=SURNAMES[rng.randrange(len(SURNAMES))],
                ou=department,
                mail=f"{key}@example.test",
                department=department,
                title=TITLES[rng.randrange(len(TITLES))],
                disabled=rng.random() < DISABLED_RATIO,
                photo=photo,
                password=LAB_PASSWORD if index < passwords else None,
            )
        )
        if not leaves or groups_per_user <= 0:
            continue
        count = rng.randint(max(1, groups_per_user - 2), groups_per_user + 2)
        in_inner = sum(rng.random() >= LEAF_RATIO for _ in range(count)) if inner else 0
        for name in _pick(rng, leaves, count - in_inner) + _pick(rng, inner, in_inner):
            members[name].append(key)
    spec_groups = [
        GroupSpec(name=name, members=members[name]) for level in levels for name in level
    ]
    return DirectorySpec(users=spec_users, groups=spec_groups)


def _pick(rng: random.Random, names: list[str], count: int) -> list[str]:
    count = min(count, len(names))
    return [names[i] for i in rng.sample(range(len(names)), count)] if count else []


def _add_cycles(
    rng: random.Random,
    levels: list[list[str]],
    parents: dict[str, list[str]],
    members: dict[str, list[str]],
    cycles: int,
) -> None:
    """Make ``cycles`` groups members of one of their own descendants."""
    nested = [name for level in levels[1:] for name in level]
    names = [name for level in levels for name in level]
    for _ in range(cycles):
        if nested:
            descendant = nested[rng.randrange(len(nested))]
            ancestor = descendant
            for _ in range(rng.randint(1, len(levels) - 1)):
                if ancestor not in parents:
                    break
                ancestor = rng.choice(parents[ancestor])
        elif len(names) >= 2:  # one level: a pair of groups that contain each other
            descendant, ancestor = rng.sample(names, 2)
            if GROUP_PREFIX + descendant not in members[ancestor]:
                members[ancestor].append(GROUP_PREFIX + descendant)
        else:
            return
        if GROUP_PREFIX + ancestor not in members[descendant]:
            members[descendant].append(GROUP_PREFIX + ancestor)


@dataclass
class Changes:
    """What :func:`mutate` changed: user keys, and ``(group name, member)`` pairs.

    A moved user (``ou`` changed) is in ``users_modified``; the groups holding it are not in
    ``groups_modified``, though on the server their ``member`` values change to its new DN.
    """

    users_added: list[str] = field(default_factory=list)
    users_modified: list[str] = field(default_factory=list)
    users_removed: list[str] = field(default_factory=list)
    memberships_added: list[tuple[str, str]] = field(default_factory=list)
    memberships_removed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def groups_modified(self) -> set[str]:
        return {group for group, _ in self.memberships_added + self.memberships_removed}

    @property
    def users_changed(self) -> set[str]:
        """Users whose own entry changed (added, modified, removed)."""
        return {*self.users_added, *self.users_modified, *self.users_removed}


_USER_CHANGES = ("title", "department", "surname", "mail", "disabled", "photo", "move")


def _modify_user(rng: random.Random, user: UserSpec, kind: str) -> UserSpec:
    if kind == "title":
        title = rng.choice([t for t in TITLES if t != user.title])
        return dataclasses.replace(user, title=title)
    if kind == "department":  # a department change also moves the user to that OU
        department = rng.choice([d for d in DEPARTMENTS if d != user.department])
        return dataclasses.replace(user, department=department, ou=department)
    if kind == "surname":
        return dataclasses.replace(user, sn=user.sn + "-Changed", cn=None)
    if kind == "mail":  # alternates, so that every mutation really changes the value
        mail = f"{user.key}@example.test"
        return dataclasses.replace(
            user, mail=f"{user.key}.new@example.test" if user.mail == mail else mail
        )
    if kind == "disabled":
        return dataclasses.replace(user, disabled=not user.disabled)
    if kind == "photo":
        photo = None if user.photo else _photo(rng.randrange(DISTINCT_PHOTOS))
        return dataclasses.replace(user, photo=photo)
    # "move": another OU, same department
    ou = rng.choice([d for d in DEPARTMENTS if d != user.ou])
    return dataclasses.replace(user, ou=ou)


def mutate(
    spec: DirectorySpec,
    fraction_users: float = 0.01,
    fraction_memberships: float = 0.01,
    seed: int = 1,
    add_users: int = 0,
    remove_users: int = 0,
) -> tuple[DirectorySpec, Changes]:
    """A changed copy of ``spec`` (which stays as it was), and what changed.

    ``fraction_users`` of the users get one attribute change (title, department with an OU
    move, surname, mail, disabled flag, photo, or an OU move). ``fraction_memberships`` of the
    direct user memberships change: half are removed, half added (a user joins a group it
    was not in). ``add_users`` new users (``new000000``...) join two groups each;
    ``remove_users`` users leave, with their memberships (listed in the Changes too).
    """
    rng = random.Random(seed)
    changes = Changes()
    users = list(spec.users)
    groups = list(spec.groups)
    group_members: dict[int, list[str]] = {}  # copied member lists of touched groups

    def members_of(index: int) -> list[str]:
        if index not in group_members:
            group_members[index] = list(groups[index].members)
        return group_members[index]

    # Removed users leave their groups (first, so no other change touches them).
    if remove_users:
        groups_of: dict[str, list[int]] = {}
        for index, group in enumerate(groups):
            for member in group.members:
                groups_of.setdefault(member, []).append(index)
        picked = rng.sample(range(len(users)), min(remove_users, len(users)))
        for index in sorted(picked, reverse=True):
            key = users.pop(index).key
            changes.users_removed.append(key)
            for group_index in groups_of.get(key, ()):
                members_of(group_index).remove(key)
                changes.memberships_removed.append((groups[group_index].name, key))
        changes.users_removed.reverse()

    # Attribute changes: one kind per user, in turn, so every kind appears.
    count = min(len(users), round(fraction_users * len(users)))
    start = rng.randrange(len(_USER_CHANGES))
    for turn, index in enumerate(sorted(rng.sample(range(len(users)), count))):
        kind = _USER_CHANGES[(start + turn) % len(_USER_CHANGES)]
        users[index] = _modify_user(rng, users[index], kind)
        changes.users_modified.append(users[index].key)

    # Membership changes, among direct user memberships.
    user_keys = {user.key for user in users}
    current = [group_members.get(i, group.members) for i, group in enumerate(groups)]
    offsets, total = [], 0  # cumulative user-member counts, to pick memberships uniformly
    for members in current:
        offsets.append(total)
        total += sum(1 for member in members if member in user_keys)
    count = round(fraction_memberships * total)
    removed: set[tuple[int, str]] = set()
    user_members: dict[int, list[str]] = {}
    for position in sorted(rng.sample(range(total), count // 2)) if total else ():
        index = bisect.bisect_right(offsets, position) - 1
        if index not in user_members:
            user_members[index] = [m for m in current[index] if m in user_keys]
        member = user_members[index][position - offsets[index]]
        removed.add((index, member))
        members_of(index).remove(member)
        changes.memberships_removed.append((groups[index].name, member))
    added, attempts = 0, 0
    wanted = count - count // 2
    while groups and users and added < wanted and attempts < 100 * wanted:
        attempts += 1  # a tiny spec may have fewer free (group, user) pairs than wanted
        index, key = rng.randrange(len(groups)), users[rng.randrange(len(users))].key
        if key in members_of(index) or (index, key) in removed:
            continue
        members_of(index).append(key)
        changes.memberships_added.append((groups[index].name, key))
        added += 1

    # New users join two groups each.
    for number in range(add_users):
        key = f"new{number:06d}"
        department = rng.choice(DEPARTMENTS)
        users.append(
            UserSpec(key, rng.choice(GIVEN_NAMES), rng.choice(SURNAMES), ou=department,
                     mail=f"{key}@example.test", department=department,
                     title=rng.choice(TITLES))
        )  # fmt: skip
        changes.users_added.append(key)
        for index in rng.sample(range(len(groups)), min(2, len(groups))):
            members_of(index).append(key)
            changes.memberships_added.append((groups[index].name, key))

    for index, members in group_members.items():
        groups[index] = dataclasses.replace(groups[index], members=members)
    return DirectorySpec(users=users, groups=groups), changes
