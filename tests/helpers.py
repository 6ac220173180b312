"""Test helpers: settings for the lab servers, counting real LDAP searches and SQL writes."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import ldap.ldapobject
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext

#: Attributes the lab's Employee profile is filled from.
PROFILE_ATTRIBUTES = ["department", "title"]


def samba_settings(dc: Any, **overrides: Any) -> dict[str, Any]:
    """LDAP_SYNC_* settings for the lab Samba AD DC: users under OU=Lab, groups domain-wide."""
    values = {
        "LDAP_SYNC_BIND_URI": dc.uri,
        "LDAP_SYNC_BIND_DN": dc.reader_dn,
        "LDAP_SYNC_BIND_PASS": dc.reader_password,
        "LDAP_SYNC_BIND_SEARCH": dc.base_dn,
        "LDAP_SYNC_USER_SEARCH": dc.lab_dn,
        "LDAP_SYNC_USER_EXTRA_ATTRIBUTES": ["userAccountControl", *PROFILE_ATTRIBUTES, "thumbnailPhoto"],
        "LDAP_SYNC_USER_EXTRA_PROFILES": ["testapp.Employee"],
        "LDAP_SYNC_RANGE_SIZE": 1500,  # Samba ranges values only when asked; Windows always does
        "LDAP_SYNC_USER_SHOW_PROGRESS": False,
    }
    values.update(overrides)
    return values


def slapd_settings(server: Any, **overrides: Any) -> dict[str, Any]:
    """LDAP_SYNC_* settings for a lab slapd, with the Employee profile."""
    values = dict(server.sync_settings())
    values.setdefault("LDAP_SYNC_USER_EXTRA_PROFILES", ["testapp.Employee"])
    values["LDAP_SYNC_USER_SHOW_PROGRESS"] = False
    values.update(overrides)
    return values


class SearchSpy:
    """Counts searches python-ldap really sends (wraps ``LDAPObject.search_ext``)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, list[str] | None]] = []

    @contextlib.contextmanager
    def active(self) -> Iterator[SearchSpy]:
        original = ldap.ldapobject.SimpleLDAPObject.search_ext
        spy = self

        def search_ext(obj, base, scope, filterstr="(objectClass=*)", attrlist=None, *a, **kw):
            spy.calls.append((base, filterstr, attrlist))
            return original(obj, base, scope, filterstr, attrlist, *a, **kw)

        ldap.ldapobject.SimpleLDAPObject.search_ext = search_ext
        try:
            yield self
        finally:
            ldap.ldapobject.SimpleLDAPObject.search_ext = original

    @property
    def count(self) -> int:
        return len(self.calls)


_EXECUTEMANY = re.compile(r"\A\d+ times: ")
_WRITE = re.compile(r"^\s*(INSERT|UPDATE|DELETE)\b", re.IGNORECASE)
#: Tables a run writes on every run by design (its own record, marker, lock).
BOOKKEEPING_TABLES = ("adldap_auth_syncrun", "adldap_auth_syncmarker", "adldap_auth_synclock")


@contextlib.contextmanager
def count_writes() -> Iterator[list[str]]:
    """Collect the INSERT/UPDATE/DELETE statements sent, except run bookkeeping."""
    writes: list[str] = []
    with CaptureQueriesContext(connection) as context:
        yield writes
    for query in context.captured_queries:
        # An executemany is one statement, logged by Django as "<n> times: <sql>".
        sql = _EXECUTEMANY.sub("", query["sql"], count=1)
        if _WRITE.match(sql) and not any(table in sql for table in BOOKKEEPING_TABLES):
            writes.append(sql)


def django_state() -> dict[str, dict[str, Any]]:
    """Every synced user's observable state: fields, profile, photo bytes, group names."""
    from tests.testapp.models import Employee

    state: dict[str, dict[str, Any]] = {}
    profiles = {p.user_id: p for p in Employee.objects.all()}
    for user in get_user_model().objects.prefetch_related("groups").filter(
        directory_link__isnull=False
    ):
        profile = profiles.get(user.pk)
        photo = None
        file = profile and (profile.thumbnailphoto or profile.jpegphoto)
        if file:
            with file.open("rb") as handle:
                photo = handle.read()
        state[user.username] = {
            "first_name": user.first_name,
            "last_name": user.last_name,
            "email": user.email,
            "is_active": user.is_active,
            "department": profile.department if profile else None,
            "title": profile.title if profile else None,
            "photo": photo,
            "groups": {g.name for g in user.groups.all()},
        }
    return state
