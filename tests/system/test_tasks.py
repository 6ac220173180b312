"""The Celery task: a real worker (and beat) process, a real Redis broker, a real directory.

The worker runs ``celery -A tests.celery_app worker --pool=solo`` with the test's database
(:mod:`tests.site`) and a queue of its own, so another worker on the same Redis never takes
the test's messages. Retries are checked in this process with ``apply()`` (eager).
"""

from __future__ import annotations

import ast
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from celery import Celery
from django.test import override_settings

import adldap_auth
from adldap_auth import tasks
from adldap_auth.directory import DirectoryUnavailable
from adldap_auth.locking import run_lock
from adldap_auth.models import SyncRun
from tests.helpers import slapd_settings
from tests.lab.generator import synthetic
from tests.site import wait_for
from tests.slapd.test_locking import NOWHERE, site_state

PACKAGE = Path(adldap_auth.__file__).parent


class CeleryProcesses:
    """A worker (and optionally beat) of the site, on a queue of their own."""

    def __init__(self, site, redis_url: str, directory_settings: dict, tmp_path: Path):
        self.site = site
        self.tmp_path = tmp_path
        self.queue = f"adldap-test-{uuid.uuid4().hex[:10]}"
        self.settings = {
            **directory_settings,
            "CELERY_BROKER_URL": redis_url,
            "CELERY_RESULT_BACKEND": redis_url,
            "CELERY_TASK_DEFAULT_QUEUE": self.queue,
            "CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP": True,
            "CELERY_WORKER_HIJACK_ROOT_LOGGER": False,
        }
        self.client = Celery("adldap-test-client", broker=redis_url, backend=redis_url)
        self.client.conf.task_default_queue = self.queue
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, kind: str, *args: str, settings: dict | None = None) -> subprocess.Popen:
        log = open(self.tmp_path / f"{kind}.log", "w")  # noqa: SIM115 (closed with the process)
        process = self.site.start(
            "-m", "celery", "-A", "tests.celery_app", kind, "--loglevel=INFO", *args,
            settings={**self.settings, **(settings or {})}, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        self.processes[kind] = process
        return process

    def start_worker(self) -> subprocess.Popen:
        return self.start(
            "worker", "--pool=solo", "-Q", self.queue, "-n", f"{self.queue}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        )  # fmt: skip

    def log(self, kind: str) -> str:
        return (self.tmp_path / f"{kind}.log").read_text()

    def call(self, name: str, args: list | None = None, timeout: float = 120):
        result = self.client.send_task(name, args=args or [], queue=self.queue)
        try:
            return result.get(timeout=timeout)
        except Exception as error:
            raise AssertionError(
                f"{name} failed: {error!r}\n--- worker log ---\n{self.log('worker')}"
            ) from error

    def stop(self, kind: str) -> None:
        process = self.processes.pop(kind, None)
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        for kind in list(self.processes):
            self.stop(kind)
        # Leave nothing behind on a shared Redis: beat may have queued more runs.
        with self.client.connection_for_write() as conn:
            conn.default_channel.queue_delete(self.queue)
        self.client.close()


@pytest.fixture
def celery_site(site_db, redis_url, make_slapd, tmp_path):
    spec = synthetic(users=30, groups=5, seed=7)
    server = make_slapd(spec=spec)
    processes = CeleryProcesses(site_db, redis_url, slapd_settings(server), tmp_path)
    processes.spec = spec
    try:
        yield processes
    finally:
        processes.close()


def test_worker_runs_the_task_and_returns_the_run_summary(celery_site):
    site = celery_site.site
    celery_site.start_worker()
    summary = celery_site.call("adldap_auth.tasks.syncldap", ["full"])
    enabled = {user.key for user in celery_site.spec.users if not user.disabled}
    assert summary["status"] == "success", summary
    assert summary["mode"] == "full" and summary["counts"]["users_created"] == len(enabled)
    runs = site.query("SELECT id, mode, status, counts FROM adldap_auth_syncrun")
    assert [(r[0], r[1], r[2]) for r in runs] == [(summary["run_id"], "full", "success")]
    assert site.json_value(runs[0][3]) == summary["counts"]
    usernames, groups = site_state(site)
    closure = celery_site.spec.expected_groups()
    assert usernames == enabled
    assert groups == {key: closure[key] for key in enabled}

    # The old package's name, with no argument (as its beat schedules call it): by settings.
    again = celery_site.call("adldap_sync.tasks.syncldap")
    assert again["status"] == "success" and again["run_id"] != summary["run_id"]
    assert again["mode"] == "incremental", again["mode_reason"]
    assert site.query("SELECT count(*) FROM adldap_auth_syncrun") == [(2,)]


def test_beat_schedule_of_the_old_package_triggers_a_run(celery_site):
    site = celery_site.site
    celery_site.start_worker()
    schedule = {
        "synchronize_local_users": {"task": "adldap_sync.tasks.syncldap", "schedule": 1.0}
    }
    celery_site.start(
        "beat", "--schedule", str(celery_site.tmp_path / "beat-schedule"),
        settings={"CELERY_BEAT_SCHEDULE": schedule, "CELERY_BEAT_MAX_LOOP_INTERVAL": 1},
    )  # fmt: skip

    def finished_runs() -> int:
        return site.query(
            "SELECT count(*) FROM adldap_auth_syncrun WHERE status = %s", ("success",)
        )[0][0]

    try:
        wait_for(lambda: finished_runs() >= 1, 120, "a run sent by beat", interval=0.2)
    except AssertionError:
        raise AssertionError(
            f"--- beat ---\n{celery_site.log('beat')}\n--- worker ---\n{celery_site.log('worker')}"
        ) from None
    celery_site.stop("beat")
    assert "Sending due task synchronize_local_users (adldap_sync.tasks.syncldap)" in (
        celery_site.log("beat")
    )
    first = site.query("SELECT mode FROM adldap_auth_syncrun ORDER BY started_at")[0]
    assert first == ("full",)  # the first run is full, whatever the mode asked


# -- in this process ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_directory_outage_is_retried_with_backoff_then_raised():
    with override_settings(**NOWHERE):
        outcome = tasks.syncldap.apply(args=["full"])
    assert outcome.failed()
    assert isinstance(outcome.result, DirectoryUnavailable)
    runs = list(SyncRun.objects.values_list("status", flat=True))
    assert runs == ["failed"] * (tasks.MAX_RETRIES + 1)
    assert tasks.syncldap.autoretry_for == (DirectoryUnavailable,)
    assert tasks.syncldap.retry_backoff is True


@pytest.mark.django_db
def test_a_failure_that_retrying_cannot_fix_returns_the_failed_summary(slapd_lab):
    wrong = slapd_settings(slapd_lab, LDAP_SYNC_BIND_PASS="wrong password")
    with override_settings(**wrong):
        outcome = tasks.syncldap.apply(args=["full"])
    assert outcome.successful()
    summary = outcome.result
    assert summary["status"] == "failed" and "invalid credentials" in summary["error"]
    assert summary["error_kind"] == "DirectoryError"
    assert SyncRun.objects.count() == 1


@pytest.mark.django_db
def test_while_another_run_holds_the_lock_the_task_is_skipped_and_records_nothing():
    with override_settings(**NOWHERE), run_lock():
        outcome = tasks.syncldap.apply(args=[None])
    assert outcome.successful()
    assert outcome.result["status"] == "skipped"
    assert outcome.result["error"].startswith("another sync is running since")
    assert not SyncRun.objects.exists()


def test_wrong_mode_is_refused():
    outcome = tasks.syncldap.apply(args=["everything"])
    assert outcome.failed() and isinstance(outcome.result, ValueError)


def test_both_names_are_registered_with_the_same_options():
    from celery import current_app

    for name in ("adldap_auth.tasks.syncldap", "adldap_sync.tasks.syncldap"):
        task = current_app.tasks[name]
        assert task.max_retries == tasks.MAX_RETRIES
        assert task.autoretry_for == (DirectoryUnavailable,)


def test_celery_is_imported_by_tasks_only():
    importers = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            if any(name == "celery" or name.startswith("celery.") for name in names):
                importers.append(path.relative_to(PACKAGE).as_posix())
    assert sorted(set(importers)) == ["tasks.py"]


def test_the_package_works_without_celery_installed():
    code = (
        "import sys; sys.modules['celery'] = None\n"
        "import django; django.setup()\n"
        "import adldap_auth.sync, adldap_auth.admin, adldap_auth.locking\n"
        "from django.core.management import call_command\n"
        "from django.core.management.commands import check\n"
        "call_command('check')\n"
        "try:\n"
        "    import adldap_auth.tasks\n"
        "except ImportError:\n"
        "    print('tasks need celery')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**__import__("os").environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        cwd=PACKAGE.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "tasks need celery" in done.stdout
