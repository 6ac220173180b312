"""MkDocs hook: generated parts of the documentation, so that they cannot drift from the code.

A page that contains one of these markers gets it replaced by generated Markdown:

- ``<!-- adldap-auth:settings -->``: every setting of :data:`adldap_auth.conf.DEFAULTS`, with its
  type, default, description and example (descriptions from ``docs/settings_doc.py``);
- ``<!-- adldap-auth:checks -->``: every system check id of :data:`adldap_auth.checks.CHECK_IDS`;
- ``<!-- adldap-auth:old-settings -->``: each django-adldap-sync setting and how it is treated.

Nothing here imports MkDocs, so ``tests/test_docs.py`` can call the renderers directly.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

MARKERS = {
    "settings": "<!-- adldap-auth:settings -->",
    "checks": "<!-- adldap-auth:checks -->",
    "old-settings": "<!-- adldap-auth:old-settings -->",
}


def _import_project() -> None:
    """Make ``adldap_auth`` importable (from the checkout) with minimal Django settings."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from django.conf import settings

    if not settings.configured and "DJANGO_SETTINGS_MODULE" not in os.environ:
        # Importing adldap_auth.checks touches django.conf.settings; the docs need no site.
        settings.configure()


def load_settings_doc() -> Any:
    """``docs/settings_doc.py`` as a module (the docs folder is not a package)."""
    spec = importlib.util.spec_from_file_location("adldap_auth_settings_doc", DOCS / "settings_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _code(text: str) -> str:
    """``text`` as inline code, safe inside a Markdown table cell."""
    text = text.replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def default_text(name: str) -> str:
    """How the default of ``LDAP_SYNC_<name>`` is shown: a Python literal, or what it means."""
    from adldap_auth import conf

    value = conf.DEFAULTS[name]
    if name in conf.REQUIRED:
        return "required"
    if value is None and name in conf.INHERITS:
        return f"`{conf.PREFIX}{conf.INHERITS[name]}`"
    return _code(repr(value))


def render_settings() -> str:
    _import_project()
    from adldap_auth import conf

    doc = load_settings_doc()
    lines: list[str] = []
    for section, title in doc.SECTIONS.items():
        names = [n for n in conf.DEFAULTS if doc.SETTINGS.get(n, {}).get("section") == section]
        if not names:
            continue
        lines += [f"## {title}", "", "| setting | type | default |", "| --- | --- | --- |"]
        for name in names:
            full = conf.PREFIX + name
            default = default_text(name)
            if len(default) > 48:
                default = f"see [below](#{full})"
            lines.append(f"| [`{full}`](#{full}) | {doc.SETTINGS[name]['type']} | {default} |")
        lines.append("")
        for name in names:
            entry = doc.SETTINGS[name]
            full = conf.PREFIX + name
            origin = "django-adldap-sync" if entry["seed"] else "new in adldap-auth"
            lines += [
                f"### `{full}` {{ #{full} }}",
                "",
                f"Type: {entry['type']}. Default: {default_text(name)}. Origin: {origin}.",
                "",
                entry["description"],
                "",
                "```python",
                f"{full} = {entry['example']}",
                "```",
                "",
            ]
    undocumented = [n for n in conf.DEFAULTS if n not in doc.SETTINGS]
    if undocumented:  # tests/test_docs.py fails too; the page says so rather than hiding them
        lines += ["## Not yet described", ""]
        lines += [f"- `{conf.PREFIX}{n}`: {default_text(n)}" for n in undocumented]
    return "\n".join(lines)


def render_checks() -> str:
    _import_project()
    from adldap_auth.checks import CHECK_IDS

    lines = ["| id | level | meaning |", "| --- | --- | --- |"]
    for check_id, summary in CHECK_IDS.items():
        level = "error" if check_id.split(".")[-1].startswith("E") else "warning"
        anchor = check_id.replace(".", "-")
        lines.append(f'| <span id="{anchor}"></span>`{check_id}` | {level} | {summary} |')
    return "\n".join(lines)


def render_old_settings() -> str:
    _import_project()
    from adldap_auth import conf

    doc = load_settings_doc()
    lines = ["| django-adldap-sync setting | in adldap-auth |", "| --- | --- |"]
    for name, entry in doc.SETTINGS.items():
        if entry["seed"]:
            full = conf.PREFIX + name
            lines.append(f"| [`{full}`](settings.md#{full}) | {entry['compat']} |")
    for full, text in doc.OLD_ONLY.items():
        lines.append(f"| `{full}` | {text} |")
    return "\n".join(lines)


RENDERERS = {
    "settings": render_settings,
    "checks": render_checks,
    "old-settings": render_old_settings,
}


def expand(markdown: str) -> str:
    """Replace every marker found in ``markdown`` by its generated Markdown."""
    for key, marker in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, RENDERERS[key]())
    return markdown


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """MkDocs event: expand the markers of every page."""
    return expand(markdown)
