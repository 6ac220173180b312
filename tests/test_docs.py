"""The documentation cannot drift from the code: settings, check ids, setting names in prose.

The settings page is generated (``docs/hooks.py``) from :data:`adldap_auth.conf.DEFAULTS` and the
descriptions of ``docs/settings_doc.py``; these tests fail when a setting is added or removed
without its description, when a check id is missing from the troubleshooting page, and when a
page names a setting or a check id that does not exist. ``make docs`` (``mkdocs build
--strict``) checks the links.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest
from django.core import checks as django_checks

from adldap_auth import checks, conf

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"adldap_auth_docs_{name}", DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _load("hooks")
settings_doc = hooks.load_settings_doc()
PAGES = sorted(DOCS.glob("*.md"))


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def rendered(name: str) -> str:
    """A page as MkDocs renders it: markers replaced by the generated Markdown."""
    return hooks.expand(page(name))


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
    from tests.test_conf import SEED_DEFAULTS

    seed = {name for name, entry in settings_doc.SETTINGS.items() if entry["seed"]}
    assert seed == set(SEED_DEFAULTS)


#: Examples whose validation depends on the site (files, models or modules it has).
SITE_DEPENDENT = {"CA_FILE", "USER_EXTRA_PROFILES", "USER_CALLBACKS", "BIND_PASS"}


@pytest.mark.parametrize(
    "name", sorted(n for n in settings_doc.SETTINGS if n not in SITE_DEPENDENT and n in conf.DEFAULTS)
)
def test_setting_example_passes_the_system_checks(name):
    import datetime

    value = eval(settings_doc.SETTINGS[name]["example"], {"datetime": datetime})  # noqa: S307
    messages = checks.VALIDATORS[name](name, value)
    assert not [m for m in messages if m.level >= django_checks.ERROR], messages


def test_settings_page_shows_every_setting_with_its_default():
    text = rendered("settings.md")
    assert hooks.MARKERS["settings"] not in text
    assert "Not yet described" not in text
    for name in conf.DEFAULTS:
        full = conf.PREFIX + name
        assert f"### `{full}` {{ #{full} }}" in text
        assert f"Default: {hooks.default_text(name)}." in text


def test_migration_page_lists_every_old_setting():
    text = rendered("migrate-adldap-sync.md")
    assert hooks.MARKERS["old-settings"] not in text
    for name, entry in settings_doc.SETTINGS.items():
        if entry["seed"]:
            assert f"[`{conf.PREFIX}{name}`](settings.md#{conf.PREFIX}{name})" in text
    for old in settings_doc.OLD_ONLY:
        assert f"`{old}`" in text
    assert set(conf.ALIASES) <= set(settings_doc.OLD_ONLY)
    assert {conf.PREFIX + n for n in checks.FOREIGN_SETTINGS} & set(settings_doc.OLD_ONLY)


#: ``LDAP_SYNC_*`` names the pages may mention that are not settings (old or other packages').
NOT_SETTINGS = set(settings_doc.OLD_ONLY) | {conf.PREFIX + n for n in checks.FOREIGN_SETTINGS}
SETTING_RE = re.compile(r"\b(?:LDAP_)?LDAP_SYNC_[A-Z_]*[A-Z]\b")


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_pages_name_only_existing_settings(path):
    known = {conf.PREFIX + n for n in conf.DEFAULTS} | NOT_SETTINGS
    text = hooks.expand(path.read_text(encoding="utf-8"))
    unknown = sorted(set(SETTING_RE.findall(text)) - known - {"LDAP_SYNC_"})
    assert not unknown, unknown


# -- check ids ---------------------------------------------------------------------------------

CHECK_RE = re.compile(r"adldap_auth\.[EW]\d{3}")


def test_troubleshooting_page_lists_every_check_id():
    text = rendered("troubleshooting.md")
    assert hooks.MARKERS["checks"] not in text
    for check_id, summary in checks.CHECK_IDS.items():
        assert f"`{check_id}`" in text, check_id
        assert summary in text, check_id


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_pages_name_only_existing_check_ids(path):
    text = path.read_text(encoding="utf-8") + "\n".join(
        e["description"] for e in settings_doc.SETTINGS.values()
    )
    stale = sorted(set(CHECK_RE.findall(text)) - set(checks.CHECK_IDS))
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
