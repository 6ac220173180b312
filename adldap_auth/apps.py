from django.apps import AppConfig


class ADLDAPAuthConfig(AppConfig):
    name = "adldap_auth"
    verbose_name = "Directory sync"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
