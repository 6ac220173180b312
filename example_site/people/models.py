"""The profile the sync fills: ``LDAP_SYNC_USER_EXTRA_PROFILES = ["people.Employee"]``.

Field names are the directory attribute names in lower case (``LDAP_SYNC_USER_CHANGE_FIELDCASE``
is "lower"), which is how the sync knows what goes where: ``department``, ``title``,
``manager`` (the manager's DN, as the directory holds it), ``mobile`` and ``thumbnailphoto``
(Active Directory's photo, as a file under ``MEDIA_ROOT/photos/``). On OpenLDAP the photo is
``jpegPhoto`` (inetOrgPerson), hence a second photo field; :attr:`Employee.photo` is either.
"""

from __future__ import annotations

import ldap.dn
from django.conf import settings
from django.db import models


class Employee(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="employee"
    )
    department = models.CharField(max_length=100, blank=True)
    title = models.CharField(max_length=100, blank=True)
    manager = models.CharField(
        max_length=255, blank=True, help_text="The manager's entry (DN), as in the directory."
    )
    mobile = models.CharField(max_length=50, blank=True)
    thumbnailphoto = models.ImageField("photo", upload_to="photos/", blank=True, null=True)
    jpegphoto = models.ImageField("photo (OpenLDAP)", upload_to="photos/", blank=True, null=True)

    class Meta:
        ordering = ["department", "user__last_name", "user__first_name"]

    def __str__(self) -> str:
        return self.user.get_full_name() or self.user.get_username()

    @property
    def photo(self):
        """The photo file (``thumbnailPhoto`` on AD, ``jpegPhoto`` on OpenLDAP), or None."""
        return self.thumbnailphoto or self.jpegphoto or None

    @property
    def manager_name(self) -> str:
        """The manager's common name, read from the DN (``CN=Bob Baker,OU=...`` -> Bob Baker)."""
        if not self.manager:
            return ""
        try:
            return ldap.dn.str2dn(self.manager)[0][0][1]
        except (ldap.DECODING_ERROR, IndexError):
            return self.manager

    @property
    def initials(self) -> str:
        user = self.user
        text = (user.first_name[:1] + user.last_name[:1]) or user.get_username()[:2]
        return text.upper()
