"""The demo's directory: a small company, as plain data (no server, no Django).

:func:`demo_company` returns a :class:`~tests.lab.spec.DirectorySpec` (the test lab's format,
so the lab's Samba and OpenLDAP loaders can load it) and :class:`Extras` holding what the
spec has no field for: each user's ``manager`` (a user key) and ``mobile``. Everything is
derived from a seeded ``random.Random``, so every machine builds the same company.

Shape (about 280 people in 9 departments, one OU per department)::

    All Staff
    +-- R&D
    |   +-- Engineering
    |   |   +-- Platform
    |   |   |   +-- Rocket Team      <- alice (so alice is in 5 groups, 4 of them inherited)
    |   |   +-- Web Team
    |   +-- Research
    +-- Sales   +-- Sales EMEA, Sales Americas
    +-- Marketing, Finance, Human Resources, Support, Executive
    +-- IT      +-- Helpdesk, Infrastructure
    VPN Users   = Engineering + IT + a few people;   Managers = every manager

Named people (password :data:`DEMO_PASSWORD`): alice (Engineering, photo, Rocket Team),
bob (her manager), carol (Sales), erin (IT); dave is disabled (his login is refused).
"""

from __future__ import annotations

import io
import random
import unicodedata
from dataclasses import dataclass, field

from tests.lab.spec import LAB_PASSWORD, DirectorySpec, GroupSpec, UserSpec

DEMO_PASSWORD = LAB_PASSWORD
DEMO_LOGIN = "alice"
SEED = 9

GIVEN_NAMES = (
    "Anna", "Ben", "Chloé", "David", "Emma", "Felix", "Grace", "Hugo", "Ines", "Jonas",
    "Karin", "Liam", "Maja", "Noah", "Olivia", "Paul", "Quinn", "Rosa", "Søren", "Tom",
    "Uma", "Victor", "Wen", "Xavier", "Yara", "Zoë", "Jürgen", "Åsa", "Farah", "Kenji",
    "Lucía", "Mateo", "Nadia", "Omar", "Priya", "Ravi", "Sofia", "Tariq", "Elif", "Marta",
)  # fmt: skip
SURNAMES = (
    "Smith", "Müller", "García", "Rossi", "Dubois", "Nowak", "Jensen", "Silva", "Kim", "Lee",
    "O'Brien", "Novák", "Öztürk", "Haddad", "Tanaka", "Kowalski", "Larsen", "Moreau", "Costa",
    "Fischer", "Ivanova", "Nakamura", "Okafor", "Petrov", "Quispe", "Richter", "Santos", "Weber",
)  # fmt: skip

#: department -> (head title, staff titles)
DEPARTMENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Executive": ("Chief Executive Officer", ("Executive Assistant", "Chief of Staff")),
    "Engineering": (
        "VP Engineering",
        ("Software Engineer", "Senior Software Engineer", "Site Reliability Engineer"),
    ),
    "Research": ("Head of Research", ("Research Scientist", "Data Scientist")),
    "Sales": ("VP Sales", ("Account Executive", "Sales Representative")),
    "Marketing": ("Head of Marketing", ("Marketing Manager", "Content Writer", "Designer")),
    "Finance": ("CFO", ("Accountant", "Financial Analyst", "Controller")),
    "Human Resources": ("Head of People", ("HR Partner", "Recruiter")),
    "Support": ("Head of Support", ("Support Engineer", "Support Specialist")),
    "IT": ("CIO", ("Systems Administrator", "Network Engineer")),
}
#: People per department reporting to the head directly (besides team members).
DEPARTMENT_STAFF = {
    "Executive": 3, "Engineering": 16, "Research": 20, "Sales": 14, "Marketing": 26,
    "Finance": 22, "Human Resources": 16, "Support": 34, "IT": 8,
}  # fmt: skip


@dataclass(frozen=True)
class Team:
    """A group inside a department (``parent``: the department or another team's group)."""

    name: str
    department: str
    parent: str
    size: int  # members besides the lead and the named people
    lead: str | None = None  # a named person's key; None: a generated lead
    named: tuple[str, ...] = ()  # named people in the team
    has_lead: bool = True  # False: members report to the parent team's lead


TEAMS = (
    Team("Platform", "Engineering", "Engineering", 18, lead="bob"),
    Team("Rocket Team", "Engineering", "Platform", 5, named=("alice",), has_lead=False),
    Team("Web Team", "Engineering", "Engineering", 20),
    Team("Sales EMEA", "Sales", "Sales", 20, lead="carol", named=("dave",)),
    Team("Sales Americas", "Sales", "Sales", 20),
    Team("Helpdesk", "IT", "IT", 9),
    Team("Infrastructure", "IT", "IT", 8, named=("erin",)),
)
#: Departments grouped under "R&D" (the others sit directly under "All Staff").
RND = ("Engineering", "Research")
PHOTO_RATIO = 0.7
#: OU names that differ from the department name.
PEOPLE_OU = {"Executive": "Management"}

#: Demo accounts: given name, surname, title.
NAMED = {
    "alice": ("Alice", "Archer", "Software Engineer"),
    "bob": ("Bob", "Baker", "Engineering Manager"),
    "carol": ("Carol", "Cruz", "Sales Manager"),
    "dave": ("Dave", "Dunn", "Sales Representative"),
    "erin": ("Erin", "Eriksen", "Systems Administrator"),
}
#: Accounts with a password (passwords make Samba loading slow: only those who log in).
WITH_PASSWORD = tuple(NAMED)
DISABLED = ("dave",)


