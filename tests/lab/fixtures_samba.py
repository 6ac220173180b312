"""pytest plugin: the Samba AD domain controller of the test lab.

Enable with ``pytest_plugins = ["tests.lab.fixtures_samba"]`` in ``tests/conftest.py`` (or
``-p tests.lab.fixtures_samba``).

* ``samba_dc`` (function): the running DC loaded with :func:`tests.lab.spec.company`, one for
  the whole session (started by the first test that needs it). Shared by every test of the
  session: use it for tests that only read (and bind). A test that stops it must start it
  again.
* ``samba_clean`` (function): the same DC, guaranteed in template state when the test starts,
  and put back after the test if the test changed it. "Changed" means
  :meth:`~tests.lab.samba.SambaDC.admin_connection` was used, the DC is not running, or the
  rootDSE ``highestCommittedUSN`` moved (any write, including the ``lastLogonTimestamp`` a
  user's first bind writes). A reset costs about 0.5-1 s, only when needed. Tests that
  mutate the directory (or stop the DC) must use ``samba_clean``.
* ``wrong_ca_file`` (session): a CA certificate that did not sign the lab's server
  certificate, for negative TLS tests.

Tests using these fixtures get the ``samba`` marker automatically (``-m "not samba"``
deselects them), and under pytest-xdist the group ``samba``: with ``--dist loadgroup`` one
worker runs them all, so workers never wait for each other's DC. The DC is never skipped: if
samba cannot start, the fixture errors out.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.certs import make_wrong_ca
from tests.lab.samba import SambaDC, lab_lock
from tests.lab.spec import company

SAMBA_FIXTURES = {"samba_dc", "samba_clean"}
#: The pytest-xdist group of every ``samba`` test (one worker holds the DC).
SAMBA_GROUP = "samba"
#: ``workerinput`` key: the file where workers list the ids of the Samba tests.
SAMBA_IDS_INPUT = "adldap_samba_ids"
SAMBA_IDS_DIR = pytest.StashKey[Path]()

_launched: list[SambaDC] = []


def _notifier(config: pytest.Config) -> Callable[[str], None]:
    """Print past pytest's output capture: a wait for the lock or a build should be visible."""
    capture = config.pluginmanager.getplugin("capturemanager")

    def notify(message: str) -> None:
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print(f"\n[samba lab] {message}", file=sys.stderr, flush=True)

    return notify


class _Lab:
    """This process's DC and the machine-wide lab lock it holds: taken at the first test that
    needs the DC, given back at the end of the session, or as soon as no more Samba tests
    follow in a pytest-xdist worker (:func:`pytest_runtest_teardown`)."""

    def __init__(self) -> None:
        self.dc: SambaDC | None = None
        self._held: contextlib.ExitStack | None = None

    def get(self, config: pytest.Config) -> SambaDC:
        if self.dc is None:
            notify = _notifier(config)
            with contextlib.ExitStack() as held:
                held.enter_context(lab_lock(notify=notify))
                dc = SambaDC.launch(company(), notify)
                held.callback(dc.close)
                _launched.append(dc)
                self.dc, self._held = dc, held.pop_all()
        return self.dc

    def release(self) -> None:
        held, self._held, self.dc = self._held, None, None
        if held is not None:
            held.close()


_lab = _Lab()


@pytest.fixture
def samba_dc(pytestconfig: pytest.Config) -> SambaDC:
    """The lab DC, the same one for every test of the session (holds the lab lock)."""
    return _lab.get(pytestconfig)


@pytest.fixture
def samba_clean(samba_dc: SambaDC) -> Iterator[SambaDC]:
    """The lab DC in template state; reset again after the test if it was changed."""
    samba_dc.ensure_clean()
    yield samba_dc
    samba_dc.ensure_clean()


@pytest.fixture(scope="session")
def wrong_ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_wrong_ca(tmp_path_factory.mktemp("wrong-ca"))


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests that need the DC ``samba``; under pytest-xdist, put them all in one
    worker (``--dist loadgroup``, :func:`pytest_xdist_make_scheduler`): the DC's ports are
    machine-wide, so a second worker would wait for the first one's DC to stop."""
    grouped = config.pluginmanager.hasplugin("xdist")
    samba_ids = []
    for item in items:
        if SAMBA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.samba)
        if grouped and item.get_closest_marker("samba"):
            item.add_marker(pytest.mark.xdist_group(SAMBA_GROUP))
            samba_ids.append(item.nodeid)
    ids_file = getattr(config, "workerinput", {}).get(SAMBA_IDS_INPUT)
    if ids_file:  # every worker collects the same tests: the last write wins, atomically
        part = Path(f"{ids_file}.{config.workerinput['workerid']}")
        part.write_text("\n".join(samba_ids))
        part.replace(ids_file)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """(pytest-xdist controller) Tell each worker where to list the tests that need the DC."""
    node.workerinput[SAMBA_IDS_INPUT] = str(_samba_ids_file(node.config))


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup`` whose group ``samba`` is read from the workers' list.

    pytest-xdist's own loadgroup finds groups in a suffix it appends to the node ids, which
    pytest 9.2 no longer shows (pytest-xdist issue 1386): the Samba tests would be spread over
    the workers, each waiting for the other's DC. This scheduler works with or without it.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class SambaGroupScheduling(LoadGroupScheduling):
        samba_ids: set[str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.samba_ids is None:  # first called once every worker has collected
                path = _samba_ids_file(config)
                self.samba_ids = set(path.read_text().split("\n")) if path.exists() else set()
            return SAMBA_GROUP if nodeid in self.samba_ids else super()._split_scope(nodeid)

    return SambaGroupScheduling(config, log)


def _samba_ids_file(config: pytest.Config) -> Path:
    """The controller's file of Samba test ids (a temporary directory of the run's own)."""
    if SAMBA_IDS_DIR not in config.stash:
        config.stash[SAMBA_IDS_DIR] = Path(tempfile.mkdtemp(prefix="adldap-xdist-"))
        config.add_cleanup(lambda: shutil.rmtree(config.stash[SAMBA_IDS_DIR], True))
    return config.stash[SAMBA_IDS_DIR] / "samba-tests.txt"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """In a pytest-xdist worker of ``--dist loadgroup``, the group ``samba`` comes as one block:
    after its last test, stop the DC and give the lab lock to whoever waits for it (another
    pass of ``make test``, another checkout) instead of holding it to the end of the session."""
    yield
    grouped = getattr(item.config.option, "loadgroup", False)  # set in loadgroup workers
    last = nextitem is None or not nextitem.get_closest_marker("samba")
    if _lab.dc is not None and grouped and last:
        _lab.release()


def pytest_sessionfinish() -> None:
    _lab.release()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Show where the lab's time went (``build_*``: when the template was built)."""
    for dc in _launched:
        timings = ", ".join(f"{name} {sec:.2f}s" for name, sec in sorted(dc.timings.items()))
        origin = "built now" if dc.built_now else "cached template"
        terminalreporter.write_line(f"Samba lab ({dc.template.name}, {origin}): {timings}")
