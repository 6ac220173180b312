"""pytest plugin: a "site" in other processes (``manage.py``, Celery worker and beat) that shares
the test's database, and a Redis broker.

* ``site_db`` (function): a database that subprocesses and the test both see. On PostgreSQL
  and MariaDB (``ADLDAP_TEST_DB=postgres`` / ``mariadb``) the test database itself, with
  ``transactional_db`` so that what the test writes is committed and what subprocesses write
  is flushed afterwards. On SQLite a
  migrated *file* database of the test's own (the suite's ``:memory:`` one is private to the
  test process). ``site_db.query(sql)`` reads it with plain SQL on either.
* ``redis_url`` (session): Redis at 127.0.0.1:6379 when it answers (CI), else a
  ``redis-server`` (Debian package redis-server) started on a free port for the session.

``Site`` runs ``python -m django`` commands with :mod:`tests.site_settings`, passing the
database and any settings (``LDAP_SYNC_*`` of a lab server, ``CELERY_*``) as JSON.

:func:`hold_first_user` is a ``LDAP_SYNC_USER_CALLBACKS`` hook for tests that need a run to stay
in progress: it creates ``$ADLDAP_STARTED_FILE`` and waits for ``$ADLDAP_RELEASE_FILE``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


_ENGINE_VENDORS = {
    "django.db.backends.postgresql": "postgresql",
    "django.db.backends.mysql": "mysql",
}


class Site:
    """Environment and helpers for subprocesses of a site on ``db`` (a DATABASES entry)."""

    def __init__(self, db: dict[str, Any], sqlite_path: Path | None = None):
        self.db = db
        self.sqlite_path = sqlite_path
        self.vendor = "sqlite" if sqlite_path else _ENGINE_VENDORS.get(db["ENGINE"], db["ENGINE"])

    def env(self, settings: dict[str, Any] | None = None, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE="tests.site_settings",
            ADLDAP_SITE_DB=json.dumps(self.db),
            ADLDAP_SITE_SETTINGS=json.dumps(settings or {}),
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def start(self, *argv: str, settings: dict[str, Any] | None = None, **popen: Any):
        """Start ``python <argv>`` in the site (a ``subprocess.Popen``, text mode).

        ``extra_env`` adds environment variables; output is piped unless told otherwise.
        """
        env = self.env(settings, **popen.pop("extra_env", {}))
        return subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            env=env,
            stdout=popen.pop("stdout", subprocess.PIPE),
            stderr=popen.pop("stderr", subprocess.PIPE),
            text=True,
            **popen,
        )

    def manage(self, *args: str, settings: dict[str, Any] | None = None, **popen: Any):
        """Start ``manage.py <args>`` (``python -m django``)."""
        return self.start("-m", "django", *args, settings=settings, **popen)

    def run_manage(self, *args: str, settings=None, timeout: float = 120, **popen: Any):
        process = self.manage(*args, settings=settings, **popen)
        stdout, stderr = process.communicate(timeout=timeout)
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    def execute(self, sql: str, params: tuple = ()) -> None:
        """Run a writing SQL statement (``%s`` placeholders), committed."""
        if self.sqlite_path:
            with sqlite3.connect(self.sqlite_path, timeout=30) as conn:
                conn.execute(sql.replace("%s", "?"), params)
            return
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(sql, params)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of a plain SQL query (``%s`` placeholders) on the site's database."""
        if self.sqlite_path:
            with sqlite3.connect(self.sqlite_path, timeout=30) as conn:
                return list(conn.execute(sql.replace("%s", "?"), params).fetchall())
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall())

    def json_value(self, value: Any) -> Any:
        """A JSONField value as read by :meth:`query` (text on SQLite and MariaDB, decoded on
    PostgreSQL)."""
        return json.loads(value) if isinstance(value, str) else value


def _migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / "site-template.sqlite3"
    if not path.exists():
        site = Site({"ENGINE": "django.db.backends.sqlite3", "NAME": str(path)}, path)
        done = site.run_manage("migrate", "--run-syncdb", "-v", "0")
        assert done.returncode == 0, done.stderr
    return path


@pytest.fixture
def site_db(
    request: pytest.FixtureRequest, tmp_path: Path, transactional_db: None
) -> Iterator[Site]:
    from django.db import connection

    if connection.vendor != "sqlite":
        settings = connection.settings_dict
        db = {
            key: settings[key]
            for key in ("ENGINE", "NAME", "HOST", "PORT", "USER", "PASSWORD", "OPTIONS")
            if settings.get(key) is not None
        }
        yield Site(db)
        return
    template = _migrated_sqlite_template(request.getfixturevalue("tmp_path_factory"))
    path = tmp_path / "site.sqlite3"
    shutil.copyfile(template, path)
    yield Site({"ENGINE": "django.db.backends.sqlite3", "NAME": str(path)}, path)


# -- Redis -----------------------------------------------------------------------------------


def _redis_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if _redis_answers("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
        return
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(binary):
        pytest.fail(
            "no Redis answers at 127.0.0.1:6379 and redis-server is not installed "
            "(Debian package redis-server; `make deps` installs it)"
        )
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not _redis_answers("127.0.0.1", port):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start on port {port}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


# -- hooks run inside the site's processes -----------------------------------------------------

_held = False


def hold_first_user(user: Any, attributes: Any, created: bool, updated: bool) -> None:
    """A user callback that keeps the run in progress until the test releases it (once)."""
    global _held
    if _held:
        return
    _held = True
    started = os.environ.get("ADLDAP_STARTED_FILE")
    release = os.environ.get("ADLDAP_RELEASE_FILE")
    if started:
        Path(started).write_text(str(os.getpid()))
    if release:
        deadline = time.monotonic() + 120
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.05)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Lines:
    """The stdout lines of a subprocess, read by a thread: ``Lines(process).next(timeout)``."""

    def __init__(self, process: subprocess.Popen):
        import queue
        import threading

        self.process = process
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.queue.put(line.rstrip("\n"))
        self.queue.put(None)

    def next(self, timeout: float = 60) -> str:
        import queue

        try:
            line = self.queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output from {self.process.args} in {timeout} s") from None
        if line is None:
            stderr = self.process.stderr.read() if self.process.stderr else ""
            raise AssertionError(f"{self.process.args} ended (exit {self.process.wait()}): {stderr}")
        return line
