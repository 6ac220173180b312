"""``make demo``: a directory, a sync, a few changes, another sync, and the example site.

Steps (each prints what it does)::

    1. start the demo directory: a Samba AD DC provisioned once into .lab-cache/demo/dc
       (OpenLDAP when Samba cannot run here, with the reason)
    2. the site's SQLite database in demo-data/<ad|openldap>/ (created, or reused)
    3. syncldap full (incremental when the database was already synced), with a progress bar
    4. change the directory: a new title, a new group member, a disabled account, a new hire
       (or the reverse, on the next run)
    5. syncldap incremental, and what it changed
    6. serve the example site on http://127.0.0.1:8000 until Ctrl-C, which stops the site and
       the directory

Options: ``--directory samba|openldap`` (default: Samba, else OpenLDAP), ``--port``,
``--no-serve`` (stop after step 5), ``--check`` (serve, log in over HTTP as the demo user,
check the page, stop: a smoke test), ``--reset`` (forget the directory and the database).
From make: ``make demo DEMO_ARGS="--check"``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.cookiejar
import itertools
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path

import ldap
import ldap.dn
from ldap.filter import escape_filter_chars

from example_site.company import DEMO_LOGIN, DEMO_PASSWORD, avatar, demo_company, describe
from example_site.demo_directory import (
    DEMO_ROOT,
    DemoDirectory,
    Unavailable,
    open_directory,
)

REPO_DIR = Path(__file__).resolve().parent.parent
DATA_ROOT = REPO_DIR / "demo-data"
HOST = "127.0.0.1"

#: New hires of step 4: one joins on each run (the previous one leaves). A username is
#: never reused: a new entry with a known username is refused by the sync, by design (it is
#: not the same person), so the names go round with a number added.
NEW_HIRES = (("nina", "Nina", "Novak"), ("oscar", "Oscar", "Olsen"), ("pia", "Pia", "Persson"),
             ("quentin", "Quentin", "Quist"), ("ruth", "Ruth", "Ruiz"))  # fmt: skip
NEW_HIRE_TEAM = "Web Team"
NEW_HIRE_MARK = "adldap-auth demo: new hire"


class DemoError(Exception):
    """The demo cannot go on; the message says why."""


# --- output ---------------------------------------------------------------------------------


def say(text: str = "") -> None:
    print(text, flush=True)


def step(number: int, text: str) -> None:
    say()
    say(f"[{number}] {text}")


def rel(path: Path | str) -> str:
    path = Path(path)
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


class ProgressBar:
    """Draws ``run_sync``'s progress callbacks as bars (totals from the loaded company)."""

    WIDTH = 30

    def __init__(self, totals: dict[str, int], stream=sys.stderr):
        self.totals = totals
        self.stream = stream
        self.tty = stream.isatty()

    def line(self, phase: str, count: int) -> str:
        total = max(self.totals.get(phase, count), count, 1)
        filled = round(self.WIDTH * count / total)
        return f"    {phase:<7}[{'#' * filled}{'.' * (self.WIDTH - filled)}] {count:>5}/{total}"

    def __call__(self, phase: str, count: int) -> None:
        if self.tty:
            self.stream.write("\r" + self.line(phase, count))
            self.stream.flush()

    def finish(self, counts: dict[str, int]) -> None:
        if self.tty:
            self.stream.write("\r" + " " * (self.WIDTH + 30) + "\r")
            self.stream.flush()
        for phase, key in (("groups", "groups_seen"), ("users", "users_seen")):
            say(self.line(phase, counts.get(key, 0)))


# --- steps ----------------------------------------------------------------------------------


def prepare_data_dir(directory: DemoDirectory, data_root: Path) -> Path:
    """``demo-data/<kind>``; started afresh when it was synced from another directory."""
    data_dir = data_root / directory.kind
    marker = data_dir / "directory.json"
    if marker.exists():
        with contextlib.suppress(ValueError, KeyError):
            if json.loads(marker.read_text())["identity"] == directory.identity:
                return data_dir
        say(f"    {rel(data_dir)} was synced from another directory: starting it afresh")
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"identity": directory.identity}) + "\n")
    return data_dir


def setup_django(directory: DemoDirectory, data_dir: Path) -> None:
    os.environ.update(directory.site_settings().environ())
    os.environ["ADLDAP_DEMO_DATA"] = str(data_dir)
    os.environ["ADLDAP_DEMO_LOGIN_HINT"] = (
        f"Demo: log in as {DEMO_LOGIN} / {DEMO_PASSWORD} (a directory user)."
    )
    os.environ["DJANGO_SETTINGS_MODULE"] = "example_site.settings"
    import django

    django.setup()


