"""Settings of the example site: a small Django project wired as a real site would be.

What a site needs for adldap-auth is in the "Directory" section below: the ``LDAP_SYNC_*``
settings of django-adldap-sync (its minimal configuration, unchanged) plus TLS, the login
backend first in ``AUTHENTICATION_BACKENDS``, and a profile model (``people.Employee``)
whose field names match the directory attributes it is filled from.

Values that depend on where the directory runs come from environment variables, so the demo
(``make demo``, :mod:`example_site.demo`), the browser test and a person trying the site
against their own directory can point it anywhere without editing this file:

==============================  =============================================================
``ADLDAP_DEMO_DIRECTORY``       ``ad`` (Active Directory, the default) or ``openldap``
``ADLDAP_DEMO_URI``             server URI(s), comma-separated (default ``ldaps://127.0.0.1``)
``ADLDAP_DEMO_CA_FILE``         CA certificate that signed the server's (PEM)
``ADLDAP_DEMO_START_TLS``       ``1``: StartTLS on an ``ldap://`` URI
``ADLDAP_DEMO_BIND_DN``         the reader account
``ADLDAP_DEMO_BIND_PASS``       its password
``ADLDAP_DEMO_BASE_DN``         the search base (default ``DC=example,DC=test``)
``ADLDAP_DEMO_USER_SEARCH``     where people are (default: the demo's ``OU=Lab``)
``ADLDAP_DEMO_GROUP_SEARCH``    where groups are (default: as users)
``ADLDAP_DEMO_DATA``            directory of the SQLite database and the photos
``ADLDAP_DEMO_LOGIN_HINT``      a line shown on the login page (the demo's account)
``CELERY_BROKER_URL``           optional: a broker for the periodic sync task
==============================  =============================================================
"""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent
REPO_DIR = BASE_DIR.parent


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


DIRECTORY = env("ADLDAP_DEMO_DIRECTORY", "ad")
DATA_DIR = Path(env("ADLDAP_DEMO_DATA", str(REPO_DIR / "demo-data" / DIRECTORY)))

# -- Django ----------------------------------------------------------------------------------

# A local demo: a fixed key and DEBUG are fine on 127.0.0.1, never on a server.
SECRET_KEY = env("DJANGO_SECRET_KEY", "example-site-demo-only-not-secret")
DEBUG = env("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "adldap_auth",
    "example_site.people",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_site.urls"
WSGI_APPLICATION = "example_site.wsgi.application"

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

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": env("ADLDAP_DEMO_DB", str(DATA_DIR / "db.sqlite3")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_TZ = True

STATIC_URL = "/static/"
MEDIA_URL = "/media/"
MEDIA_ROOT = DATA_DIR / "media"

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "me"
LOGOUT_REDIRECT_URL = "login"
#: Shown on the login page (the demo puts its account there).
LOGIN_HINT = env("ADLDAP_DEMO_LOGIN_HINT")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "adldap_auth": {"handlers": ["console"], "level": env("ADLDAP_DEMO_LOG_LEVEL", "WARNING")},
    },
}

# -- Directory -------------------------------------------------------------------------------

# The login backend first: a directory user who logs in is created or updated at once, with
# the same fields, profile, photo and groups as the batch sync gives (ModelBackend keeps local
# accounts such as a break-glass superuser working).
AUTHENTICATION_BACKENDS = [
    "adldap_auth.backends.ADLDAPBackend",
    "django.contrib.auth.backends.ModelBackend",
]

BASE_DN = env("ADLDAP_DEMO_BASE_DN", "DC=example,DC=test")

# django-adldap-sync's minimal configuration...
LDAP_SYNC_BIND_URI = [uri.strip() for uri in env("ADLDAP_DEMO_URI", "ldaps://127.0.0.1").split(",")]
LDAP_SYNC_BIND_DN = env("ADLDAP_DEMO_BIND_DN", f"CN=svc-reader,CN=Users,{BASE_DN}")
LDAP_SYNC_BIND_PASS = env("ADLDAP_DEMO_BIND_PASS", "Reader-Passw0rd!")
LDAP_SYNC_BIND_SEARCH = BASE_DN
LDAP_SYNC_USER_SEARCH = env("ADLDAP_DEMO_USER_SEARCH", f"OU=Lab,{BASE_DN}")
LDAP_SYNC_GROUP_SEARCH = env("ADLDAP_DEMO_GROUP_SEARCH", LDAP_SYNC_USER_SEARCH)
LDAP_SYNC_USER_EXTRA_ATTRIBUTES = [
    "userAccountControl",  # disabled accounts are deactivated in Django
    "department",
    "title",
    "manager",
    "mobile",
    "thumbnailPhoto",
]
LDAP_SYNC_USER_EXTRA_PROFILES = ["people.Employee"]

# ...plus TLS, with the certificate verified against the CA that signed it.
LDAP_SYNC_CA_FILE = env(
    "ADLDAP_DEMO_CA_FILE", str(REPO_DIR / ".lab-cache" / "demo" / "dc" / "tls" / "lab-ca.pem")
)
LDAP_SYNC_START_TLS = env("ADLDAP_DEMO_START_TLS") == "1"
LDAP_SYNC_REQUIRE_TLS = True

if DIRECTORY == "openldap":
    # The same site on OpenLDAP (inetOrgPerson users, groupOfNames groups).
    LDAP_SYNC_BIND_DN = env("ADLDAP_DEMO_BIND_DN", f"cn=reader,{BASE_DN}")
    LDAP_SYNC_USER_SEARCH = env("ADLDAP_DEMO_USER_SEARCH", f"ou=People,{BASE_DN}")
    LDAP_SYNC_GROUP_SEARCH = env("ADLDAP_DEMO_GROUP_SEARCH", f"ou=Groups,{BASE_DN}")
    LDAP_SYNC_USER_FILTER = "(objectClass=inetOrgPerson)"
    LDAP_SYNC_USER_FILTER_INCREMENTAL = "(&(objectClass=inetOrgPerson)(modifyTimestamp>=?))"
    LDAP_SYNC_USER_ATTRIBUTES = {
        "uid": "username",
        "givenName": "first_name",
        "sn": "last_name",
        "mail": "email",
    }
    LDAP_SYNC_GROUP_FILTER = "(objectClass=groupOfNames)"
    LDAP_SYNC_GROUP_FILTER_INCREMENTAL = "(&(objectClass=groupOfNames)(modifyTimestamp>=?))"
    LDAP_SYNC_INCREMENTAL_TIMESTAMPFORMAT = "%Y%m%d%H%M%SZ"
    # inetOrgPerson's photo attribute (filling Employee.jpegphoto).
    LDAP_SYNC_USER_EXTRA_ATTRIBUTES = [
        "jpegPhoto" if name == "thumbnailPhoto" else name
        for name in LDAP_SYNC_USER_EXTRA_ATTRIBUTES
    ]

# -- Celery (optional) -----------------------------------------------------------------------

# With a worker and beat running (``celery -A example_site worker -B``), the directory is
# synced every 15 minutes: incremental runs, and a full one every 5th time.
CELERY_BROKER_URL = env("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_BEAT_SCHEDULE = {
    "syncldap": {"task": "adldap_auth.tasks.syncldap", "schedule": 15 * 60},
}
CELERY_TASK_IGNORE_RESULT = True
