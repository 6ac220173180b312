"""pytest plugin: directory topologies beyond one server (marker ``topology``).

* ``dc_pair`` (session): two replicating Samba AD DCs in network namespaces
  (:class:`tests.lab.dc_pair.DCPair`), started from a cached template.
* ``dc_pair_clean`` (function): the pair back in template state (both DCs running, nothing
  blocked). Every test that uses it may change, stop or cut off either DC.
* ``ds389`` (session) / ``ds389_clean`` (function): a 389 Directory Server on a free loopback
  port (:class:`tests.lab.ds389.DS389`), loaded with the lab company.

They need root (and ``ip netns``, Samba, 389-ds-base): without them the tests are skipped
with the reason, except in CI (``CI`` set), where a missing lab is a failure.

Selection: tests marked ``topology`` cost minutes of servers, so a plain ``pytest`` run (the
edit-test loop, ``make test``) deselects them; ``pytest -m topology`` (``make
test-topology``, CI) runs them, and so does naming their files or node ids on the command
line (``pytest tests/system/test_topology_dc_pair.py``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

TOPOLOGY = "topology"

_timings: list[tuple[str, dict[str, float]]] = []


def _notifier(config: pytest.Config) -> Callable[[str], None]:
    capture = config.pluginmanager.getplugin("capturemanager")

    def notify(message: str) -> None:
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print(f"\n[topology lab] {message}", file=sys.stderr, flush=True)

    return notify


def skip_or_fail(reason: str | None) -> None:
    """Skip with ``reason`` here; in CI the lab must run, so fail instead."""
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"topology lab unavailable in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def dc_pair(pytestconfig: pytest.Config) -> Iterator[Any]:
    from tests.lab.dc_pair import DCPair, pair_lock, unavailable_reason

    skip_or_fail(unavailable_reason())
    notify = _notifier(pytestconfig)
    with pair_lock(notify=notify):
        pair = DCPair.launch(notify=notify)
        _timings.append(("DC pair" + (" (built now)" if pair.built_now else " (cached template)"), pair.timings))
        try:
            yield pair
        finally:
            pair.close()


@pytest.fixture
def dc_pair_clean(dc_pair: Any) -> Iterator[Any]:
    """The pair in template state; marked dirty for the next test whatever this one did."""
    if dc_pair.dirty:
        dc_pair.reset()
    dc_pair.dirty = True
    yield dc_pair


@pytest.fixture(scope="session")
def ds389(pytestconfig: pytest.Config) -> Iterator[Any]:
    from tests.lab.ds389 import DS389, clear_leftovers, ds389_lock, unavailable_reason

    skip_or_fail(unavailable_reason())
    with ds389_lock():
        clear_leftovers()
        server = DS389.launch(notify=_notifier(pytestconfig))
        _timings.append(("389-DS", server.timings))
        try:
            yield server
        finally:
            server.close()


@pytest.fixture
def ds389_clean(ds389: Any) -> Iterator[Any]:
    """The 389-DS directory back to the lab company when a previous test changed it."""
    ds389.ensure_spec(ds389.initial_spec)
    yield ds389


def _named_on_command_line(config: pytest.Config) -> bool:
    return any(TOPOLOGY in arg for arg in config.args)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect ``topology`` tests unless ``-m`` mentions them or they were named."""
    if TOPOLOGY in (config.getoption("markexpr") or "") or _named_on_command_line(config):
        return
    kept, dropped = [], []
    for item in items:
        (dropped if item.get_closest_marker(TOPOLOGY) else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for name, timings in _timings:
        shown = ", ".join(f"{key} {sec:.2f}s" for key, sec in sorted(timings.items()))
        terminalreporter.write_line(f"{name}: {shown}")
