"""The suite's settings with ``AUTH_USER_MODEL = "customuser.Person"`` (an ``AbstractUser``
subclass with an extra field): ``pytest --ds tests.settings_person tests/slapd/test_custom_user_models.py``
(``make test-user-models``). The database follows ``ADLDAP_TEST_DB`` as in :mod:`tests.settings`,
under a test database name of its own."""

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.customuser"]
AUTH_USER_MODEL = "customuser.Person"

if DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3":
    DATABASES["default"]["TEST"] = {
        **DATABASES["default"].get("TEST", {}),
        "NAME": f"test_{DATABASES['default']['NAME']}_person",
    }
