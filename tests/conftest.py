"""Fixtures shared by the suite: the lab directory servers (slapd and Samba AD), a "site"
in subprocesses sharing the test database, with a Redis broker (:mod:`tests.site`), and a
MEDIA_ROOT of each test's own."""

from pathlib import Path

import pytest

pytest_plugins = ["tests.lab.fixtures_samba", "tests.lab.fixtures_slapd", "tests.site"]


@pytest.fixture
def media(settings, tmp_path) -> Path:
    """A MEDIA_ROOT of the test's own, so that every file in it can be accounted for."""
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = str(root)
    return root
