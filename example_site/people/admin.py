from django.contrib import admin

from .models import Employee


@admin.register(Employee)
class EmployeeAdmin(admin.ModelAdmin):
    """Read-only: the directory is the source of truth, the sync overwrites edits."""

    list_display = ["__str__", "department", "title", "mobile", "manager_name"]
    list_filter = ["department"]
    search_fields = ["user__username", "user__first_name", "user__last_name", "title"]
    readonly_fields = [
        "user",
        "department",
        "title",
        "manager",
        "mobile",
        "thumbnailphoto",
        "jpegphoto",
    ]

    def has_add_permission(self, request) -> bool:
        return False
