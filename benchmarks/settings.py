"""Django settings of one benchmark scenario process (``DJANGO_SETTINGS_MODULE``).

The harness writes a JSON file per scenario and names it in ``BENCH_CONFIG``:

``kind``
    ``adldap`` (this project, with the test app's ``Employee`` profile), ``django_auth_ldap``,
    ``python3_ldap`` (the alternatives, run by the alternatives' virtualenv) or ``floor``
    (``django.contrib.auth`` only).
``db``, ``media``
    The SQLite file and the photo directory of the scenario's database.
``settings``
    Extra settings (``LDAP_SYNC_*``, ``LDAP_AUTH_*``...), JSON values. django-auth-ldap's
    search objects cannot be JSON: :mod:`benchmarks.scenarios` builds them from ``ldap``.
"""

from __future__ import annotations

import json
import os

_config = json.loads(open(os.environ["BENCH_CONFIG"], encoding="utf-8").read())
KIND = _config["kind"]

SECRET_KEY = "adldap-auth-benchmark-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes"]
if KIND == "adldap":
    INSTALLED_APPS += ["adldap_auth", "tests.testapp"]
elif KIND == "python3_ldap":
    INSTALLED_APPS += ["django_python3_ldap"]

DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": _config["db"]}}
MEDIA_ROOT = _config.get("media") or os.path.join(os.path.dirname(_config["db"]), "media")
MEDIA_URL = "/media/"

# Every row logs in with passwords the lab sets; the sync itself never hashes one.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler", "level": "ERROR"}},
    "root": {"handlers": ["stderr"], "level": "ERROR"},
}

globals().update(_config.get("settings", {}))
