"""The demo's directory server: a Samba AD DC kept in a local folder, or OpenLDAP instead.

Both come from the test lab (:mod:`tests.lab.samba`, :mod:`tests.lab.slapd`) and load the
same company (:func:`example_site.company.demo_company`), then get what the lab's loaders do
not write (``manager`` and ``mobile``). Both serve TLS with a CA of their own, which the site
verifies.

* :class:`SambaDirectory` provisions a domain once into ``.lab-cache/demo/dc`` (about 10 s),
  and later runs start samba on that same folder (about 1 s), so the directory keeps the
  changes the demo made. Only one Samba DC can run per machine (fixed ports): the demo holds
  the lab's lock (:func:`tests.lab.samba.lab_lock`) while it runs, so a test session waits for
  it, and it does not wait for a test session (it says so and uses OpenLDAP).
* :class:`OpenLDAPDirectory` starts slapd on free ports in a temporary folder (under a
  second) and loads the company each time: its changes do not outlive the demo.

:func:`open_directory` picks one and says why when Samba cannot run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import ldap
from ldap.ldapobject import LDAPObject

from example_site.company import Extras
from tests.lab import ldif
from tests.lab import samba as lab_samba
from tests.lab.spec import DirectorySpec, UserSpec

DEMO_ROOT = lab_samba.CACHE_DIR / "demo" / "dc"
#: Written once the manager/mobile attributes are in the directory.
EXTRAS_DONE = "demo-extras.done"

Modification = tuple[str, list[tuple[int, str, list[bytes] | None]]]


class Unavailable(Exception):
    """This directory cannot run here; the message says why (one line)."""


@dataclass
class SiteSettings:
    """What :mod:`example_site.settings` reads from ``ADLDAP_DEMO_*`` variables."""

    directory: str
    uri: str
    ca_file: str
    bind_dn: str
    bind_password: str
    base_dn: str
    user_search: str
    group_search: str

    def environ(self) -> dict[str, str]:
        return {
            "ADLDAP_DEMO_DIRECTORY": self.directory,
            "ADLDAP_DEMO_URI": self.uri,
            "ADLDAP_DEMO_CA_FILE": self.ca_file,
            "ADLDAP_DEMO_BIND_DN": self.bind_dn,
            "ADLDAP_DEMO_BIND_PASS": self.bind_password,
            "ADLDAP_DEMO_BASE_DN": self.base_dn,
            "ADLDAP_DEMO_USER_SEARCH": self.user_search,
            "ADLDAP_DEMO_GROUP_SEARCH": self.group_search,
        }


class DemoDirectory:
    """Common interface. ``open()`` starts the server (registering its stop on ``stack``)."""

    kind = ""
    label = ""
    #: True when this run created the directory from scratch.
    created = False
    #: Seconds spent building (provisioning and loading) and starting.
    timings: dict[str, float]
    #: Identifies the directory's data: a database synced from another one is started afresh.
    identity = ""

    def __init__(self, spec: DirectorySpec, extras: Extras, say: Callable[[str], None]):
        self.spec = spec
        self.extras = extras
        self.say = say
        self.timings = {}

    def open(self, stack: contextlib.ExitStack) -> None:
        raise NotImplementedError

    def site_settings(self) -> SiteSettings:
        raise NotImplementedError

    def admin_connection(self) -> LDAPObject:
        raise NotImplementedError

    def user_dn(self, user: UserSpec) -> str:
        raise NotImplementedError

    def group_dn(self, name: str) -> str:
        raise NotImplementedError

    def new_user_attrs(self, user: UserSpec) -> list[tuple[str, list[bytes]]]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    # shared ------------------------------------------------------------------------------

    def dn_of(self, key: str) -> str:
        return self.user_dn(self.spec.user(key))

    def add_extras(self) -> None:
        """Write each person's ``manager`` (a DN) and ``mobile`` (pipelined modifies)."""
        started = time.monotonic()
        mods: list[Modification] = []
        for user in self.spec.users:
            changes: list[tuple[int, str, list[bytes] | None]] = []
            manager = self.extras.manager.get(user.key)
            if manager:
                changes.append((ldap.MOD_REPLACE, "manager", [self.dn_of(manager).encode()]))
            mobile = self.extras.mobile.get(user.key)
            if mobile:
                changes.append((ldap.MOD_REPLACE, "mobile", [mobile.encode()]))
            if changes:
                mods.append((self.user_dn(user), changes))
        conn = self.admin_connection()
        try:
            modify_many(conn, mods)
        finally:
            conn.unbind_s()
        self.timings["extras"] = time.monotonic() - started


def modify_many(conn: LDAPObject, mods: Iterable[Modification], window: int = 32) -> None:
    """Send modifies with up to ``window`` outstanding; raise on the first failure."""
    pending: list[tuple[int, str]] = []

    def collect() -> None:
        msgid, dn = pending.pop(0)
        try:
            conn.result(msgid)
        except ldap.LDAPError as error:
            raise RuntimeError(f"modify of {dn} failed: {error}") from error

    for dn, changes in mods:
        pending.append((conn.modify_ext(dn, changes), dn))
        if len(pending) >= window:
            collect()
    while pending:
        collect()