def migrate() -> bool:
    """Create or update the schema; True when the database already had synced runs."""
    from django.core.management import call_command

    from adldap_auth.models import SyncRun

    call_command("migrate", verbosity=0, interactive=False)
    return SyncRun.objects.filter(status__in=["success", "partial"]).exists()


def check_settings() -> None:
    from django.core import checks

    problems = [m for m in checks.run_checks() if m.level >= checks.WARNING]
    if problems:
        for message in problems:
            say(f"    {message}")
        if any(m.level >= checks.ERROR for m in problems):
            raise DemoError("the example site's settings do not pass `manage.py check`")


def run_sync(mode: str, spec_totals: dict[str, int] | None):
    """One batch run, as ``manage.py syncldap <mode>`` does, with its summary table."""
    from adldap_auth.locking import LockHeld
    from adldap_auth.management.commands.syncldap import Command
    from adldap_auth.sync import SyncOptions
    from adldap_auth.sync import run_sync as sync

    say(f"    $ python example_site/manage.py syncldap {mode}")
    bar = ProgressBar(spec_totals) if spec_totals else None
    try:
        result = sync(SyncOptions(mode=mode, progress=bar, collect_changes=True))
    except LockHeld as held:
        raise DemoError(f"another sync is running: {held}") from None
    if bar is not None:
        bar.finish(result.counts)
    Command(stdout=_Indented(sys.stdout))._print_summary(result, 1)
    if result.mode_reason:
        say(f"    ({result.mode} because: {result.mode_reason})")
    if not result.ok:
        raise DemoError(f"the sync failed: {result.error}")
    return result


class _Indented:
    """A stream that indents each line (for the command's summary table)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        self.stream.write(
            "".join(
                f"    {line}" if line.strip() else line for line in text.splitlines(keepends=True)
            )
        )

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


def print_changes(changes: list[str], limit: int = 40) -> None:
    lines = changes
    say("    changes made:" if lines else "    no changes")
    for line in lines[:limit]:
        say(f"      {line}")
    if len(lines) > limit:
        say(f"      ... and {len(lines) - limit} more")


def make_demo_admin() -> None:
    """The demo account may open the admin (a local flag: the directory says nothing of it)."""
    from django.contrib.auth import get_user_model

    updated = (
        get_user_model()
        .objects.filter(username=DEMO_LOGIN)
        .update(is_staff=True, is_superuser=True)
    )
    if not updated:
        raise DemoError(f"the sync did not create the demo user {DEMO_LOGIN!r}")


def new_hire(template):
    """The next new hire: a username that neither Django nor the company has used."""
    from django.contrib.auth import get_user_model

    taken = set(get_user_model().objects.values_list("username", flat=True))
    for round_ in itertools.count(1):
        for key, given, sn in NEW_HIRES:
            key = key if round_ == 1 else f"{key}{round_}"
            if key not in taken:
                return replace(
                    template, key=key, given_name=given, sn=sn, mail=f"{key}@example.test",
                    ou="Engineering", department="Engineering", title="Software Engineer",
                    password=None, disabled=False, cn=None, photo=avatar(given[0] + sn[0], seed=round_),
                )  # fmt: skip


def change_directory(directory: DemoDirectory) -> list[str]:
    """A few changes, each the reverse of the previous run's, so every run has some."""
    spec = directory.spec
    done: list[str] = []
    conn = directory.admin_connection()
    try:

        def read(dn: str, attribute: str) -> bytes | None:
            try:
                found = conn.search_s(dn, ldap.SCOPE_BASE, "(objectClass=*)", [attribute])
            except ldap.NO_SUCH_OBJECT:
                return None
            values = found[0][1].get(attribute) if found else None
            return values[0] if values else None

        def is_member(group_dn: str, dn: str) -> bool:
            found = conn.search_s(
                group_dn, ldap.SCOPE_BASE, f"(member={escape_filter_chars(dn)})", ["1.1"]
            )
            return bool(found)

        # 1. A promotion.
        alice = spec.user(DEMO_LOGIN)
        old = (read(directory.user_dn(alice), "title") or b"").decode()
        new = "Senior Software Engineer" if old == "Software Engineer" else "Software Engineer"
        conn.modify_s(directory.user_dn(alice), [(ldap.MOD_REPLACE, "title", [new.encode()])])
        done.append(f"{alice.key}: title {old!r} -> {new!r}")

        # 2. Someone joins (or leaves) the Rocket Team, inside Platform, Engineering, R&D...
        mover = spec.user(next(m for m in spec.group("Web Team").members if ":" not in m))
        rocket_dn, mover_dn = directory.group_dn("Rocket Team"), directory.user_dn(mover)
        if is_member(rocket_dn, mover_dn):
            conn.modify_s(rocket_dn, [(ldap.MOD_DELETE, "member", [mover_dn.encode()])])
            done.append(f"{mover.key} leaves 'Rocket Team'")
        else:
            conn.modify_s(rocket_dn, [(ldap.MOD_ADD, "member", [mover_dn.encode()])])
            done.append(f"{mover.key} joins 'Rocket Team' (so also Platform, Engineering, R&D...)")

        # 3. An account is disabled (or enabled again).
        leaver = spec.user(spec.group("Support").members[1])
        leaver_dn = directory.user_dn(leaver)
        flags = int(read(leaver_dn, "userAccountControl") or b"512")
        conn.modify_s(
            leaver_dn,
            [(ldap.MOD_REPLACE, "userAccountControl", [str(flags ^ 0x2).encode()])],
        )
        done.append(f"{leaver.key}: account {'enabled again' if flags & 0x2 else 'disabled'}")

        # 4. The previous new hire leaves; a new one joins.
        base = directory.site_settings().user_search
        mark = escape_filter_chars(NEW_HIRE_MARK)
        for dn, _attrs in conn.search_s(base, ldap.SCOPE_SUBTREE, f"(description={mark})", ["1.1"]):
            for group in conn.search_s(
                base, ldap.SCOPE_SUBTREE, f"(member={escape_filter_chars(dn)})", ["1.1"]
            ):
                conn.modify_s(group[0], [(ldap.MOD_DELETE, "member", [dn.encode()])])
            conn.delete_s(dn)
            done.append(f"{ldap.dn.str2dn(dn)[0][0][1]} leaves the company (entry deleted)")
        hire = new_hire(spec.user(DEMO_LOGIN))
        hire_dn, team_dn = directory.user_dn(hire), directory.group_dn(NEW_HIRE_TEAM)
        lead = next(m for m in spec.group(NEW_HIRE_TEAM).members if ":" not in m)
        conn.add_s(hire_dn, [
            *directory.new_user_attrs(hire),
            ("description", [NEW_HIRE_MARK.encode()]),
            ("manager", [directory.dn_of(lead).encode()]),
            ("mobile", [b"+1 555 010 4242"]),
        ])  # fmt: skip
        conn.modify_s(team_dn, [(ldap.MOD_ADD, "member", [hire_dn.encode()])])
        done.append(f"new hire {hire.key} ({hire.given_name} {hire.sn}) joins {NEW_HIRE_TEAM!r}")
    finally:
        conn.unbind_s()
    return done


