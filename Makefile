# adldap-auth: `make demo` and `make test` work on a fresh Debian machine (as root, or with
# the Debian packages of .ci/install-system-deps already installed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# pytest-xdist: two worker processes (2 cores here and in CI; the tests also wait on servers
# and subprocesses). `--dist loadgroup` keeps every Samba test in one worker, the DC's ports
# being machine-wide (tests/lab/fixtures_samba.py). `XDIST=` runs a pass in one process.
XDIST ?= -n 2 --dist loadgroup

.PHONY: demo check test test-sqlite test-postgres test-mariadb test-databases test-user-models test-topology lint deps venv bench docs clean sdist-check

deps:
	sh .ci/install-system-deps

$(VENV)/.installed: setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,celery]"
	touch $@

venv: deps $(VENV)/.installed

# About 8 minutes on 2 cores: lint, docs, the whole suite on SQLite, the custom user models,
# then the tests whose outcome can depend on the database (marker `db`, tests/conftest.py) on
# PostgreSQL and MariaDB, the two passes at once. The Django x Python matrix (`make
# test-matrix`) and the topologies (`make test-topology`) are targets of their own; CI
# (.ci/run) runs all three.
test: venv lint docs test-sqlite test-user-models test-databases

# The edit-test loop (under 90 s): lint, then the tests of tests/unit and tests/slapd on SQLite,
# without the Samba DC and the long scenarios. `make test` runs everything.
check: venv
	$(VENV)/bin/ruff check adldap_auth tests example_site benchmarks
	$(PY) -m pytest -p no:cacheprovider -q -m "not samba and not slow" $(XDIST) tests/unit tests/slapd $(PYTEST_ARGS)

test-sqlite: venv
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# test-postgres and test-mariadb at once, each pass's output shown whole when it ends (no
# Samba test is marked `db`: the two passes never wait for the one DC of the machine).
test-databases: venv
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-postgres test-mariadb

# PostgreSQL at 127.0.0.1:5432 (database "test", trust auth): the tests marked `db`, then the
# custom user models. CI always has it; elsewhere the pass runs when the server answers.
test-postgres: venv
	@if $(PY) -c "import psycopg; psycopg.connect('host=127.0.0.1 port=5432 dbname=test user=postgres', connect_timeout=3).close()" 2>/dev/null; then \
		ADLDAP_TEST_DB=postgres $(PY) -m pytest -m db $(XDIST) $(PYTEST_ARGS) && \
		ADLDAP_TEST_DB=postgres $(MAKE) --no-print-directory test-user-models; \
	elif [ -n "$$CI" ]; then echo "PostgreSQL at 127.0.0.1:5432 is required in CI" >&2; exit 1; \
	else echo "PostgreSQL at 127.0.0.1:5432 not reachable: the PostgreSQL pass is not run"; fi

# MariaDB (or MySQL) at 127.0.0.1:3306 (database "test", user root, no password; the tests
# create test_test_gw0...), with the server's default case-insensitive collation: the tests
# marked `db`, then the custom user models. CI always has it; elsewhere the pass runs when the
# server answers.
test-mariadb: venv
	@if $(PY) -c "import MySQLdb; MySQLdb.connect(host='127.0.0.1', port=3306, user='root', password='', database='test', connect_timeout=3).close()" 2>/dev/null; then \
		ADLDAP_TEST_DB=mariadb $(PY) -m pytest -m db $(XDIST) $(PYTEST_ARGS) && \
		ADLDAP_TEST_DB=mariadb $(MAKE) --no-print-directory test-user-models; \
	elif [ -n "$$CI" ]; then echo "MariaDB at 127.0.0.1:3306 is required in CI" >&2; exit 1; \
	else echo "MariaDB at 127.0.0.1:3306 not reachable: the MariaDB pass is not run"; fi

# AUTH_USER_MODEL is fixed for a process: tests/slapd/test_custom_user_models.py runs once more
# for each custom user model, on the database of ADLDAP_TEST_DB (SQLite when unset). auth.User's
# tests of that module run in every pass above (it is marked `db`).
USER_MODEL_SETTINGS = tests.settings_person tests.settings_email_user
test-user-models: venv
	@for ds in $(USER_MODEL_SETTINGS); do \
		echo "AUTH_USER_MODEL of $$ds, database $${ADLDAP_TEST_DB:-sqlite}"; \
		$(PY) -m pytest --ds $$ds tests/slapd/test_custom_user_models.py $(PYTEST_ARGS) || exit 1; \
	done

# Several directory servers (a replicating pair of Samba AD DCs in network namespaces, 389-DS):
# root only, a few minutes; CI runs it. Plain pytest runs (test-sqlite, the edit-test loop)
# deselect these tests (marker "topology", see tests/lab/fixtures_topology.py).
test-topology: venv
	$(PY) -m pytest -m topology $(PYTEST_ARGS)

# Every supported Django x Python pair of tox.ini (label "matrix": Django 5.2 on Python 3.11 to
# 3.13, Django 6.0 and 6.1 on 3.12 and 3.13), unit and slapd tests on SQLite, TOX_PARALLEL pairs
# at a time (4 on 2 cores: the tests wait on slapd and subprocesses much of the time). About
# 8 minutes on its own: not part of `make test`; CI runs it after `make test` (.ci/run). The
# interpreters are found on PATH, pyenv's first when it has them. In CI a missing one is an
# error (the matrix is never silently smaller); elsewhere (a fresh Debian 12 has only 3.11) the
# matrix is skipped with a notice, like the database passes.
PYENV_ROOT ?= $(HOME)/.pyenv
MATRIX_PYTHONS = 3.11 3.12 3.13
TOX_PARALLEL ?= 4
empty :=
space := $(empty) $(empty)
MATRIX_PATH := $(subst $(space),:,$(wildcard $(addprefix $(PYENV_ROOT)/versions/,$(addsuffix .*/bin,$(MATRIX_PYTHONS)))))
.PHONY: test-matrix
test-matrix: venv
	@export PATH="$(MATRIX_PATH)$(if $(MATRIX_PATH),:)$$PATH"; \
	for v in $(MATRIX_PYTHONS); do \
		command -v python$$v >/dev/null && continue; \
		if [ -n "$$CI" ]; then echo "python$$v not found: CI runs the whole Django x Python matrix (pyenv install $$v)" >&2; exit 1; fi; \
		echo "python$$v not found: the Django x Python matrix is not run here (pyenv install $$v to run it)"; exit 0; \
	done; \
	start=$$(date +%s); \
	$(VENV)/bin/tox run-parallel -m matrix -p $(TOX_PARALLEL) --parallel-no-spinner $(if $(PYTEST_ARGS),-- $(PYTEST_ARGS)) || exit 1; \
	echo "Django x Python matrix: $$(( $$(date +%s) - start )) s"

lint: venv
	$(VENV)/bin/ruff check adldap_auth tests example_site benchmarks

demo: venv
	$(PY) -m example_site.demo $(DEMO_ARGS)

bench: venv
	$(PY) -m benchmarks

# The documentation (docs/, mkdocs.yml), built into build/docs; warnings are errors.
docs: venv
	$(VENV)/bin/mkdocs build --strict

# The sdist and the wheel as users get them (.ci/package_check.py): the sdist's tests pass in a
# fresh venv, the wheel runs migrate + syncldap full in a new project with a custom user model,
# the docs build with MkDocs alone. Several minutes (fresh venvs, installs): not in `make test`.
sdist-check: venv
	$(PY) .ci/package_check.py $(PACKAGE_CHECK_ARGS)

clean:
	rm -rf $(VENV) .lab-cache .pytest_cache demo-data
