"""The example site of adldap-auth: ``make demo`` runs it (see :mod:`example_site.demo`)."""

try:  # Celery is optional: the site works without it.
    from .celery import app as celery_app
except ImportError:  # pragma: no cover - without the "celery" extra
    celery_app = None

__all__ = ["celery_app"]