# --- Samba ----------------------------------------------------------------------------------


def _lock_holder() -> str | None:
    """The pid holding the Samba lab lock, or None when it is free (probed, not taken)."""
    with open(lab_samba.LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            return handle.read().strip() or "?"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def _first_line(error: BaseException) -> str:
    """A one-line reason: the error's first line (without a long command line) and, for a
    failed command, the line of its output that says what went wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    head = lines[0]
    if "failed (exit" in head:
        head = head.split("):", 1)[0] + ")"
    errors = [line for line in lines[1:] if "error" in line.lower()]
    detail = errors[-1] if errors else (lines[-1] if len(lines) > 1 else "")
    return f"{head}: {detail}" if detail else head


class SambaDirectory(DemoDirectory):
    kind = "ad"
    label = "Samba AD domain controller"

    def __init__(self, spec, extras, say, root: Path = DEMO_ROOT, wait: bool = False):
        super().__init__(spec, extras, say)
        self.root = root
        #: Wait for the lab lock (a test run) rather than give up at once.
        self.wait = wait
        self.dc: lab_samba.SambaDC | None = None

    # availability and lifecycle ----------------------------------------------------------

    def check_can_run(self) -> None:
        if os.geteuid() != 0:
            raise Unavailable(
                "Samba's AD DC needs root (it binds ports 389, 636 and 88 on 127.0.0.1)"
            )
        missing = [tool for tool in ("samba", "samba-tool") if shutil.which(tool) is None]
        if missing:
            raise Unavailable(
                f"{' and '.join(missing)} not found (Debian packages samba samba-ad-dc winbind "
                "krb5-user: `make deps` installs them)"
            )
        holder = None if self.wait else _lock_holder()
        if holder is not None:
            raise Unavailable(
                f"the test lab's Samba DC is in use (pid {holder}, probably a test run): only "
                "one Samba DC can run per machine"
            )

    def open(self, stack: contextlib.ExitStack) -> None:
        self.check_can_run()
        try:
            stack.enter_context(lab_samba.lab_lock(timeout=3600 if self.wait else 0))
        except lab_samba.SambaError as error:
            raise Unavailable(_first_line(error)) from None
        self._clear_ports()
        if not self._usable():
            self._build()
        self._fix_paths(self.root)
        meta = json.loads((self.root / "lab.json").read_text())
        self.identity = f"ad:{meta['domain_sid']}"
        self.dc = lab_samba.SambaDC(self.spec, template=self.root, run_dir=self.root.parent)
        stack.callback(self.stop)
        started = time.monotonic()
        try:
            self.dc.start()
        except lab_samba.SambaError as error:
            raise Unavailable(f"samba did not start: {_first_line(error)}") from error
        self.timings["start"] = time.monotonic() - started
        if not (self.root / EXTRAS_DONE).exists():
            self.add_extras()
            (self.root / EXTRAS_DONE).write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))

    def _clear_ports(self) -> None:
        """Stop this demo's own samba left over by a killed run; refuse any other listener.

        Unlike :func:`tests.lab.samba.clear_ports`, never stops a test session's samba, even
        when the lab lock cannot see it (another /tmp: a chroot or a private /tmp).
        """
        self.stop()
        for port in lab_samba.SAMBA_PORTS:
            if not lab_samba._port_taken(port):
                continue
            for pid in lab_samba._listener_pids(port):
                if self._is_ours(pid):
                    self.say(f"stopping this demo's samba left over by an earlier run (pid {pid})")
                    lab_samba._kill_leftover(pid)
            if lab_samba._port_taken(port):
                who = lab_samba._listener_pids(port)
                shown = ", ".join(lab_samba._describe(pid) for pid in sorted(who)) or "unknown"
                raise Unavailable(f"{lab_samba.HOST}:{port} is in use by {shown}")

    def _is_ours(self, pid: int) -> bool:
        """A samba process with files open in this demo's folder."""
        prefix = str(self.root) + "/"
        try:
            if Path(os.readlink(f"/proc/{pid}/exe")).name != "samba":
                return False
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            return False
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                    return True
        return False

    def _usable(self) -> bool:
        return (self.root / "lab.json").is_file() and (self.root / "etc" / "smb.conf").is_file()

    def _build(self) -> None:
        self.say(
            f"Provisioning a Samba AD domain (EXAMPLE.TEST) into {_show(self.root)} and "
            f"loading the company: once, about 10-20 s..."
        )
        started = time.monotonic()
        staging = self.root.with_name(self.root.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        try:
            lab_samba.build_template(self.spec, staging)
            self._fix_paths(staging)
        except lab_samba.SambaError as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise Unavailable(f"provisioning failed: {_first_line(error)}") from error
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(self.root, ignore_errors=True)
        staging.rename(self.root)
        self._fix_paths(self.root)
        self.created = True
        self.timings["build"] = time.monotonic() - started

    @staticmethod
    def _fix_paths(root: Path) -> None:
        """Point smb.conf at ``root`` (provisioning wrote the absolute paths of its build
        folder; a moved checkout has old ones)."""
        meta_file = root / "lab.json"
        meta = json.loads(meta_file.read_text())
        if meta["root"] == str(root):
            return
        conf = root / "etc" / "smb.conf"
        conf.write_text(conf.read_text().replace(meta["root"], str(root)))
        meta["root"] = str(root)
        meta_file.write_text(json.dumps(meta, indent=2))

    def stop(self) -> None:
        """Stop samba, also one that was still starting when interrupted."""
        if self.dc is not None and self.dc.pid is not None:
            self.dc.stop()
            return
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.root / "run" / "samba.pid").read_text().split()[0])
            if lab_samba._pid_alive(pid) and self._is_ours(pid):
                self.say(f"stopping this demo's samba left over by an earlier run (pid {pid})")
                lab_samba._terminate(pid)

    # directory names ------------------------------------------------------------------------

    def site_settings(self) -> SiteSettings:
        return SiteSettings(
            directory="ad",
            uri=lab_samba.SambaDC.ldaps_uri,
            ca_file=str(self.root / "tls" / "lab-ca.pem"),
            bind_dn=lab_samba.READER_DN,
            bind_password=lab_samba.READER_PASSWORD,
            base_dn=lab_samba.BASE_DN,
            user_search=lab_samba.LAB_DN,
            group_search=lab_samba.LAB_DN,
        )

    def admin_connection(self) -> LDAPObject:
        return self.dc.admin_connection()

    def user_dn(self, user: UserSpec) -> str:
        return lab_samba.user_dn_for(user)

    def group_dn(self, name: str) -> str:
        return lab_samba.group_dn_for(self.spec.group(name))

    def new_user_attrs(self, user: UserSpec) -> list[tuple[str, list[bytes]]]:
        return lab_samba._user_attrs(user)

    def describe(self) -> str:
        return f"{self.label} EXAMPLE.TEST in {_show(self.root)}, on 127.0.0.1 (ports 389/636)"


