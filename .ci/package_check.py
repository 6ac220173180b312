"""The distributions as a user gets them: ``make sdist-check``.

Builds the sdist and the wheel (``python -m build``), then, each in a fresh virtualenv:

1. **sdist**: ``pip install "<sdist>[dev,celery]"``, unpack the sdist and run a slice of the test
   suite there (the unit tests and the slapd-based sync, login, admin, custom-user-model and
   documentation tests, on SQLite; the Samba, browser, topology and slow tests are left out:
   ``--pytest-args`` changes the selection);
2. **wheel in a new project**: ``pip install <wheel>``, ``django-admin startproject``, an app
   with a custom user model (``AbstractUser`` subclass) as ``AUTH_USER_MODEL``, settings for a
   throwaway lab slapd (StartTLS, the lab CA), then ``migrate``, ``syncldap full``, and
   ``syncldap --verbosity 0`` with the documentation's ``LOGGING`` example, which must print
   nothing;
3. **docs**: ``mkdocs build --strict`` in the unpacked sdist with MkDocs alone installed (what
   the ``[docs]`` extra adds).

Run it with the checkout's venv (it starts slapd with ``tests.lab``)::

    .venv/bin/python .ci/package_check.py [--work DIR] [--keep] [--only sdist,project,docs]

It takes several minutes (three virtualenvs, package installs, ~2 minutes of tests), so
``make test`` does not run it. Exit status 0 when every step passed.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The default test selection of the sdist step (about two minutes on 2 cores).
SDIST_TESTS = [
    "-m",
    "not samba and not browser and not slow and not topology",
    "tests/unit/test_conf.py",
    "tests/unit/test_checks.py",
    "tests/unit/test_mapping.py",
    "tests/samba/test_sync_full.py",
    "tests/slapd/test_sync_incremental.py",
    "tests/slapd/test_backend.py",
    "tests/slapd/test_backend_slapd.py",
    "tests/slapd/test_custom_user_models.py",
    "tests/slapd/test_admin.py",
    "tests/slapd/test_lab_slapd.py",
    "tests/unit/test_docs.py",
]


def run(cmd: list[str | Path], *, cwd: Path | None = None, env: dict | None = None) -> str:
    """Run ``cmd``, echo it, fail loudly with its output; return its stdout."""
    shown = " ".join(shlex.quote(str(c)) for c in cmd)
    print(f"$ {shown}" + (f"   (in {cwd})" if cwd else ""), flush=True)
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.stdout.write(done.stdout[-6000:])
        sys.stderr.write(done.stderr[-6000:])
        raise SystemExit(f"failed (exit {done.returncode}): {shown}")
    return done.stdout


def make_venv(path: Path) -> Path:
    """A fresh virtualenv at ``path`` (the running Python's version); its python."""
    shutil.rmtree(path, ignore_errors=True)
    run([sys.executable, "-m", "venv", path])
    python = path / "bin" / "python"
    run([python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    return python


def clean_env() -> dict[str, str]:
    """The environment without this checkout's Django or Python path settings."""
    env = dict(os.environ)
    for name in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH", "VIRTUAL_ENV"):
        env.pop(name, None)
    return env


#: Top-level names of a checkout that are no part of its source (caches, venvs, build output).
NOT_SOURCE = {
    ".git", ".venv", ".tox", ".lab-cache", ".pytest_cache", ".ruff_cache", "build", "dist",
    "demo-data", "media",
}  # fmt: skip


def source_copy(target: Path) -> Path:
    """The checkout copied without caches and build leftovers. Building from the checkout
    itself would let setuptools take the file list of a stale ``*.egg-info/SOURCES.txt``,
    hiding a file MANIFEST.in misses."""
    shutil.rmtree(target, ignore_errors=True)

    def ignore(folder: str, names: list[str]) -> set[str]:
        top = Path(folder).resolve() == ROOT
        return {
            name
            for name in names
            if (top and name in NOT_SOURCE)
            or (Path(folder).resolve() == ROOT / "benchmarks" and name == "out")  # runs' output
            or name == "__pycache__"
            or name.endswith((".egg-info", ".pyc"))
        }

    shutil.copytree(ROOT, target, ignore=ignore, symlinks=True)
    return target


def build(work: Path) -> tuple[Path, Path]:
    """``python -m build`` of a clean copy of the checkout: the sdist, and the wheel built
    from that sdist."""
    out = work / "dist"
    shutil.rmtree(out, ignore_errors=True)
    source = source_copy(work / "source")
    run([sys.executable, "-m", "build", "--outdir", out, source])
    (sdist,) = out.glob("adldap_auth-*.tar.gz")
    (wheel,) = out.glob("adldap_auth-*.whl")
    return sdist, wheel


def unpack(sdist: Path, work: Path) -> Path:
    target = work / "sdist"
    shutil.rmtree(target, ignore_errors=True)
    with tarfile.open(sdist) as archive:
        archive.extractall(target, filter="data")
    (tree,) = target.iterdir()
    return tree


def check_sdist(work: Path, sdist: Path, pytest_args: list[str]) -> str:
    python = make_venv(work / "venv-sdist")
    run([python, "-m", "pip", "install", "--quiet", f"{sdist}[dev,celery]"])
    tree = unpack(sdist, work)
    out = run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args], cwd=tree, env=clean_env())
    summary = [line for line in out.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    return summary[-1] if summary else "(no pytest summary)"


def check_docs(work: Path, sdist: Path) -> str:
    python = make_venv(work / "venv-docs")
    run([python, "-m", "pip", "install", "--quiet", "mkdocs>=1.6"])  # the [docs] extra's own need
    tree = unpack(sdist, work)
    site_dir = work / "docs-site"
    run([python, "-m", "mkdocs", "build", "--strict", "--site-dir", site_dir], cwd=tree, env=clean_env())
    return "mkdocs build --strict: ok"


PROJECT_SETTINGS = """

# -- added by .ci/package_check.py ---------------------------------------------------------
INSTALLED_APPS += ["accounts", "adldap_auth"]
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "adldap_auth.backends.ADLDAPBackend",
    "django.contrib.auth.backends.ModelBackend",
]
"""


def check_project(work: Path, wheel: Path) -> str:
    sys.path.insert(0, str(ROOT))
    from tests.lab.certs import make_certs
    from tests.lab.slapd import LabSlapd
    from tests.lab.spec import company

    python = make_venv(work / "venv-wheel")
    run([python, "-m", "pip", "install", "--quiet", wheel])
    bin_dir = python.parent
    site = work / "site"
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir()
    env = clean_env()
    run([bin_dir / "django-admin", "startproject", "mysite", site], env=env)
    manage = [python, site / "manage.py"]
    run([*manage, "startapp", "accounts"], cwd=site, env=env)
    (site / "accounts" / "models.py").write_text(
        textwrap.dedent(
            '''\
            from django.contrib.auth.models import AbstractUser


            class User(AbstractUser):
                """The site's own user model, as a new project should have."""
            '''
        )
    )
    certs = make_certs(work / "certs")
    spec = company()
    with LabSlapd(spec, certs=certs) as server:
        ldap_settings = server.sync_settings(tls="starttls")
        lines = [f"{name} = {value!r}" for name, value in sorted(ldap_settings.items())]
        logging_example = _docs_logging_example()
        with open(site / "mysite" / "settings.py", "a", encoding="utf-8") as settings:
            settings.write(PROJECT_SETTINGS + "\n".join(lines) + "\n\n" + logging_example + "\n")
        run([*manage, "makemigrations", "accounts"], cwd=site, env=env)
        run([*manage, "migrate", "--verbosity", "0"], cwd=site, env=env)
        summary = run([*manage, "syncldap", "full"], cwd=site, env=env)
        print(summary, flush=True)
        if "full sync from" not in summary or ": success" not in summary.splitlines()[0]:
            raise SystemExit("syncldap full did not succeed:\n" + summary)
        counted = run(
            [*manage, "shell", "-c",
             "from django.contrib.auth import get_user_model; from django.contrib.auth.models import Group; "
             "U = get_user_model(); print(U._meta.label, U.objects.count(), Group.objects.count())"],
            cwd=site, env=env,
        ).splitlines()[-1].split()  # fmt: skip (the shell may first say what it imported)
        if counted[0] != "accounts.User" or int(counted[1]) < 1 or int(counted[2]) < 1:
            raise SystemExit(f"unexpected users/groups after the run: {counted}")
        quiet = subprocess.run(
            [str(c) for c in (*manage, "syncldap", "--verbosity", "0")],
            cwd=site, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if quiet.returncode != 0 or quiet.stdout or quiet.stderr:
            raise SystemExit(
                f"syncldap --verbosity 0 (exit {quiet.returncode}) printed:\n{quiet.stdout}{quiet.stderr}"
            )
    return (
        f"new project, AUTH_USER_MODEL={counted[0]}: migrate ok, syncldap full ok "
        f"({counted[1]} users from {len(spec.users)} directory entries, {counted[2]} groups), "
        "syncldap -v 0 silent"
    )


def _docs_logging_example() -> str:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(LOGGING = \{.*?\n\})\n```", text, re.S)
    if not block:
        raise SystemExit("docs/operations.md has no LOGGING example")
    return block.group(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="Working folder (default: a new temporary one).")
    parser.add_argument("--keep", action="store_true", help="Keep the working folder.")
    parser.add_argument(
        "--only", default="sdist,project,docs", help="Comma-separated steps: sdist, project, docs."
    )
    parser.add_argument(
        "--pytest-args", default=None, help="The sdist step's pytest arguments (default: a slice)."
    )
    args = parser.parse_args(argv)
    steps = set(args.only.split(","))
    work = args.work or Path(tempfile.mkdtemp(prefix="adldap-package-check-"))
    work.mkdir(parents=True, exist_ok=True)
    pytest_args = shlex.split(args.pytest_args) if args.pytest_args is not None else SDIST_TESTS
    results: list[str] = []
    started = time.monotonic()
    try:
        sdist, wheel = build(work)
        results.append(f"built {sdist.name} and {wheel.name}")
        if "docs" in steps:
            results.append(check_docs(work, sdist))
        if "project" in steps:
            results.append(check_project(work, wheel))
        if "sdist" in steps:
            results.append("tests in the unpacked sdist: " + check_sdist(work, sdist, pytest_args))
    finally:
        print("\n".join(["", "package check:", *(f"  {line}" for line in results)]))
        print(f"  {time.monotonic() - started:.0f} s, in {work}")
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
