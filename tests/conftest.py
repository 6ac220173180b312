"""Fixtures shared by the suite: the lab directory servers (slapd and Samba AD), and a "site"
in subprocesses sharing the test database, with a Redis broker (:mod:`tests.site`)."""

pytest_plugins = ["tests.lab.fixtures_samba", "tests.lab.fixtures_slapd", "tests.site"]
