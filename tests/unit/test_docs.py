"""The documentation cannot drift from the code: settings, check ids, setting names in prose.

The tables of the settings, troubleshooting and migration pages are generated
(``docs/generate.py``) from :data:`adldap_auth.conf.DEFAULTS`, the check ids and the descriptions
of ``docs/settings_doc.py``, and committed in the pages; these tests fail when a committed table
differs from what the code produces, when a setting is added or removed without its
description, when a check id is missing from the troubleshooting page, and when a page names a
setting, a setting value or a check id that does not exist. ``make docs`` (``mkdocs build
--strict``) checks the links.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest
from django.core import checks as django_checks

from adldap_auth import conf
from adldap_auth.conf import messages as check_messages
from adldap_auth.conf import validation

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"adldap_auth_docs_{name}", DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _load("generate")
settings_doc = generate.load_settings_doc()
PAGES = sorted(DOCS.glob("*.md"))


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("block", sorted(generate.PAGES))
def test_generated_blocks_are_committed_and_current(block):
    text = page(generate.PAGES[block])
    assert text.count(generate.begin_marker(block)) == 1, "missing or changed begin marker"
    assert text.count(generate.end_marker(block)) == 1
    assert generate.update(text) == text, "run: python docs/generate.py"


def test_no_page_keeps_an_unexpanded_placeholder():
    for path in PAGES:
        assert not re.search(r"<!-- adldap-auth:[a-z-]+ -->", path.read_text(encoding="utf-8")), path


def test_pipes_in_table_cells_read_the_same_on_both_renderers():
    """GitHub needs ``\\|`` inside a code span in a table, MkDocs shows that backslash."""
    assert generate._cell("`'|'`") == "<code>'&#124;'</code>"
    assert generate._cell("a | b `c` ``d|e``") == "a \\| b `c` <code>d&#124;e</code>"
    row = next(line for line in page("settings.md").splitlines() if "MULTIVALUE_SEPARATOR`](" in line)
    assert "\\|" not in row and "<code>'&#124;'</code>" in row


# -- settings ----------------------------------------------------------------------------------


def test_every_setting_is_documented():
    missing = sorted(set(conf.DEFAULTS) - set(settings_doc.SETTINGS))
    assert not missing, f"add these to docs/settings_doc.py: {missing}"


def test_no_documented_setting_is_stale():
    stale = sorted(set(settings_doc.SETTINGS) - set(conf.DEFAULTS))
    assert not stale, f"not in adldap_auth.conf.DEFAULTS any more: {stale}"


@pytest.mark.parametrize("name", sorted(settings_doc.SETTINGS))
def test_setting_entry_is_complete(name):
    entry = settings_doc.SETTINGS[name]
    assert entry["section"] in settings_doc.SECTIONS
    for key in ("type", "description", "example"):
        assert isinstance(entry[key], str) and entry[key].strip(), key
    assert isinstance(entry["seed"], bool)
    assert ("compat" in entry) == entry["seed"], "seed settings (only) say how they carry over"
    # The example is Python a settings.py could hold.
    ast.parse(f"{conf.PREFIX}{name} = {entry['example']}")
    if conf.DEFAULTS[name] is None:
        assert "None" in entry["type"] or name in conf.REQUIRED, "the default None is a type"


def test_seed_settings_are_those_of_django_adldap_sync():
    from tests.unit.test_conf import SEED_DEFAULTS

    seed = {name for name, entry in settings_doc.SETTINGS.items() if entry["seed"]}
    assert seed == set(SEED_DEFAULTS)


#: Examples whose validation depends on the site (files, models or modules it has).
SITE_DEPENDENT = {
    "CA_FILE", "USER_EXTRA_PROFILES", "USER_PROFILE_ATTRIBUTES", "USER_CALLBACKS", "BIND_PASS"
}


@pytest.mark.parametrize(
    "name", sorted(n for n in settings_doc.SETTINGS if n not in SITE_DEPENDENT and n in conf.DEFAULTS)
)
def test_setting_example_passes_the_system_checks(name):
    import datetime

    value = eval(settings_doc.SETTINGS[name]["example"], {"datetime": datetime})  # noqa: S307
    messages = validation.VALIDATORS[name](name, value)
    assert not [m for m in messages if m.level >= django_checks.ERROR], messages


def test_settings_page_shows_every_setting_with_its_default():
    text = page("settings.md")
    assert "Not yet described" not in text
    for name in conf.DEFAULTS:
        full = conf.PREFIX + name
        assert f'<a id="{full}"></a>\n\n### `{full}`\n' in text
        assert f"Default: {generate.default_text(name)}." in text


def test_migration_page_lists_every_old_setting():
    text = page("migrate-adldap-sync.md")
    for name, entry in settings_doc.SETTINGS.items():
        if entry["seed"]:
            assert f"[`{conf.PREFIX}{name}`](settings.md#{conf.PREFIX}{name})" in text
    for old in settings_doc.OLD_ONLY:
        assert f"`{old}`" in text
    assert set(conf.ALIASES) <= set(settings_doc.OLD_ONLY)
    assert {conf.PREFIX + n for n in validation.FOREIGN_SETTINGS} & set(settings_doc.OLD_ONLY)


#: ``LDAP_SYNC_*`` names the pages may mention that are not settings (old or other packages').
NOT_SETTINGS = set(settings_doc.OLD_ONLY) | {conf.PREFIX + n for n in validation.FOREIGN_SETTINGS}
SETTING_RE = re.compile(r"\b(?:LDAP_)?LDAP_SYNC_[A-Z_]*[A-Z]\b")


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_pages_name_only_existing_settings(path):
    known = {conf.PREFIX + n for n in conf.DEFAULTS} | NOT_SETTINGS
    text = path.read_text(encoding="utf-8")
    unknown = sorted(set(SETTING_RE.findall(text)) - known - {"LDAP_SYNC_"})
    assert not unknown, unknown


#: A value given to a setting in prose or code: ``LDAP_SYNC_X = "v"``, `` `LDAP_SYNC_X` (`v`) ``.
SETTING_VALUE_RE = re.compile(
    r"\b(?P<name>LDAP_SYNC_[A-Z_]*[A-Z])(?P<sep> = |` \(`)"
    r"(?P<value>\"[^\"\n]*\"|'[^'\n]*'|-?\d+(?:\.\d+)?\b|\w+\b(?![.\[(]))"
)


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_pages_give_settings_only_values_they_accept(path):
    """`LDAP_SYNC_CHANGE_TRACKING` (`modifyTimestamp`) reads as a value: it must be one."""
    wrong = []
    for match in SETTING_VALUE_RE.finditer(path.read_text(encoding="utf-8")):
        name = match["name"].removeprefix(conf.PREFIX)
        if name not in validation.VALIDATORS or name in SITE_DEPENDENT:
            continue
        raw = match["value"]
        try:
            value = ast.literal_eval(raw)
        except ValueError:  # a bare word
            if match["sep"] == " = ":
                continue  # a name in code (a variable): not a literal to check
            value = raw  # `NAME` (`word`): the word as the setting's string value
        messages = validation.VALIDATORS[name](name, value)
        if any(m.level >= django_checks.ERROR for m in messages):
            wrong.append(match.group(0))
    assert not wrong, wrong


# -- check ids ---------------------------------------------------------------------------------

CHECK_RE = re.compile(r"adldap_auth\.[EW]\d{3}")


def test_troubleshooting_page_lists_every_check_id():
    text = page("troubleshooting.md")
    for check_id, summary in check_messages.CHECK_IDS.items():
        assert f"`{check_id}`" in text, check_id
        assert summary in text, check_id


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_pages_name_only_existing_check_ids(path):
    text = path.read_text(encoding="utf-8") + "\n".join(
        e["description"] for e in settings_doc.SETTINGS.values()
    )
    stale = sorted(set(CHECK_RE.findall(text)) - set(check_messages.CHECK_IDS))
    assert not stale, stale


# -- the site ----------------------------------------------------------------------------------


def test_every_page_is_in_the_navigation():
    nav = (DOCS.parent / "mkdocs.yml").read_text(encoding="utf-8")
    for path in PAGES:
        assert f": {path.name}" in nav, path.name


def test_readme_links_the_documentation():
    readme = (DOCS.parent / "README.md").read_text(encoding="utf-8")
    assert "## Documentation" in readme
    assert "make docs" in readme
    for path in PAGES:
        assert f"docs/{path.name}" in readme, path.name


# -- what the pages promise ----------------------------------------------------------------------


def _docs_logging_example() -> dict:
    """The ``LOGGING`` dict of docs/operations.md, as a site would paste it."""
    text = page("operations.md")
    block = re.search(r"```python\n(LOGGING = \{.*?\n\})\n```", text, re.S)
    assert block, "docs/operations.md has no LOGGING example any more"
    namespace: dict = {}
    exec(block.group(1), namespace)  # noqa: S102 - our own documentation
    return namespace["LOGGING"]


@pytest.fixture
def docs_logging():
    """A function that configures logging as the docs' example says; the configuration is
    restored afterwards. Called by the test itself, so that the console handler writes to the
    stderr that ``capfd`` captures during the test."""
    import logging
    import logging.config

    manager = logging.root.manager
    saved = {
        name: (log.handlers[:], log.level, log.propagate, log.disabled)
        for name, log in [("", logging.root), *manager.loggerDict.items()]
        if isinstance(log, logging.Logger)
    }
    yield lambda: logging.config.dictConfig(_docs_logging_example())
    for name, (handlers, level, propagate, disabled) in saved.items():
        log = logging.getLogger(name) if name else logging.root
        log.handlers[:] = handlers
        log.setLevel(level)
        log.propagate, log.disabled = propagate, disabled


@pytest.mark.django_db(transaction=True)
def test_cron_runs_with_verbosity_0_print_nothing(slapd_lab, settings, capfd, docs_logging):
    """docs/operations.md: "With ``--verbosity 0`` a successful run prints nothing", with the
    page's own LOGGING example in force; ``-v 1`` still shows the run's log lines."""
    from django.core.management import call_command

    from tests.helpers import slapd_settings

    for name, value in slapd_settings(slapd_lab).items():
        setattr(settings, name, value)
    assert "--verbosity 0" in page("operations.md")
    docs_logging()
    call_command("syncldap", "full", verbosity=0)
    call_command("syncldap", verbosity=0)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    call_command("syncldap", "full", verbosity=1)
    out, err = capfd.readouterr()
    assert "full sync from" in out and "run against" in err


def test_verbosity_0_quiets_only_console_handlers_and_only_below_warning(tmp_path):
    """Files keep every record (an audit trail); the console still shows warnings."""
    import io
    import logging

    from adldap_auth.management.commands.syncldap import quiet_console

    console = logging.StreamHandler(io.StringIO())
    to_file = logging.FileHandler(tmp_path / "sync.log")
    log = logging.getLogger("adldap_auth.sync")
    parent = logging.getLogger("adldap_auth")
    saved = parent.handlers[:], parent.level
    parent.handlers[:] = [console, to_file]
    parent.setLevel(logging.INFO)
    try:
        with quiet_console(True):
            log.info("run started")
            log.warning("3 entries skipped")
        log.info("after the run")
    finally:
        parent.handlers[:], level = saved
        parent.setLevel(level)
        to_file.close()
    assert console.stream.getvalue() == "3 entries skipped\nafter the run\n"
    assert (tmp_path / "sync.log").read_text() == "run started\n3 entries skipped\nafter the run\n"
