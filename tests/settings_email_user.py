"""The suite's settings with ``AUTH_USER_MODEL = "emailuser.EmailUser"`` (``AbstractBaseUser`` +
``PermissionsMixin``, ``USERNAME_FIELD = "email"``, no first or last name):
``pytest --ds tests.settings_email_user tests/slapd/test_custom_user_models.py``
(``make test-user-models``). The database follows ``ADLDAP_TEST_DB`` as in :mod:`tests.settings`,
under a test database name of its own."""

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.emailuser"]
AUTH_USER_MODEL = "emailuser.EmailUser"

if DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3":
    DATABASES["default"]["TEST"] = {
        **DATABASES["default"].get("TEST", {}),
        "NAME": f"test_{DATABASES['default']['NAME']}_email_user",
    }