# --- the site -------------------------------------------------------------------------------


def make_server(port: int):
    from django.contrib.staticfiles.handlers import StaticFilesHandler
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
    from django.core.wsgi import get_wsgi_application

    try:
        server = ThreadedWSGIServer((HOST, port), WSGIRequestHandler, allow_reuse_address=True)
    except OSError as error:
        raise DemoError(
            f"cannot serve on {HOST}:{port} ({error.strerror}); "
            f'choose another port: make demo DEMO_ARGS="--port {port + 1}"'
        ) from None
    server.set_app(StaticFilesHandler(get_wsgi_application()))
    return server


def check_site(base_url: str) -> list[str]:
    """Log in over HTTP as the demo user and check the "me" page: photo and nested groups."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"{base_url}/login/", timeout=30).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode(
        {"csrfmiddlewaretoken": token, "username": DEMO_LOGIN, "password": DEMO_PASSWORD}
    ).encode()
    response = opener.open(f"{base_url}/login/", data=form, timeout=60)
    page = response.read().decode()
    if not response.geturl().endswith("/me/"):
        raise DemoError(f"logging in as {DEMO_LOGIN} failed (ended on {response.geturl()})")
    photo = re.search(r'<img class="photo" id="photo" src="([^"]+)"', page)
    if photo is None:
        raise DemoError("the me page shows no photo")
    image = opener.open(base_url + photo.group(1), timeout=30)
    if image.headers.get_content_type() != "image/jpeg":
        raise DemoError(f"the photo is served as {image.headers.get_content_type()}")
    kinds = dict(re.findall(r'<tr data-group="([^"]+)" data-kind="([^"]+)"', page))
    if kinds.get("Rocket Team") != "direct" or kinds.get("All Staff") != "inherited":
        raise DemoError(f"the me page shows unexpected groups: {kinds}")
    people = opener.open(f"{base_url}/people/", timeout=30).read().decode()
    shown = len(re.findall(r'class="person"', people))
    direct = sum(1 for kind in kinds.values() if kind == "direct")
    return [
        f"logged in as {DEMO_LOGIN}: photo served ({len(image.read())} bytes of JPEG)",
        f"groups shown: {len(kinds)} ({direct} direct, {len(kinds) - direct} inherited "
        "through nesting)",
        f"people page: {shown} people",
    ]


# --- main -----------------------------------------------------------------------------------


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="make demo", description=__doc__.split("\n\n")[0].strip("`")
    )
    parser.add_argument(
        "--directory",
        choices=["auto", "samba", "openldap"],
        default=os.environ.get("ADLDAP_DEMO_DIRECTORY_KIND", "auto"),
        help="auto (default): Samba AD DC, or OpenLDAP when Samba cannot run now; "
        "samba: wait for a test run's Samba DC to finish",
    )
    parser.add_argument("--port", type=int, default=8000, help="port of the site (8000)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--no-serve", action="store_true", help="stop after the syncs")
    mode.add_argument(
        "--check", action="store_true", help="serve, log in over HTTP, check the page, stop"
    )
    parser.add_argument(
        "--reset", action="store_true", help="forget the demo directory and database first"
    )
    parser.add_argument("--data-dir", type=Path, default=DATA_ROOT, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the parent ignored it
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    started = time.monotonic()
    spec, extras = demo_company()
    say("adldap-auth demo: Active Directory -> Django")
    if args.reset:
        shutil.rmtree(DEMO_ROOT, ignore_errors=True)
        shutil.rmtree(args.data_dir, ignore_errors=True)
        say(f"Reset: removed {rel(DEMO_ROOT)} and {rel(args.data_dir)}")
    try:
        with contextlib.ExitStack() as stack:
            try:
                return _run(args, spec, extras, stack, started)
            except KeyboardInterrupt:
                say()
                say("Interrupted: stopping the site and the directory...")
                return 0  # Ctrl-C is how the demo ends
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
                stack.close()
                say("Stopped: nothing of the demo is left running.")
    except (DemoError, Unavailable) as error:
        print(f"make demo: {error}", file=sys.stderr)
        return 1


def _run(args, spec, extras, stack: contextlib.ExitStack, started: float) -> int:
    step(1, "Directory")
    say(f"    The company: {describe(spec)}")
    directory = open_directory(args.directory, spec, extras, stack, lambda text: say(f"    {text}"))
    built, start = directory.timings.get("build"), directory.timings.get("start", 0)
    say(f"    {directory.describe()}")
    if directory.kind == "openldap":
        say(f"    loaded and started in {start:.1f} s (OpenLDAP's data lasts one run)")
    elif built:
        say(f"    provisioned and loaded in {built:.1f} s, started in {start:.1f} s")
    else:
        say(f"    reused (provisioned on an earlier run), started in {start:.1f} s")
    site = directory.site_settings()
    say(f"    TLS: {site.uri}, certificate verified against {rel(site.ca_file)}")

    step(2, "Database")
    data_dir = prepare_data_dir(directory, args.data_dir)
    setup_django(directory, data_dir)
    synced_before = migrate()
    check_settings()
    say(
        f"    {rel(data_dir / 'db.sqlite3')} ({'reused' if synced_before else 'new'}); "
        f"photos in {rel(data_dir / 'media')}"
    )

    mode = "incremental" if synced_before else "full"
    step(3, f"First sync ({mode}{': the database was synced before' if synced_before else ''})")
    totals = {"groups": len(spec.groups), "users": len(spec.users), "sweep": len(spec.users)}
    first = run_sync(mode, totals if mode == "full" else None)
    if mode != "full":
        print_changes(first.changes or [])
    make_demo_admin()

    step(4, "Changes in the directory")
    for line in change_directory(directory):
        say(f"    - {line}")

    step(5, "Incremental sync: only what changed")
    second = run_sync("incremental", None)
    print_changes(second.changes or [])
    sync_seconds = first.seconds + second.seconds

    if args.no_serve:
        say()
        say(f"Done in {time.monotonic() - started:.1f} s (syncs {sync_seconds:.1f} s).")
        return 0

    step(6, "Example site")
    server = make_server(args.port)
    stack.callback(server.server_close)
    base_url = f"http://{HOST}:{args.port}"
    if args.check:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        stack.callback(server.shutdown)
        for line in check_site(base_url):
            say(f"    check: {line}")
        say()
        say(f"Checked in {time.monotonic() - started:.1f} s: the site works.")
        return 0
    say(f"    {base_url}/  ready in {time.monotonic() - started:.1f} s")
    say()
    say(f"    Log in as   {DEMO_LOGIN} / {DEMO_PASSWORD}   (a directory user)")
    say(f"    Me:         {base_url}/me/      your fields, profile, photo and groups")
    say(f"    People:     {base_url}/people/  everyone, by department")
    say(f"    Admin:      {base_url}/admin/   the run history ({DEMO_LOGIN} is an admin here)")
    say()
    say("    Press Ctrl-C to stop the site and the directory.")
    say()
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
