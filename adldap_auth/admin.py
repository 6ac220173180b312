"""Admin: read-only run history and markers; the directory identity and a re-sync on users.

- **Sync runs** (read-only): list with mode, server, status, duration and counts, filters by
  status, mode and dry run; the detail page shows the error text and the per-entry problems the
  run kept (at most ``store.MAX_PROBLEMS``; all of them are in the log).
- **Incremental markers** (read-only): where the next incremental run of each server starts.
- **Users**: a read-only "directory identity" inline (GUID, DN, last changed, source server,
  removal state) and the action "Sync these users now from the directory"
  (:func:`adldap_auth.resync.sync_users_now`, needs the change permission on users), both
  from :class:`DirectoryUserAdminMixin`.

When the user model's admin is Django's stock ``UserAdmin``, it is registered again as
:class:`DirectoryUserAdmin` (the stock class with the mixin) when this module is imported by the
admin's autodiscovery, or else in ``AppConfig.ready()``. A site with a user admin class of its
own, or an admin site of its own, adds :class:`DirectoryUserAdminMixin` to its class (first in
the bases): its class is never replaced.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.utils.html import format_html, format_html_join

from .models import DirectoryUser, SyncMarker, SyncRun
from .store import MAX_PROBLEMS


class NoWritesMixin:
    """Never added, changed or deleted through the admin: the directory is the source."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class ReadOnlyAdmin(NoWritesMixin, admin.ModelAdmin):
    """Viewable by staff with the view permission; never added, changed or deleted here."""


def format_duration(value) -> str:
    if value is None:
        return "-"
    seconds = value.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def _counts(run: SyncRun, kind: str, columns: tuple[str, ...]) -> str:
    counts = run.counts or {}
    return " / ".join(str(counts.get(f"{kind}_{column}", 0)) for column in columns)


@admin.register(SyncRun)
class SyncRunAdmin(ReadOnlyAdmin):
    list_display = (
        "started_at",
        "mode",
        "dry_run",
        "server",
        "status",
        "duration_display",
        "users_display",
        "groups_display",
        "memberships_display",
        "errors_display",
    )
    list_filter = ("status", "mode", "dry_run", "server")
    date_hierarchy = "started_at"
    search_fields = ("server", "error")
    fields = (
        "mode",
        "mode_reason",
        "dry_run",
        "server",
        "status",
        "started_at",
        "finished_at",
        "duration_display",
        "ldap_searches",
        "counts_display",
        "error",
        "problems_display",
    )
    readonly_fields = fields

    @admin.display(description="duration")
    def duration_display(self, run: SyncRun) -> str:
        return format_duration(run.duration)

    @admin.display(description="users created / updated / removed")
    def users_display(self, run: SyncRun) -> str:
        return _counts(run, "users", ("created", "updated", "removed"))

    @admin.display(description="groups created / updated / removed")
    def groups_display(self, run: SyncRun) -> str:
        return _counts(run, "groups", ("created", "updated", "removed"))

    @admin.display(description="memberships added / removed")
    def memberships_display(self, run: SyncRun) -> str:
        return _counts(run, "memberships", ("added", "removed"))

    @admin.display(description="errors")
    def errors_display(self, run: SyncRun) -> int:
        return (run.counts or {}).get("errors", 0)

    @admin.display(description="counts")
    def counts_display(self, run: SyncRun) -> str:
        counts = sorted((run.counts or {}).items())
        if not counts:
            return "-"
        rows = format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", counts)
        return format_html("<table>{}</table>", rows)

    @admin.display(description="problems")
    def problems_display(self, run: SyncRun) -> str:
        problems = list(run.problems or [])[:MAX_PROBLEMS]
        if not problems:
            return "-"
        items = format_html_join("", "<li>{}</li>", ((text,) for text in problems))
        total = (run.counts or {}).get("errors", 0) + (run.counts or {}).get("warnings", 0)
        note = ""
        if total > len(problems):
            note = format_html(
                "<p>{} of {} kept with the run; every one of them is in the log.</p>",
                len(problems),
                total,
            )
        return format_html("<ol>{}</ol>{}", items, note)


@admin.register(SyncMarker)
class SyncMarkerAdmin(ReadOnlyAdmin):
    list_display = (
        "server",
        "invocation_id",
        "highest_usn",
        "timestamp",
        "incrementals_since_full",
        "updated_at",
    )


class DirectoryIdentityInline(NoWritesMixin, admin.StackedInline):
    """The user's directory entry, read-only, shown to whoever may open the user's page."""

    model = DirectoryUser
    fk_name = "user"
    extra = 0
    max_num = 0
    can_delete = False
    verbose_name = "directory identity"
    verbose_name_plural = "directory identity"
    fields = (
        "guid",
        "dn",
        "server",
        "last_changed",
        "first_seen",
        "removed_at",
        "removal_reason",
        "object_sid",
    )
    readonly_fields = fields

    def has_view_permission(self, request, obj=None) -> bool:
        return True



@admin.action(description="Sync these users now from the directory", permissions=["change"])
def sync_users_now(modeladmin, request, queryset) -> None:
    from .resync import sync_users_now as resync

    result = resync(queryset)
    if result.error:
        level = messages.ERROR
    elif result.problems or result.not_found:
        level = messages.WARNING
    else:
        level = messages.SUCCESS
    modeladmin.message_user(request, result.message(), level)


class DirectoryUserAdminMixin:
    """Adds the directory identity inline and the "sync now" action to a user admin class.

    For a site's own user admin (first in the bases)::

        @admin.register(get_user_model())
        class SiteUserAdmin(DirectoryUserAdminMixin, UserAdmin): ...

    Only public ``ModelAdmin`` API is used (``get_inlines()``, the ``actions`` list), so the
    class's own inlines and actions are kept.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The action joins the class's own ``actions`` on the instance (``None``, actions
        # disabled, stays so): ``get_actions()`` is not overridden, its signature and return
        # values differ between Django versions.
        if self.actions is not None and sync_users_now not in self.actions:
            self.actions = [*self.actions, sync_users_now]

    def get_inlines(self, request, obj):
        inlines = list(super().get_inlines(request, obj))
        if DirectoryIdentityInline not in inlines:
            inlines.append(DirectoryIdentityInline)
        return inlines


def extend_user_admin(site: admin.AdminSite | None = None) -> bool:
    """Register Django's stock ``UserAdmin`` again with :class:`DirectoryUserAdminMixin`.

    Only when the user model's admin on ``site`` (default: ``admin.site``) is exactly
    ``django.contrib.auth.admin.UserAdmin``: a site's own user admin class is the site's to
    extend (with the mixin), never replaced behind its back. Returns whether the registered
    user admin now has the mixin. Uses the admin site's public API only
    (``is_registered``, ``get_model_admin``, ``unregister``, ``register``).
    """
    site = site or admin.site
    User = get_user_model()
    if not site.is_registered(User):
        return False
    current = site.get_model_admin(User)
    if isinstance(current, DirectoryUserAdminMixin):
        return True
    if type(current) is not UserAdmin:
        return False
    site.unregister(User)
    site.register(User, DirectoryUserAdmin)
    return True


class DirectoryUserAdmin(DirectoryUserAdminMixin, UserAdmin):
    """Django's ``UserAdmin`` with the directory identity inline and the "sync now" action."""


extend_user_admin()
