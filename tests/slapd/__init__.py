"""Tests against lab OpenLDAP servers (slapd) started by the fixtures of tests.lab."""
