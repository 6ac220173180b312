"""The pages: "me" (what the directory says about the signed-in user) and the people directory."""

from __future__ import annotations

from itertools import groupby

from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.shortcuts import render

from adldap_auth.mapping import normalize_dn
from adldap_auth.models import DirectoryGroup, DirectoryUser

from .models import Employee
from .nesting import group_nesting


def _employee(user) -> Employee | None:
    try:
        return user.employee
    except Employee.DoesNotExist:
        return None


def _manager(employee: Employee | None):
    """The manager's Django user, found by the DN the sync stored (None when not synced)."""
    if employee is None or not employee.manager:
        return None
    link = (
        DirectoryUser.objects.select_related("user")
        .filter(dn__in=[employee.manager], removed_at__isnull=True)
        .first()
    )
    return link.user if link else None


def manager_names(dns: set[str]) -> dict[str, str]:
    """Full names of the synced users with these DNs, by normalised DN (else the DN's CN)."""
    wanted = {normalize_dn(dn): dn for dn in dns}
    names = {key: Employee(manager=dn).manager_name for key, dn in wanted.items()}
    links = DirectoryUser.objects.select_related("user").filter(dn__in=list(dns))
    for link in links.filter(removed_at__isnull=True):
        names[normalize_dn(link.dn)] = link.user.get_full_name() or link.user.get_username()
    return names


@login_required
def me(request):
    user = request.user
    employee = _employee(user)
    link = DirectoryUser.objects.filter(user=user).first()
    groups = list(user.groups.order_by("name"))
    group_dns = dict(DirectoryGroup.objects.filter(group__in=groups).values_list("group_id", "dn"))
    nesting = group_nesting(link.dn) if link is not None else None
    rows = []
    for group in groups:
        dn = group_dns.get(group.pk)
        path = nesting.path_to(dn) if nesting is not None and dn else None
        if path is None:
            kind, via = ("unknown" if nesting is None or nesting.error else "elsewhere"), []
        elif len(path) == 1:
            kind, via = "direct", []
        else:
            kind, via = "inherited", path[:-1]
        rows.append({"group": group, "dn": dn, "kind": kind, "via": via})
    context = {
        "person": user,
        "employee": employee,
        "manager": _manager(employee),
        "link": link,
        "group_rows": rows,
        "direct_count": sum(1 for row in rows if row["kind"] == "direct"),
        "nesting_error": nesting.error if nesting is not None else "",
    }
    return render(request, "people/me.html", context)


@login_required
def people(request):
    """Everyone active, by department, with photos."""
    query = request.GET.get("q", "").strip()
    employees = (
        Employee.objects.select_related("user")
        .filter(user__is_active=True)
        .order_by("department", "user__last_name", "user__first_name")
    )
    if query:
        employees = employees.filter(
            Q(user__first_name__icontains=query)
            | Q(user__last_name__icontains=query)
            | Q(user__username__icontains=query)
            | Q(title__icontains=query)
            | Q(department__icontains=query)
        )
    employees = list(employees)
    names = manager_names({e.manager for e in employees if e.manager})
    for employee in employees:
        employee.manager_display = (
            names.get(normalize_dn(employee.manager), "") if employee.manager else ""
        )
    departments = [
        (name or "(no department)", list(members))
        for name, members in groupby(employees, key=lambda e: e.department)
    ]
    context = {
        "departments": departments,
        "count": len(employees),
        "query": query,
        "inactive": get_user_model()
        .objects.filter(is_active=False, employee__isnull=False)
        .count(),
    }
    return render(request, "people/people.html", context)
