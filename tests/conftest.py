"""Fixtures shared by the suite: the lab directory servers (slapd and Samba AD)."""

pytest_plugins = ["tests.lab.fixtures_samba", "tests.lab.fixtures_slapd"]
