"""pytest plugin: lab OpenLDAP servers (:class:`tests.lab.slapd.LabSlapd`).

Enable with ``pytest_plugins = ["tests.lab.fixtures_slapd"]`` in ``tests/conftest.py``.

* ``slapd_lab`` (session): a running slapd loaded with :func:`tests.lab.spec.company` (the
  memberof overlay on, TLS on with the session CA). Shared by the whole session: tests may
  read and bind, not write. A test that stops it must start it again.
* ``make_slapd`` (function): a factory ``make_slapd(spec=None, *, start=True, **options)``
  returning new, started servers (options of :class:`LabSlapd`: ``overlays``,
  ``sizelimit``, ``tls``, ``offline``, ``access_log``, ``indexes``...); all of them are
  closed after the test. ``tls=True`` reuses the session CA (``slapd_certs``).
* ``slapd_fresh`` (function): ``make_slapd()`` with an empty directory (base entries and the
  reader account only), or with the spec given by indirect parametrization:
  ``@pytest.mark.parametrize("slapd_fresh", [spec], indirect=True)``.
* ``slapd_certs`` (session): the lab CA and server certificate shared by TLS servers.

Each server exposes ``uri``, ``ldaps_uri``, ``ca_file``, ``base_dn``, ``reader_dn``,
``reader_password``, ``root_dn``, ``root_password``, ``user_dn(key)``, ``group_dn(name)``,
``admin_connection()``, ``reader_connection()``, ``connect(...)``, ``sync_settings()``,
``spec``, ``apply(old, new)``, ``stop()``/``start()``/``restart()``, ``searches(since)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.lab.certs import Certs, make_certs
from tests.lab.slapd import LabSlapd
from tests.lab.spec import DirectorySpec, company

MakeSlapd = Callable[..., LabSlapd]


@pytest.fixture(scope="session")
def slapd_certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("slapd-certs"))


@pytest.fixture(scope="session")
def slapd_lab(slapd_certs: Certs) -> Iterator[LabSlapd]:
    """The lab company in one slapd for the whole session (read-only for tests)."""
    with LabSlapd(company(), certs=slapd_certs) as server:
        yield server


@pytest.fixture
def make_slapd(request: pytest.FixtureRequest) -> Iterator[MakeSlapd]:
    """A factory of new lab servers, all closed at the end of the test."""
    servers: list[LabSlapd] = []

    def make(spec: DirectorySpec | None = None, *, start: bool = True, **options: Any) -> LabSlapd:
        if options.pop("tls", False) and "certs" not in options:
            options["certs"] = request.getfixturevalue("slapd_certs")
        server = LabSlapd(spec, **options)
        servers.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def slapd_fresh(request: pytest.FixtureRequest, make_slapd: MakeSlapd) -> LabSlapd:
    """A new server for this test: empty, or loaded with the indirectly parametrized spec."""
    return make_slapd(getattr(request, "param", None))
