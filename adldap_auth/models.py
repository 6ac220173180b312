"""What adldap-auth remembers: identity links, run records, incremental markers, the run lock."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models


class DirectoryUser(models.Model):
    """Ties a Django user to its directory entry by the entry's immutable id.

    Only users with a link are ever removed by a sync: local superusers and users of other
    backends have none. ``removed_at`` is set when removal callbacks ran (entry gone or
    disabled) and cleared when the account comes back.
    """

    REASON_MISSING = "missing"
    REASON_DISABLED = "disabled"
    REASONS = [(REASON_MISSING, "gone from the directory"), (REASON_DISABLED, "disabled")]

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="directory_link"
    )
    guid = models.CharField("directory id", max_length=64, unique=True)
    dn = models.TextField("distinguished name")
    server = models.CharField(max_length=255, blank=True)
    object_sid = models.CharField(max_length=184, blank=True)
    photo_digests = models.JSONField(default=dict, blank=True)
    first_seen = models.DateTimeField(auto_now_add=True)
    #: When a run last wrote a change of this entry (an unchanged entry costs no write).
    last_changed = models.DateTimeField(null=True, blank=True)
    removed_at = models.DateTimeField(null=True, blank=True)
    removal_reason = models.CharField(max_length=16, choices=REASONS, blank=True)

    class Meta:
        verbose_name = "directory identity"
        verbose_name_plural = "directory identities"

    def __str__(self) -> str:
        return self.dn


class DirectoryGroup(models.Model):
    """Ties a Django group to its directory entry. Only linked groups have synced memberships."""

    group = models.OneToOneField(Group, on_delete=models.CASCADE, related_name="directory_link")
    guid = models.CharField("directory id", max_length=64, unique=True)
    dn = models.TextField("distinguished name")
    object_sid = models.CharField(max_length=184, blank=True)
    last_changed = models.DateTimeField(null=True, blank=True)
    removed_at = models.DateTimeField(null=True, blank=True)
    # Written by batch runs only (a login does not read member lists); None until one has.
    #: the direct member keys (normalized DNs, or lower-case uids), sorted: an incremental run
    #: compares them with the directory's to find exactly whose memberships may have moved
    member_keys = models.JSONField(null=True, blank=True, editable=False)
    #: :func:`adldap_auth.groups.member_digest` of ``member_keys``: full runs compare only this
    member_digest = models.CharField(max_length=64, blank=True, editable=False)
    #: guids of the directory groups this group is a direct member of: the nesting that a
    #: login on a server without ``tokenGroups`` uses instead of reading every group
    parent_guids = models.JSONField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "directory group"

    def __str__(self) -> str:
        return self.dn


class SyncRun(models.Model):
    """One batch run: what it did, and whether it completed."""

    MODE_FULL = "full"
    MODE_INCREMENTAL = "incremental"
    MODES = [(MODE_FULL, "full"), (MODE_INCREMENTAL, "incremental")]

    STATUS_RUNNING = "running"
    STATUS_SUCCESS = "success"
    STATUS_PARTIAL = "partial"  # completed, but some entries were skipped or removals refused
    STATUS_FAILED = "failed"
    STATUSES = [
        (STATUS_RUNNING, "running"),
        (STATUS_SUCCESS, "success"),
        (STATUS_PARTIAL, "partial"),
        (STATUS_FAILED, "failed"),
    ]

    mode = models.CharField(max_length=16, choices=MODES)
    mode_reason = models.CharField(max_length=255, blank=True)
    dry_run = models.BooleanField(default=False)
    server = models.CharField(max_length=255, blank=True)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=STATUSES, default=STATUS_RUNNING)
    counts = models.JSONField(default=dict, blank=True)
    ldap_searches = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    problems = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-started_at"]
        get_latest_by = "started_at"

    def __str__(self) -> str:
        return f"{self.mode} run {self.started_at:%Y-%m-%d %H:%M:%S} ({self.status})"

    @property
    def duration(self):
        return self.finished_at - self.started_at if self.finished_at else None


class SyncMarker(models.Model):
    """Where the last successful run left off on one server, for incremental runs."""

    server = models.CharField(max_length=255, unique=True)
    invocation_id = models.CharField(max_length=64, blank=True)
    highest_usn = models.BigIntegerField(null=True, blank=True)
    timestamp = models.CharField(max_length=32, blank=True)
    incrementals_since_full = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.server


class SyncLock(models.Model):
    """A row per named lock; holding it means one batch run at a time across hosts."""

    name = models.CharField(max_length=64, primary_key=True)
    owner = models.CharField(max_length=255, blank=True)
    acquired_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.name
