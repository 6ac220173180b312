"""Profile models filled by the sync in tests (``LDAP_SYNC_USER_EXTRA_PROFILES``)."""

from django.conf import settings
from django.db import models


class Employee(models.Model):
    """A profile the sync can fill: a ``user`` one-to-one link, fields named like attributes
    (the default naming rule) and others (``LDAP_SYNC_USER_PROFILE_ATTRIBUTES``)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    department = models.CharField(max_length=100, blank=True)
    title = models.CharField(max_length=100, blank=True)
    thumbnailphoto = models.ImageField(upload_to="photos/", blank=True, null=True)  # AD
    jpegphoto = models.ImageField(upload_to="photos/", blank=True, null=True)  # OpenLDAP
    # Named unlike any attribute: filled only through LDAP_SYNC_USER_PROFILE_ATTRIBUTES.
    phone = models.CharField(max_length=64, blank=True)
    floor = models.IntegerField(null=True, blank=True)  # not text: never filled


class Badge(models.Model):
    """A model linked to users by another name than ``user``: the sync cannot fill it."""

    owner = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    number = models.CharField(max_length=20, blank=True)
