"""The Celery app of the task tests' worker and beat: ``celery -A tests.celery_app worker``.

Configured like a site's ``proj/celery.py``: Django settings (:mod:`tests.site_settings`, whose
``CELERY_*`` values come from the test), tasks found by ``autodiscover_tasks()``.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.site_settings")

app = Celery("adldap_auth_tests")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
