"""Settings of a "site" run in a subprocess (``manage.py syncldap``, a Celery worker or beat).

The test suite's settings, with what the test passes in environment variables (JSON):

- ``ADLDAP_SITE_DB``: the ``default`` database (a SQLite *file*, or the PostgreSQL test database);
- ``ADLDAP_SITE_SETTINGS``: more settings, e.g. the ``LDAP_SYNC_*`` of a lab server and
  ``CELERY_*``.

See :mod:`tests.site`, which builds these variables.
"""

import json
import os

from tests.settings import *  # noqa: F403

DATABASES = {"default": json.loads(os.environ["ADLDAP_SITE_DB"])}
globals().update(json.loads(os.environ.get("ADLDAP_SITE_SETTINGS", "{}")))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"adldap_auth": {"handlers": ["stderr"], "level": "INFO"}},
}
