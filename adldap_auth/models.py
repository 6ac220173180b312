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
    #: The SID of the AD primary group (``primaryGroupID``) as last read: a change-feed run
    #: computes the memberships of users whose entry did not change from it.
    primary_group_sid = models.CharField(max_length=184, blank=True)
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

    class Meta:
        verbose_name = "directory group"

    def __str__(self) -> str:
        return self.dn


class GroupNode(models.Model):
    """A group of the membership scope, as the last complete batch run read it.

    The membership scope (``LDAP_SYNC_MEMBERSHIP_SEARCH``, by default ``LDAP_SYNC_BIND_SEARCH``)
    holds every group whose nesting counts, in the group scope or not, managed in Django or
    not. Written only at the end of a successful run, after the users' memberships: an
    incremental run compares the directory with this state, and a run that died before its
    end leaves the state it had not applied yet unwritten. Logins walk up ``parent_guids``.
    """

    guid = models.CharField("directory id", max_length=64, unique=True)
    dn = models.TextField("distinguished name")
    object_sid = models.CharField(max_length=184, blank=True)
    #: the Group fields mapped from the entry (LDAP_SYNC_GROUP_ATTRIBUTES), name included
    fields = models.JSONField(default=dict)
    #: whether the entry is in the group scope (LDAP_SYNC_GROUP_SEARCH and _FILTER)
    in_scope = models.BooleanField(default=False)
    #: the direct member keys (normalized DNs, or lower-case uids), sorted
    member_keys = models.JSONField(default=list)
    #: :func:`adldap_auth.groups.member_digest` of ``member_keys``: full runs compare only this
    member_digest = models.CharField(max_length=64)
    #: guids of the groups of the scope this group is a direct member of
    parent_guids = models.JSONField(default=list)

    class Meta:
        verbose_name = "group of the membership scope"
        verbose_name_plural = "groups of the membership scope"

    def __str__(self) -> str:
        return self.dn


class NestingState(models.Model):
    """One row: a version of the stored nesting, changed whenever a run rewrites it, so that
    logins in every process know when the nesting they hold is stale; and whether a batch run
    wrote memberships that the stored nesting does not describe yet."""

    version = models.CharField(max_length=64)
    written_at = models.DateTimeField()
    #: Set (committed) before a batch run's first membership write, cleared when that run
    #: stores its nesting: still set, the run died in between, and the next run rechecks every
    #: user's memberships instead of only those the stored nesting says moved.
    unsettled_since = models.DateTimeField(null=True, blank=True)


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
    #: Change-feed cookies by scope ("users", "groups"), for LDAP_SYNC_CHANGE_TRACKING
    #: "contentsync": what the server sent at the start of the last successful run.
    feed_cookies = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        # The name the documentation and ``syncldap --status`` use.
        verbose_name = "incremental marker"
        verbose_name_plural = "incremental markers"

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
