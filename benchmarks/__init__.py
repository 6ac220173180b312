"""The benchmark harness of issue #8: ``python -m benchmarks`` (or ``make bench``).

Nothing here is imported by ``adldap_auth`` or by the test suite's timed tests (there are
none): the harness starts its own throwaway slapd, runs each scenario in its own process and
prints a Markdown table. See :mod:`benchmarks.harness` for what is measured and how.

This package must stay importable by the alternatives' virtualenv (Django, django-auth-ldap,
django-python3-ldap, no adldap-auth): modules import project code only inside functions.
"""