@dataclass
class Extras:
    """What the spec cannot carry: manager (user key) and mobile number per user key."""

    manager: dict[str, str] = field(default_factory=dict)
    mobile: dict[str, str] = field(default_factory=dict)


def ascii_key(given: str, surname: str) -> str:
    """``Chloé O'Brien`` -> ``cobrien``: an sAMAccountName-friendly login name."""
    text = unicodedata.normalize("NFKD", f"{given[0]}{surname}")
    text = text.replace("ø", "o").replace("Ø", "O")
    return "".join(c for c in text.encode("ascii", "ignore").decode().lower() if c.isalnum())


def avatar(initials: str, seed: int, size: int = 96) -> bytes:
    """A deterministic JPEG portrait stand-in: initials on a coloured disc."""
    from PIL import Image, ImageDraw, ImageFont

    rng = random.Random(seed)
    hue = rng.randrange(360)
    background = _hsv(hue, 0.35, 0.95)
    disc = _hsv(hue, 0.55, 0.70)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    margin = size // 12
    draw.ellipse((margin, margin, size - margin, size - margin), fill=disc)
    font = ImageFont.load_default(size=size * 2 // 5)
    draw.text((size / 2, size / 2), initials, fill=(255, 255, 255), font=font, anchor="mm")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _hsv(hue: int, saturation: float, value: float) -> tuple[int, int, int]:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(hue / 360, saturation, value)
    return round(r * 255), round(g * 255), round(b * 255)


def _mobile(rng: random.Random) -> str:
    return f"+1 555 {rng.randrange(100, 1000):03d} {rng.randrange(10000):04d}"


def demo_company() -> tuple[DirectorySpec, Extras]:
    """The demo company (deterministic): its spec and the managers and mobiles."""
    rng = random.Random(SEED)
    extras = Extras()
    users: list[UserSpec] = []
    taken: set[str] = set(NAMED)
    names: set[tuple[str, str, str]] = set()
    members: dict[str, list[str]] = {}

    def person(department: str, title: str | None = None, key: str | None = None) -> str:
        if key is not None:
            given, sn, title = NAMED[key]
        else:
            # The full name is the entry's CN on AD: unique within an OU (department).
            while True:
                given = GIVEN_NAMES[rng.randrange(len(GIVEN_NAMES))]
                sn = SURNAMES[rng.randrange(len(SURNAMES))]
                if (department, given, sn) not in names:
                    break
            base = ascii_key(given, sn)[:18]
            key, number = base, 2
            while key in taken:
                key, number = f"{base}{number}", number + 1
            taken.add(key)
            if title is None:
                titles = DEPARTMENTS[department][1]
                title = titles[rng.randrange(len(titles))]
        names.add((department, given, sn))
        photo = None
        if key in NAMED or rng.random() < PHOTO_RATIO:
            photo = avatar(given[0] + sn[0], seed=SEED * 1000 + len(users))
        users.append(
            UserSpec(
                key=key,
                given_name=given,
                sn=sn,
                ou=PEOPLE_OU.get(department, department),
                mail=f"{key}@example.test",
                department=department,
                title=title,
                photo=photo,
                password=DEMO_PASSWORD if key in WITH_PASSWORD else None,
                disabled=key in DISABLED,
            )
        )
        extras.mobile[key] = _mobile(rng)
        return key

    heads: dict[str, str] = {}
    for department, (head_title, _titles) in DEPARTMENTS.items():
        head = heads[department] = person(department, head_title)
        members[department] = [head]
        for _ in range(DEPARTMENT_STAFF[department]):
            key = person(department)
            members[department].append(key)
            extras.manager[key] = head
    leads: dict[str, str] = {}
    for team in TEAMS:
        members[team.parent].append("group:" + team.name)
        members[team.name] = []
        if team.has_lead:
            lead = person(team.department, f"{team.name} Lead", key=team.lead)
            leads[team.name] = lead
            members[team.name].append(lead)
            extras.manager[lead] = heads[team.department]
        else:
            lead = leads[team.parent]
        for key in [person(team.department, key=k) for k in team.named] + [
            person(team.department) for _ in range(team.size)
        ]:
            members[team.name].append(key)
            extras.manager[key] = lead
    ceo = heads["Executive"]
    for head in heads.values():
        if head != ceo:
            extras.manager[head] = ceo

    members["R&D"] = ["group:" + d for d in RND]
    members["All Staff"] = ["group:R&D"] + ["group:" + d for d in DEPARTMENTS if d not in RND]
    members["Managers"] = sorted(set(extras.manager.values()))
    members["VPN Users"] = ["group:Engineering", "group:IT", heads["Sales"], "carol"]
    members["Wiki Editors"] = ["group:Managers", "group:Research", "alice"]
    descriptions = {
        "All Staff": "Everyone in the company",
        "R&D": "Engineering and Research",
        "Managers": "People with direct reports",
        "VPN Users": "Remote access",
        "Wiki Editors": "May edit the company wiki",
        "Rocket Team": "A team inside Platform",
    }
    groups = [
        GroupSpec(name, members=values, description=descriptions.get(name))
        for name, values in members.items()
    ]
    return DirectorySpec(users=users, groups=groups), extras


def describe(spec: DirectorySpec) -> str:
    """One line: how big the company is."""
    departments = len({u.department for u in spec.users})
    photos = sum(1 for u in spec.users if u.photo)
    disabled = sum(1 for u in spec.users if u.disabled)
    return (
        f"{len(spec.users)} people in {departments} departments ({photos} with a photo, "
        f"{disabled} disabled), {len(spec.groups)} nested groups"
    )
