"""The Celery application of the example site (optional).

Run a worker with the beat scheduler to sync the directory every 15 minutes
(``CELERY_BEAT_SCHEDULE`` in the settings)::

    DJANGO_SETTINGS_MODULE=example_site.settings celery -A example_site worker -B
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_site.settings")

app = Celery("example_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()  # finds adldap_auth.tasks
