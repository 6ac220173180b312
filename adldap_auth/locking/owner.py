"""Who holds the run lock (process, host, machine identity) and the lock's errors, shared
by the lock row and the PostgreSQL advisory lock."""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from django.utils import timezone

from ..conf import get_config

#: The heartbeat is written at most this often (seconds), however often the sync calls it
#: (every call still checks that the lock is held).
HEARTBEAT_INTERVAL = 30.0


@dataclass(frozen=True)
class LockOwner:
    """Who holds a lock: process id, host name, and an opaque machine/instance identity."""

    pid: int | None
    host: str
    machine: str = ""
    token: str = ""

    @classmethod
    def current(cls) -> LockOwner:
        return cls(os.getpid(), _hostname(), _machine_id(), secrets.token_hex(4))

    @classmethod
    def parse(cls, text: str) -> LockOwner:
        """Read :meth:`__str__`'s format, ``pid@host#machine#token``; tolerant of anything."""
        who, _, rest = text.partition("#")
        machine, _, token = rest.partition("#")
        pid_text, _, host = who.partition("@")
        try:
            pid = int(pid_text)
        except ValueError:
            return cls(None, who, machine, token)
        return cls(pid, host, machine, token)

    def __str__(self) -> str:
        # The owner column holds 255 characters; host names can be 253.
        tail = f"#{self.machine}#{self.token}"
        return f"{self.pid}@{self.host}"[: 255 - len(tail)] + tail

    def describe(self) -> str:
        return f"pid {self.pid if self.pid is not None else '?'} on host {self.host or '?'}"

    def same_machine(self) -> bool:
        return bool(self.machine) and self.machine == _machine_id()

    def is_dead(self) -> bool:
        """True only when certain: a pid of this machine that no longer exists."""
        if self.pid is None or not self.same_machine():
            return False
        if self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except (PermissionError, OSError):
            return False
        return False


@dataclass(frozen=True)
class LockState:
    held: bool
    owner: LockOwner | None
    since: datetime | None
    heartbeat: datetime | None


class LockHeld(Exception):
    """Another run holds the lock. Nothing was done and nothing was recorded."""

    def __init__(self, owner: LockOwner | None, since: datetime | None):
        self.owner = owner
        self.since = since
        if since is not None and timezone.is_aware(since):
            since_local = timezone.localtime(since)
        else:
            since_local = since  # USE_TZ = False: a naive datetime in TIME_ZONE already
        when = (
            f"since {since_local:%Y-%m-%d %H:%M:%S %Z}".rstrip()
            if since_local
            else "(start time unknown)"
        )
        who = owner.describe() if owner else "holder unknown"
        super().__init__(f"another sync is running {when}, {who}")


class LockLost(Exception):
    """This run no longer holds the lock: taken over after a silence beyond
    LDAP_SYNC_LOCK_STALE_AFTER, or (PostgreSQL) the lock's database session was ended."""


def _hostname() -> str:
    return socket.gethostname()


@lru_cache(maxsize=1)
def _machine_id() -> str:
    """Host name + boot id + pid namespace: equal only where ``os.kill(pid, 0)`` is meaningful."""
    parts = [_hostname()]
    for path in ("/proc/sys/kernel/random/boot_id", "/etc/machine-id"):
        try:
            with open(path) as file:
                parts.append(file.read().strip())
            break
        except OSError:
            continue
    with suppress(OSError):
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:12]


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_try_advisory_lock``, derived from the lock's name."""
    digest = hashlib.sha256(f"adldap_auth.lock:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def stale_after() -> timedelta:
    """LDAP_SYNC_LOCK_STALE_AFTER: how long a silent holder keeps the lock."""
    return timedelta(seconds=get_config().LOCK_STALE_AFTER)
