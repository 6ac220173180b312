"""Django settings of one benchmark scenario process (``DJANGO_SETTINGS_MODULE``).

The harness writes a JSON file per scenario and names it in ``BENCH_CONFIG``:

``kind``
    ``adldap`` (this project, with the test app's ``Employee`` profile), ``django_auth_ldap``,
    ``python3_ldap`` (the alternatives, run by the alternatives' virtualenv) or ``floor``
    (``django.contrib.auth`` only).
``db``, ``media``
    The SQLite file (or the database name) and the photo directory of the scenario's database.
``django_db``
    The ``DATABASES["default"]`` entry (:mod:`benchmarks.databases`); without it, ``db`` is a
    SQLite file.
``settings``
    Extra settings (``LDAP_SYNC_*``, ``LDAP_AUTH_*``...), JSON values. django-auth-ldap's
    search objects cannot be JSON: :mod:`benchmarks.scenarios` builds them from ``ldap``.
"""

from __future__ import annotations

import json
import os

with open(os.environ["BENCH_CONFIG"], encoding="utf-8") as _handle:
    _config = json.load(_handle)
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

DATABASES = {
    "default": _config.get("django_db")
    or {"ENGINE": "django.db.backends.sqlite3", "NAME": _config["db"]}
}
MEDIA_ROOT = _config.get("media") or os.path.join(os.path.dirname(_config["result"]), "media")
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

if KIND == "django_auth_ldap":
    # django-auth-ldap configured as its documentation says for nested groupOfNames, with
    # mirrored groups: the only alternative that gets recursive memberships right.
    import ldap
    from django_auth_ldap.config import LDAPSearch, NestedGroupOfNamesType

    _ldap = _config["ldap"]
    AUTHENTICATION_BACKENDS = ["django_auth_ldap.backend.LDAPBackend"]
    AUTH_LDAP_SERVER_URI = _ldap["uri"]
    AUTH_LDAP_BIND_DN = _ldap["bind_dn"]
    AUTH_LDAP_BIND_PASSWORD = _ldap["bind_password"]
    AUTH_LDAP_USER_ATTR_MAP = {"first_name": "givenName", "last_name": "sn", "email": "mail"}
    AUTH_LDAP_MIRROR_GROUPS = True
    if _ldap.get("flavor") == "ad":
        from django_auth_ldap.config import NestedActiveDirectoryGroupType

        AUTH_LDAP_USER_SEARCH = LDAPSearch(
            _ldap["people_dn"], ldap.SCOPE_SUBTREE, "(sAMAccountName=%(user)s)"
        )
        AUTH_LDAP_GROUP_SEARCH = LDAPSearch(
            _ldap["groups_dn"], ldap.SCOPE_SUBTREE, "(objectClass=group)"
        )
        AUTH_LDAP_GROUP_TYPE = NestedActiveDirectoryGroupType()
    else:
        AUTH_LDAP_USER_SEARCH = LDAPSearch(
            _ldap["people_dn"],
            ldap.SCOPE_SUBTREE,
            "(&(objectClass=inetOrgPerson)(uid=%(user)s))",
        )
        AUTH_LDAP_GROUP_SEARCH = LDAPSearch(
            _ldap["groups_dn"], ldap.SCOPE_SUBTREE, "(objectClass=groupOfNames)"
        )
        AUTH_LDAP_GROUP_TYPE = NestedGroupOfNamesType()
