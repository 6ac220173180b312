"""The example site in a real browser, against the lab's Samba AD DC.

A headless Chromium from Debian's ``chromium`` package (never a downloaded browser), driven by
Playwright, logs into ``example_site`` as the directory user alice and checks what the login
backend alone wrote (no batch sync has run yet): her photo, and her groups nested four deep,
each marked direct or inherited. Then ``syncldap full`` runs and the people page shows the
company with photos. Screenshots are saved under ``tests/artifacts/`` (or
``$ADLDAP_TEST_ARTIFACTS``) and their paths printed.

The site runs as a real site would: ``manage.py migrate`` and ``runserver`` in subprocesses,
with ``example_site.settings`` pointed at the lab DC through its ``ADLDAP_DEMO_*`` variables,
over LDAPS verified against the lab CA, on a free port and a SQLite file of its own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.spec import LAB_PASSWORD, company

pytestmark = [pytest.mark.samba, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(os.environ.get("ADLDAP_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ExampleSite:
    """``example_site`` in subprocesses, configured for one directory and one database."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.env = env
        self.log_dir = log_dir
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: subprocess.Popen | None = None

    def manage(self, *args: str, timeout: float = 180) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "django", *args],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        assert done.returncode == 0, f"manage.py {' '.join(args)}:\n{done.stdout}{done.stderr}"
        return done.stdout

    def start(self) -> None:
        log = open(self.log_dir / "runserver.log", "w")  # noqa: SIM115 (kept open by the child)
        self.server = subprocess.Popen(
            [sys.executable, "-m", "django", "runserver", f"127.0.0.1:{self.port}", "--noreload"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 60
        while True:
            if self.server.poll() is not None:
                pytest.fail(f"runserver exited:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"runserver did not answer within 60 s:\n{self.log()}")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()

    def log(self) -> str:
        path = self.log_dir / "runserver.log"
        return path.read_text(errors="replace")[-5000:] if path.exists() else ""


@pytest.fixture
def example_site(samba_clean, tmp_path: Path) -> Iterator[ExampleSite]:
    """The example site on a free port, pointed at the lab DC (LDAPS, lab CA), migrated."""
    dc = samba_clean
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADLDAP_DEMO_", "DJANGO_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="example_site.settings",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
        ADLDAP_DEMO_DIRECTORY="ad",
        ADLDAP_DEMO_URI=dc.ldaps_uri,
        ADLDAP_DEMO_CA_FILE=str(dc.ca_file),
        ADLDAP_DEMO_BIND_DN=dc.reader_dn,
        ADLDAP_DEMO_BIND_PASS=dc.reader_password,
        ADLDAP_DEMO_BASE_DN=dc.base_dn,
        ADLDAP_DEMO_USER_SEARCH=dc.lab_dn,
        ADLDAP_DEMO_GROUP_SEARCH=dc.lab_dn,
        ADLDAP_DEMO_DATA=str(tmp_path / "site"),
    )
    (tmp_path / "site").mkdir()
    site = ExampleSite(env, tmp_path)
    site.manage("migrate", "-v", "0")
    site.start()
    try:
        yield site
    finally:
        site.stop()


@pytest.fixture
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser test needs the Python package playwright (the dev extra)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium package (make deps)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _screenshot(page, name: str, full_page: bool = True) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=full_page)
    print(f"screenshot: {path}")
    return path


def _log_in(page, site: ExampleSite, username: str, password: str) -> None:
    page.goto(f"{site.url}/me/")
    assert "/login/" in page.url  # the page needs a login
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("form.login button[type=submit]")
    page.wait_for_load_state()


def test_directory_user_sees_photo_and_nested_groups(example_site, browser):
    spec = company()
    alice = spec.user("alice")
    page = browser.new_page(viewport={"width": 1100, "height": 900})

    # A disabled account cannot log in.
    _log_in(page, example_site, "dave", LAB_PASSWORD)
    assert "/login/" in page.url
    assert page.locator("p.error").is_visible()

    # alice logs in: the login backend creates her with profile, photo and groups.
    _log_in(page, example_site, "alice", LAB_PASSWORD)
    assert page.url.endswith("/me/"), f"login failed, at {page.url}:\n{example_site.log()}"
    assert page.locator("h1").inner_text() == "Alice Archer"
    employee = page.locator("#employee").inner_text()
    assert alice.title in employee and alice.department in employee

    photo = page.locator("img#photo")
    assert photo.is_visible()
    size = photo.evaluate("img => img.complete ? [img.naturalWidth, img.naturalHeight] : null")
    assert size == [48, 48]  # tests.lab.spec.jpeg: the photo itself arrived, decoded
    photo_response = page.request.get(example_site.url + photo.get_attribute("src"))
    assert photo_response.ok and photo_response.body() == alice.photo

    rows = page.locator("#groups tbody tr")
    kinds = {
        rows.nth(i).get_attribute("data-group"): rows.nth(i).get_attribute("data-kind")
        for i in range(rows.count())
    }
    # Rocket Team < Engineering < R&D < Staff < Everyone, and her primary group Domain Users
    # (outside the group scope) < the built-in Users: groups she is in by AD's own rules.
    expected = spec.expected_groups()["alice"] | {"Domain Users", "Users"}
    assert set(kinds) == expected
    direct = {"Rocket Team", "Domain Users"}
    assert kinds == {name: "direct" if name in direct else "inherited" for name in expected}
    everyone = page.locator('#groups tr[data-group="Everyone"]').inner_text()
    assert "Rocket Team → Engineering → R&D → Staff → Everyone" in everyone
    _screenshot(page, "browser-me.png")

    # After a batch sync, everyone is on the people page, with photos.
    example_site.manage("syncldap", "full", "-v", "0")
    page.goto(f"{example_site.url}/people/")
    bob = page.locator('.person[data-username="bob"]')
    assert "Bob Baker" in bob.inner_text()
    bob.scroll_into_view_if_needed()  # photos load lazily
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=bob.locator("img").element_handle()
    )
    assert bob.locator("img").evaluate("img => img.naturalWidth") == 48
    assert page.locator('.person[data-username="dave"]').count() == 0  # disabled: not listed
    _screenshot(page, "browser-people.png", full_page=False)  # 1,600 bulk users below
