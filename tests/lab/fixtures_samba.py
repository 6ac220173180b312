"""pytest plugin: the Samba AD domain controller of the test lab.

Enable with ``pytest_plugins = ["tests.lab.fixtures_samba"]`` in ``tests/conftest.py`` (or
``-p tests.lab.fixtures_samba``).

* ``samba_dc`` (session): the running DC loaded with :func:`tests.lab.spec.company`. Shared by
  every test of the session: use it for tests that only read (and bind). A test that stops it
  must start it again.
* ``samba_clean`` (function): the same DC, guaranteed in template state when the test starts,
  and put back after the test if the test changed it. "Changed" means
  :meth:`~tests.lab.samba.SambaDC.admin_connection` was used, the DC is not running, or the
  rootDSE ``highestCommittedUSN`` moved (any write, including the ``lastLogonTimestamp`` a
  user's first bind writes). A reset costs about 0.5-1 s, only when needed. Tests that
  mutate the directory (or stop the DC) must use ``samba_clean``.
* ``wrong_ca_file`` (session): a CA certificate that did not sign the lab's server
  certificate, for negative TLS tests.

Tests using these fixtures get the ``samba`` marker automatically (``-m "not samba"``
deselects them). The DC is never skipped: if samba cannot start, the fixture errors out.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.lab.certs import make_wrong_ca
from tests.lab.samba import SambaDC, lab_lock
from tests.lab.spec import company

SAMBA_FIXTURES = {"samba_dc", "samba_clean"}

_launched: list[SambaDC] = []


def _notifier(config: pytest.Config) -> Callable[[str], None]:
    """Print past pytest's output capture: a wait for the lock or a build should be visible."""
    capture = config.pluginmanager.getplugin("capturemanager")

    def notify(message: str) -> None:
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print(f"\n[samba lab] {message}", file=sys.stderr, flush=True)

    return notify


@pytest.fixture(scope="session")
def samba_dc(pytestconfig: pytest.Config) -> Iterator[SambaDC]:
    """The lab DC for the whole session (holds the machine-wide lab lock while it runs)."""
    notify = _notifier(pytestconfig)
    with lab_lock(notify=notify):
        dc = SambaDC.launch(company(), notify)
        _launched.append(dc)
        try:
            yield dc
        finally:
            dc.close()


@pytest.fixture
def samba_clean(samba_dc: SambaDC) -> Iterator[SambaDC]:
    """The lab DC in template state; reset again after the test if it was changed."""
    samba_dc.ensure_clean()
    yield samba_dc
    samba_dc.ensure_clean()


@pytest.fixture(scope="session")
def wrong_ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_wrong_ca(tmp_path_factory.mktemp("wrong-ca"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SAMBA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.samba)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Show where the lab's time went (``build_*``: when the template was built)."""
    for dc in _launched:
        timings = ", ".join(f"{name} {sec:.2f}s" for name, sec in sorted(dc.timings.items()))
        origin = "built now" if dc.built_now else "cached template"
        terminalreporter.write_line(f"Samba lab ({dc.template.name}, {origin}): {timings}")
