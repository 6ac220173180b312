"""A directory described as plain data, independent of any server.

The lab servers (slapd, Samba AD) are loaded from a :class:`DirectorySpec`, and tests compute
the state they expect from the same spec with :meth:`DirectorySpec.expected_groups`, an
independent breadth-first closure that shares no code with ``adldap_auth.groups``.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field


@dataclass
class UserSpec:
    """One person. ``key`` is the login name (sAMAccountName on AD, uid on OpenLDAP)."""

    key: str
    given_name: str
    sn: str
    ou: str = "People"
    mail: str | None = None
    department: str | None = None
    title: str | None = None
    disabled: bool = False
    photo: bytes | None = None
    password: str | None = None  # only users that must log in get one (passwords load slowly)
    cn: str | None = None  # defaults to "given_name sn"

    @property
    def common_name(self) -> str:
        return self.cn or f"{self.given_name} {self.sn}"


@dataclass
class GroupSpec:
    """One group. ``members`` holds user keys and, prefixed with ``group:``, group names."""

    name: str
    ou: str = "Groups"
    members: list[str] = field(default_factory=list)
    description: str | None = None


@dataclass
class DirectorySpec:
    users: list[UserSpec]
    groups: list[GroupSpec]

    def user(self, key: str) -> UserSpec:
        return next(u for u in self.users if u.key == key)

    def group(self, name: str) -> GroupSpec:
        return next(g for g in self.groups if g.name == name)

    def expected_groups(self) -> dict[str, set[str]]:
        """Each user's recursive group names (direct groups, and every group above them).

        The groups above each group are found once (a breadth-first walk up ``member`` edges,
        cycles included) and reused for every user in it, so 100,000 users in 10,000 groups
        take about a second rather than one walk per user.
        """
        parents: dict[str, set[str]] = {}
        for group in self.groups:
            for member in group.members:
                parents.setdefault(member, set()).add(group.name)
        above: dict[str, frozenset[str]] = {}  # group name -> itself and every group above it
        for group in self.groups:
            seen = {group.name}
            queue = [group.name]
            while queue:
                for parent in parents.get("group:" + queue.pop(), ()):
                    if parent not in seen:
                        seen.add(parent)
                        queue.append(parent)
            above[group.name] = frozenset(seen)
        empty: tuple[str, ...] = ()
        return {
            user.key: set().union(*[above[name] for name in parents.get(user.key, empty)])
            for user in self.users
        }


def jpeg(seed: int, size: tuple[int, int] = (48, 48)) -> bytes:
    """A small, valid, deterministic JPEG (a coloured square)."""
    from PIL import Image

    rng = random.Random(seed)
    colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


LAB_PASSWORD = "Lab-Passw0rd!"
BIG_GROUP_SIZE = 1600


def company() -> DirectorySpec:
    """The lab directory: named people, nested groups four deep, a cycle, a 1,600-member group.

    Nesting: ``Rocket Team`` < ``Engineering`` < ``R&D`` < ``Staff`` < ``Everyone`` (alice is
    in Rocket Team, so in all five). Cycle: ``Cycle A`` <-> ``Cycle B`` (bob is in Cycle B).
    ``All Bulk`` has 1,600 bulk users and carol, so AD returns its members in ranges.
    """
    people = [
        UserSpec("alice", "Alice", "Archer", ou="Engineering", department="Engineering",
                 title="Engineer", photo=jpeg(1), password=LAB_PASSWORD),
        UserSpec("bob", "Bob", "Baker", ou="Engineering", department="Engineering",
                 title="Lead", photo=jpeg(2), password=LAB_PASSWORD),
        UserSpec("carol", "Carol", "Cruz", ou="Sales", department="Sales", title="Manager",
                 password=LAB_PASSWORD),
        UserSpec("dave", "Dave", "Dunn", ou="Sales", department="Sales", title="Rep",
                 disabled=True, password=LAB_PASSWORD),
        UserSpec("erin", "Erin", "Eriksen", ou="IT", department="IT", title="Admin",
                 photo=jpeg(5), password=LAB_PASSWORD),
        UserSpec("jdoe", "John", "Doe", ou="IT", department="IT", title="Support",
                 cn="Doe, John (IT)", password=LAB_PASSWORD),
        UserSpec("zoe", "Zoë", "Zäller", ou="Sales", department="Vertrieb", title="Rep"),
    ]
    for user in people:
        user.mail = f"{user.key}@example.test"
    bulk = [
        UserSpec(f"bulk{i:04d}", "Bulk", f"User {i:04d}", ou="Bulk", department="Bulk")
        for i in range(BIG_GROUP_SIZE)
    ]
    groups = [
        GroupSpec("Rocket Team", members=["alice"]),
        GroupSpec("Engineering", members=["group:Rocket Team", "bob"]),
        GroupSpec("R&D", members=["group:Engineering"]),
        GroupSpec("Staff", members=["group:R&D", "carol", "jdoe"]),
        GroupSpec("Everyone", members=["group:Staff", "erin", "zoe", "dave"]),
        GroupSpec("Cycle A", members=["group:Cycle B", "erin"]),
        GroupSpec("Cycle B", members=["group:Cycle A", "bob"]),
        GroupSpec("Sales", members=["carol", "dave", "zoe"]),
        GroupSpec("All Bulk", members=[u.key for u in bulk] + ["carol"]),
        GroupSpec("Empty Group", members=[]),
    ]
    return DirectorySpec(users=people + bulk, groups=groups)
