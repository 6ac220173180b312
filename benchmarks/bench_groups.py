"""Micro-benchmark of the group graph (not a test).

    .venv/bin/python benchmarks/bench_groups.py              # 1k, 10k and 100k users
    .venv/bin/python benchmarks/bench_groups.py --users 50000 --groups 10000

A synthetic directory: ``--groups`` groups nested at random (each group in one or two groups
created before it, so nesting is about ln(groups) deep, plus 1% of back edges that close
cycles), and ``--users`` users, each a direct member of ``--per-user`` random groups. One user
in ten has a CN with an escaped comma ("Doe\\, John"), which takes the parsing path of
``normalize_dn``.

Timed phases, each size in a fresh process so that peak memory (max RSS) is per size:
``map_group`` of every group entry (which normalises every member DN), ``GroupGraph(...)``,
and ``groups_for`` for every user (with an AD primary group).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from adldap_auth.directory import Entry  # noqa: E402
from adldap_auth.directory.decoding import sid_to_bytes  # noqa: E402
from adldap_auth.groups import GroupGraph  # noqa: E402
from adldap_auth.mapping import MappingConfig, map_group, normalize_dn  # noqa: E402

DOMAIN_SID = "S-1-5-21-1004336348-1177238915-682003330"
BASE = "DC=example,DC=com"


def config() -> MappingConfig:
    return MappingConfig(
        user_attributes={"samaccountname": "username"},
        username_field="username",
        user_field_max_lengths={"username": 150},
        username_validator=None,
        extra_attributes=(),
        profiles=(),
        fieldcase="lower",
        separator="|",
        identity_attribute="objectguid",
        exempt_usernames=frozenset(),
        group_attributes={"cn": "name"},
        member_attribute="member",
        photo_max_bytes=1,
        photo_max_pixels=1,
    )


def user_dn(i: int) -> str:
    if i % 10 == 0:
        return f"CN=Doe\\, John {i:06d},OU=People,{BASE}"
    return f"CN=User {i:06d},OU=People,{BASE}"


def group_dn(i: int) -> str:
    return f"CN=Group {i:05d},OU=Groups,{BASE}"


def make_entries(users: int, groups: int, per_user: int, seed: int = 1) -> list[Entry]:
    rng = random.Random(seed)
    members: list[list[str]] = [[] for _ in range(groups)]
    for i in range(1, groups):
        for parent in {rng.randrange(i) for _ in range(rng.choice((1, 1, 2)))}:
            members[parent].append(group_dn(i))
    for _ in range(groups // 100):  # back edges: cycles
        child = rng.randrange(groups)
        members[rng.randrange(child, groups)].append(group_dn(child))
    for u in range(users):
        for g in rng.sample(range(groups), per_user):
            members[g].append(user_dn(u))
    return [
        Entry(
            group_dn(g),
            {
                "objectguid": [uuid.UUID(int=rng.getrandbits(128)).bytes_le],
                "cn": [f"Group {g:05d}".encode()],
                "objectsid": [sid_to_bytes(f"{DOMAIN_SID}-{10000 + g}")],
                "member": [m.encode() for m in members[g]],
            },
        )
        for g in range(groups)
    ]


def run(users: int, groups: int, per_user: int) -> None:
    entries = make_entries(users, groups, per_user)
    values = sum(len(e.attrs["member"]) for e in entries)
    cfg = config()
    user_keys = [normalize_dn(user_dn(u)) for u in range(users)]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    started = time.perf_counter()
    records = [map_group(entry, cfg) for entry in entries]
    mapped = time.perf_counter()
    graph = GroupGraph(records)
    built = time.perf_counter()
    total = 0
    for u, key in enumerate(user_keys):
        total += len(graph.groups_for(key, f"{DOMAIN_SID}-{10000 + u % 7}"))
    queried = time.perf_counter()

    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"{users:>7} users {groups:>6} groups {values:>8} member values | "
        f"map_group {mapped - started:6.2f}s  graph {built - mapped:5.2f}s  "
        f"groups_for {queried - built:5.2f}s  (avg {total / max(users, 1):5.1f} groups/user) | "
        f"graph+queries {queried - mapped:5.2f}s  max RSS {rss_after / 1024:6.0f} MB "
        f"(+{(rss_after - rss_before) / 1024:.0f} MB for mapping and graph)",
        flush=True,
    )


def bench_normalize_dn() -> None:
    from adldap_auth.mapping import _normalize_dn_parsed

    plain = [f"CN=User {i:06d},OU=People,{BASE}" for i in range(100_000)]
    escaped = [f"CN=Doe\\, John {i:06d},OU=People,{BASE}" for i in range(100_000)]
    for label, dns, function in (
        ("plain DN (fast path)", plain, normalize_dn),
        ("escaped DN, first sight (parsed)", escaped, normalize_dn),
        ("escaped DN, seen before (cached)", escaped[-1000:] * 100, normalize_dn),
        ("escaped DN, parser only", escaped, _normalize_dn_parsed.__wrapped__),
    ):
        started = time.perf_counter()
        for dn in dns:
            function(dn)
        elapsed = time.perf_counter() - started
        print(f"normalize_dn {label:<34} {elapsed / len(dns) * 1e6:5.2f} µs/call", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, help="one size only, in this process")
    parser.add_argument("--groups", type=int, default=10_000)
    parser.add_argument("--per-user", type=int, default=5)
    args = parser.parse_args()
    if args.users is not None:
        run(args.users, args.groups, args.per_user)
        return
    bench_normalize_dn()
    for users in (1_000, 10_000, 100_000):
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--users",
                str(users),
                "--groups",
                str(args.groups),
                "--per-user",
                str(args.per_user),
            ],
            check=True,
        )


if __name__ == "__main__":
    main()
