"""What the sdist and the wheel hold (built with ``python -m build``, about 10 s).

The sdist must be the whole project, so that its tests run once unpacked (``conftest.py``,
``tests/lab/``, the test apps and settings, docs, example site, benchmarks, Makefile...); the
wheel only the ``adldap_auth`` package, with its migrations and management commands. The
end-to-end check (install them in fresh virtualenvs, run the tests from the unpacked sdist,
``migrate`` and ``syncldap full`` in a new project) is ``make sdist-check``: several minutes.
"""

from __future__ import annotations

import importlib.util
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("build") is None, reason="needs the build package (the [dev] extra)"
)


def _package_check():
    spec = importlib.util.spec_from_file_location("package_check", ROOT / ".ci" / "package_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The sdist, and the wheel built from it, of a clean copy of the checkout (as
    ``make sdist-check`` builds them)."""
    return _package_check().build(tmp_path_factory.mktemp("packaging"))


def sdist_names(sdist: Path) -> set[str]:
    with tarfile.open(sdist) as archive:
        return {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}


def tracked_files() -> list[str]:
    """The files of the checkout under version control (empty outside a git checkout)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return []
    return [name for name in done.stdout.splitlines() if (ROOT / name).exists()]


def test_sdist_holds_what_the_tests_need(dists):
    names = sdist_names(dists[0])
    for needed in (
        "LICENSE", "README.md", "Makefile", "tox.ini", "mkdocs.yml", "setup.cfg", "setup.py",
        "tests/conftest.py", "tests/settings.py", "tests/settings_person.py",
        "tests/settings_email_user.py", "tests/helpers.py", "tests/lab/slapd.py",
        "tests/testapp/models.py", "tests/customuser/models.py", "tests/emailuser/models.py",
        "docs/settings.md", "docs/generate.py", "example_site/settings.py",
        "example_site/people/templates/people/base.html", "benchmarks/harness.py",
    ):  # fmt: skip
        assert needed in names, needed
    # Everything of the project's own folders that the tree holds, not only the listed files.
    for folder in ("tests", "docs", "example_site", "benchmarks", "adldap_auth"):
        for path in (ROOT / folder).rglob("*"):
            relative = path.relative_to(ROOT).as_posix()
            if path.is_file() and path.suffix in {".py", ".md", ".html"} and "artifacts" not in relative:
                assert relative in names, relative


def test_sdist_holds_every_tracked_file(dists):
    tracked = tracked_files()
    if not tracked:
        pytest.skip("not a git checkout")
    missing = sorted(set(tracked) - sdist_names(dists[0]) - {".gitignore"})
    assert not missing, f"add to MANIFEST.in: {missing}"


def test_wheel_holds_the_package_only_with_migrations_and_commands(dists):
    with zipfile.ZipFile(dists[1]) as archive:
        names = set(archive.namelist())
    package = {p.relative_to(ROOT).as_posix() for p in (ROOT / "adldap_auth").rglob("*.py")}
    assert package <= names, sorted(package - names)
    assert "adldap_auth/migrations/0001_initial.py" in names
    assert "adldap_auth/management/commands/syncldap.py" in names
    outside = {n for n in names if not n.startswith(("adldap_auth/", "adldap_auth-"))}
    assert not outside, outside
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith("/LICENSE") for n in names)
