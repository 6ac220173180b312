"""Django settings for the test suite (pytest-django: ``DJANGO_SETTINGS_MODULE=tests.settings``).

No ``LDAP_SYNC_*`` setting is set here: tests set the ones they need with ``override_settings``.
``ADLDAP_TEST_DB=postgres`` runs the suite on PostgreSQL at 127.0.0.1:5432 (database "test",
user postgres, no password), ``ADLDAP_TEST_DB=mariadb`` on MariaDB/MySQL at 127.0.0.1:3306
(database "test", user root, no password; Django's test runner creates ``test_test``, and
under pytest-xdist one per worker: ``test_test_gw0``...); the default is SQLite.
"""

import atexit
import os
import shutil
import tempfile

SECRET_KEY = "adldap-auth-tests-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "adldap_auth",
    "tests.testapp",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

#: The test database's name (None: Django's "test_test"). Two suites running at once on one
#: server need different names: ``ADLDAP_TEST_DB_NAME=test_mine``.
TEST_DATABASE_NAME = os.environ.get("ADLDAP_TEST_DB_NAME") or None

if os.environ.get("ADLDAP_TEST_DB") == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": "127.0.0.1",
            "PORT": "5432",
            "NAME": "test",
            "USER": "postgres",
            "PASSWORD": "",
            "TEST": {"NAME": TEST_DATABASE_NAME},
        }
    }
elif os.environ.get("ADLDAP_TEST_DB") == "mariadb":
    # The server's default collation (utf8mb4_general_ci, case-insensitive) is kept on
    # purpose: it is what sites get, and the sync must not trip over it.
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.mysql",
            "HOST": "127.0.0.1",
            "PORT": "3306",
            "NAME": "test",
            "USER": "root",
            "PASSWORD": "",
            "OPTIONS": {"charset": "utf8mb4"},
            "TEST": {"CHARSET": "utf8mb4", "NAME": TEST_DATABASE_NAME},
        }
    }
else:
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}

# Photos are written under a fresh directory per test process, removed at exit.
MEDIA_ROOT = tempfile.mkdtemp(prefix="adldap-auth-media-")
atexit.register(shutil.rmtree, MEDIA_ROOT, ignore_errors=True)
MEDIA_URL = "/media/"

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
