"""``AUTH_USER_MODEL = "customuser.Person"``: Django's user fields under another class (so the
user-groups table is ``customuser_person_groups`` with a ``person_id`` column), plus ``title``,
which the tests map from the directory's ``title`` attribute."""

from django.contrib.auth.models import AbstractUser
from django.db import models


class Person(AbstractUser):
    """A site's own user model, as ``django-admin startproject`` users are told to write."""

    title = models.CharField(max_length=128, blank=True)
