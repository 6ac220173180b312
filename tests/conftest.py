"""Fixtures shared by the suite: the lab directory servers (slapd and Samba AD), a "site"
in subprocesses sharing the test database, with a Redis broker (:mod:`tests.site`), and a
MEDIA_ROOT of each test's own."""

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.lab.fixtures_samba",
    "tests.lab.fixtures_slapd",
    "tests.lab.fixtures_topology",
    "tests.site",
]


@pytest.fixture
def media(settings, tmp_path) -> Path:
    """A MEDIA_ROOT of the test's own, so that every file in it can be accounted for."""
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = str(root)
    return root


@pytest.fixture(autouse=True)
def _fresh_login_graphs():
    """Django's cache outlives each test's database: forget the nesting versions and graphs
    that a previous test stored there."""
    from django.core.cache import cache

    from adldap_auth.nesting import forget_loaded

    cache.clear()
    forget_loaded()
    yield
    cache.clear()
    forget_loaded()