# --- OpenLDAP -------------------------------------------------------------------------------


class OpenLDAPDirectory(DemoDirectory):
    kind = "openldap"
    label = "OpenLDAP slapd"
    identity = "openldap"

    def __init__(self, spec, extras, say):
        super().__init__(spec, extras, say)
        self.server = None

    def open(self, stack: contextlib.ExitStack) -> None:
        from tests.lab.slapd import LabSlapd

        if shutil.which("slapd") is None and not Path("/usr/sbin/slapd").exists():
            raise Unavailable("slapd not found (Debian package slapd: `make deps` installs it)")
        started = time.monotonic()
        self.server = LabSlapd(self.spec, tls=True, access_log=False)
        stack.callback(self.server.close)
        self.server.start()
        self.created = True
        self.timings["start"] = time.monotonic() - started
        self.add_extras()

    def site_settings(self) -> SiteSettings:
        return SiteSettings(
            directory="openldap",
            uri=self.server.ldaps_uri,
            ca_file=str(self.server.ca_file),
            bind_dn=ldif.READER_DN,
            bind_password=ldif.READER_PASSWORD,
            base_dn=ldif.BASE_DN,
            user_search=ldif.PEOPLE_DN,
            group_search=ldif.GROUPS_DN,
        )

    def admin_connection(self) -> LDAPObject:
        return self.server.admin_connection()

    def user_dn(self, user: UserSpec) -> str:
        return ldif.user_dn(user)

    def group_dn(self, name: str) -> str:
        return ldif.group_dn(self.spec.group(name))

    def new_user_attrs(self, user: UserSpec) -> list[tuple[str, list[bytes]]]:
        return list(ldif.user_attrs(user).items())

    def describe(self) -> str:
        return f"{self.label} in {self.server.testrundir}, on {self.server.ldaps_uri}"


# --- choosing -------------------------------------------------------------------------------


def open_directory(
    choice: str,
    spec: DirectorySpec,
    extras: Extras,
    stack: contextlib.ExitStack,
    say: Callable[[str], None],
) -> DemoDirectory:
    """Start the chosen directory: "samba" (waiting for a test run's DC to finish), "openldap",
    or "auto" (Samba when it can run now, else OpenLDAP)."""
    if choice in ("auto", "samba"):
        directory = SambaDirectory(spec, extras, say, wait=choice == "samba")
        try:
            # Its own stack: a failed attempt releases the lab lock and stops samba at once.
            with contextlib.ExitStack() as attempt:
                directory.open(attempt)
                stack.enter_context(attempt.pop_all())
            return directory
        except Unavailable as why:
            if choice == "samba":
                raise
            say(f"Samba cannot run here: {why}.")
            say("Using OpenLDAP instead (the same company, synced the same way).")
    directory = OpenLDAPDirectory(spec, extras, say)
    directory.open(stack)
    return directory


def _show(path: Path) -> str:
    """A path relative to the current directory when inside it (shorter to read)."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)
