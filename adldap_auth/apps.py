from django.apps import AppConfig, apps


class ADLDAPAuthConfig(AppConfig):
    name = "adldap_auth"
    verbose_name = "Directory sync"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported for their registrations: system checks; the session keys kept for the
        # cache session engine (adldap_auth.sessions).
        from . import checks, sessions  # noqa: F401

        if apps.is_installed("django.contrib.admin"):
            # For a user admin registered after this app's admin module was autodiscovered.
            from .admin import extend_user_admin

            extend_user_admin()
