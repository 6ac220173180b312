"""Login latency against the Samba AD lab: ADLDAPBackend next to plain django-auth-ldap (not a test).

    .venv/bin/python benchmarks/login_latency.py                 # 100 logins per variant
    .venv/bin/python benchmarks/login_latency.py --logins 300 --user bob --json out.json

Starts the lab's Samba AD DC (``tests.lab.samba``: holds the machine-wide lab lock, reuses the
cached template), creates the Django tables in an in-memory SQLite database, then times
``django.contrib.auth.authenticate()`` for one user (default ``alice``: Rocket Team <
Engineering < R&D < Staff < Everyone, four levels of nesting) with each variant:

``adldap auto``
    ``ADLDAPBackend`` configured by ``LDAP_SYNC_*`` (the lab settings of ``tests.helpers``):
    user search, bind, ``tokenGroups``, one group search, and the writes of the shared store
    (fields, Employee profile, photo, groups, memberships, identity link).
``adldap in_chain``
    The same with ``LDAP_SYNC_LOGIN_GROUP_RESOLUTION = "in_chain"``: one
    ``LDAP_MATCHING_RULE_IN_CHAIN`` group search instead of ``tokenGroups`` and the SID search.
``adldap graph``
    The same with ``LDAP_SYNC_LOGIN_GROUP_RESOLUTION = "graph"``: groups from the group graph
    cached in the process (warm: no group search at all).
``django-auth-ldap nested-AD``
    Stock django-auth-ldap with ``NestedActiveDirectoryGroupType`` (one search per nesting
    level), ``MIRROR_GROUPS = True`` so the groups reach Django too, and a ``USER_ATTR_MAP`` of
    the same three fields (no profile, no photo, no primary group).

The variants take turns, login by login, in one process against one DC, so machine load hits
them alike. Each variant logs in a few times first (the first login creates the user and its
groups; the graph variant reads its graph); then ``--logins`` logins each are timed. Reported
per variant: median, 90th percentile and mean in milliseconds, LDAP searches per login
(python-ldap's ``search_ext`` counted), and the number of Django groups the user ends up in.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()

import ldap  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth import authenticate, get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django_auth_ldap.backend import LDAPBackend  # noqa: E402
from django_auth_ldap.config import LDAPSearch, NestedActiveDirectoryGroupType  # noqa: E402

from tests.helpers import SearchSpy, samba_settings  # noqa: E402
from tests.lab.samba import SambaDC, lab_lock  # noqa: E402
from tests.lab.spec import LAB_PASSWORD, company  # noqa: E402

WARMUP = 3


class PlainLDAPBackend(LDAPBackend):
    """Stock django-auth-ldap, reading its own ``PLAIN_LDAP_*`` settings (django-auth-ldap's
    documented way of keeping several configurations apart), so both backends can be configured
    at once and the variants can alternate without touching settings."""

    settings_prefix = "PLAIN_LDAP_"


PLAIN = f"{PlainLDAPBackend.__module__}.PlainLDAPBackend"
ADLDAP = "adldap_auth.backends.ADLDAPBackend"


def configure(dc: SambaDC) -> None:
    """Both configurations in the settings: LDAP_SYNC_* for ours, PLAIN_LDAP_* for stock."""
    values: dict[str, Any] = dict(samba_settings(dc))
    values.update(
        PLAIN_LDAP_SERVER_URI=dc.uri,
        PLAIN_LDAP_BIND_DN=dc.reader_dn,
        PLAIN_LDAP_BIND_PASSWORD=dc.reader_password,
        PLAIN_LDAP_CONNECTION_OPTIONS={ldap.OPT_REFERRALS: 0},
        PLAIN_LDAP_USER_SEARCH=LDAPSearch(
            dc.lab_dn, ldap.SCOPE_SUBTREE, "(sAMAccountName=%(user)s)"
        ),
        PLAIN_LDAP_USER_ATTR_MAP={"first_name": "givenName", "last_name": "sn", "email": "mail"},
        PLAIN_LDAP_GROUP_SEARCH=LDAPSearch(dc.base_dn, ldap.SCOPE_SUBTREE, "(objectClass=group)"),
        PLAIN_LDAP_GROUP_TYPE=NestedActiveDirectoryGroupType(),
        PLAIN_LDAP_MIRROR_GROUPS=True,
    )
    for name, value in values.items():
        setattr(settings, name, value)


def variant(backend: str, resolution: str) -> Callable[[], None]:
    def select() -> None:
        # Plain attribute writes (no setting_changed signal), so the graph cache survives.
        settings.AUTHENTICATION_BACKENDS = [backend]
        settings.LDAP_SYNC_LOGIN_GROUP_RESOLUTION = resolution

    return select


VARIANTS = {
    "adldap auto (tokenGroups)": variant(ADLDAP, "auto"),
    "adldap in_chain": variant(ADLDAP, "in_chain"),
    "adldap graph (cached)": variant(ADLDAP, "graph"),
    "django-auth-ldap nested-AD": variant(PLAIN, "auto"),
}


def login(username: str, password: str) -> tuple[float, int]:
    with SearchSpy().active() as spy:
        started = time.perf_counter()
        user = authenticate(username=username, password=password)
        elapsed = time.perf_counter() - started
    if user is None:
        raise SystemExit(f"login of {username!r} failed: check the lab")
    return elapsed, spy.count


def run(username: str, password: str, logins: int) -> dict[str, dict[str, Any]]:
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    searches: dict[str, list[int]] = {name: [] for name in VARIANTS}
    groups: dict[str, int] = {}
    for select in VARIANTS.values():
        select()
        for _ in range(WARMUP):
            login(username, password)
    for _ in range(logins):
        for name, select in VARIANTS.items():
            select()
            elapsed, count = login(username, password)
            times[name].append(elapsed)
            searches[name].append(count)
    user_model = get_user_model()
    for name, select in VARIANTS.items():
        select()
        login(username, password)
        groups[name] = user_model.objects.get(username=username).groups.count()
    results = {}
    for name in VARIANTS:
        ordered = sorted(times[name])
        results[name] = {
            "median_ms": round(statistics.median(ordered) * 1000, 2),
            "p90_ms": round(ordered[int(len(ordered) * 0.9) - 1] * 1000, 2),
            "mean_ms": round(statistics.fmean(ordered) * 1000, 2),
            "searches_per_login": round(statistics.fmean(searches[name]), 2),
            "django_groups": groups[name],
            "logins": len(ordered),
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--logins", type=int, default=100, help="timed logins per variant")
    parser.add_argument("--user", default="alice", help="lab user (one with a password)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    spec = company()
    password = spec.user(args.user).password or LAB_PASSWORD
    call_command("migrate", run_syncdb=True, verbosity=0)
    with lab_lock():
        dc = SambaDC.launch(spec)
        try:
            configure(dc)
            results = run(args.user, password, args.logins)
        finally:
            dc.close()

    print(f"Login latency, Samba AD lab, user {args.user!r}, {args.logins} logins per variant")
    print(f"{'variant':<30} {'median':>8} {'p90':>8} {'mean':>8} {'searches':>9} {'groups':>7}")
    for name, row in results.items():
        print(
            f"{name:<30} {row['median_ms']:>6.1f}ms {row['p90_ms']:>6.1f}ms "
            f"{row['mean_ms']:>6.1f}ms {row['searches_per_login']:>9.1f} {row['django_groups']:>7}"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"user": args.user, "logins": args.logins, "results": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
