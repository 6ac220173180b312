"""A throw-away 389 Directory Server (Debian package 389-ds-base) for tests.

Why this shape:

* ``dscreate from-file`` builds an instance from an INF file; everything (config, database,
  logs, pid file, ldapi socket) lives in a temporary directory. lib389 only finds an instance
  at ``/etc/dirsrv/slapd-<name>/dse.ldif``, so that path is a symlink to ``<dir>/etc``,
  removed again by :meth:`DS389.close`.
* dscreate assumes systemd (``systemctl start dirsrv@<name>``) and binds every interface:
  it runs on the system Python with lib389 patched to start ``ns-slapd`` itself, inside a
  private network namespace (``unshare --net``, only ``lo``). Afterwards the instance is
  stopped, pinned to 127.0.0.1 (``nsslapd-listenhost``) on a free port below the ephemeral
  range (client sockets of other jobs take ports there) and started for real.
* The memberOf plugin is on, as in most 389-DS and all FreeIPA deployments: its updates bump
  a user's ``modifyTimestamp`` when the user's groups change, which an incremental run must
  take in its stride.
* A new suffix has no ACIs: the read-only ``cn=reader`` account gets explicit read rights,
  including the operational attributes a sync asks for (``nsUniqueId``, ``entryUUID``,
  ``modifyTimestamp``, ``nsAccountLock``), which ``targetattr="*"`` does not cover.
* Users are plain ``inetOrgPerson`` entries (no AD attributes); a disabled spec user is
  locked the 389-DS way, ``nsAccountLock: true`` (binds refused by the server).

Layout and passwords are those of :mod:`tests.lab.ldif` (``ou=People``, ``ou=Groups``,
``cn=reader``), so tests compute the expected state from the same :class:`DirectorySpec`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import ldap
from ldap.ldapobject import LDAPObject

from . import ldif
from .spec import DirectorySpec

__all__ = ["DS389", "clear_leftovers", "ds389_lock", "ds389_spec", "unavailable_reason"]

SUFFIX = ldif.BASE_DN
DM_DN = "cn=Directory Manager"
DM_PASSWORD = "Passw0rd!DM"
NS_SLAPD = Path("/usr/sbin/ns-slapd")
DSCREATE = Path("/usr/sbin/dscreate")
SYSTEM_PYTHON = Path("/usr/bin/python3")
RUN_PARENT = Path("/tmp")
RUN_PREFIX = "adldap-389-"
LOCK_FILE = RUN_PARENT / "adldap-389.lock"
#: Free ports are taken from here (below the ephemeral range 32768-60999).
PORT_RANGE = (20389, 32000)
START_TIMEOUT = 60.0
#: memberOf, as in most deployments; the retro changelog and Content Synchronization give the
#: RFC 4533 change feed (LDAP_SYNC_CHANGE_TRACKING = "contentsync").
PLUGINS = ("MemberOf Plugin", "Retro Changelog Plugin", "Content Synchronization")
#: Users of the lab's "All Bulk" group kept in this directory (online adds, memberOf on).
BULK_USERS = 100
#: Operational attributes the reader must see (``targetattr="*"`` leaves them out).
READER_OPERATIONAL = ("nsUniqueId", "entryUUID", "modifyTimestamp", "createTimestamp",
                      "nsAccountLock", "memberOf", "entryusn")  # fmt: skip

Notify = Callable[[str], None]

_DSCREATE_SHIM = """
import os, sys, runpy, lib389
lib389.DirSrv.with_systemd = lambda self: False
lib389.DirSrv.pid_file = lambda self: os.environ['DS_PIDFILE']
sys.argv = ['dscreate', 'from-file', sys.argv[1]]
runpy.run_path(sys.argv[0] if os.path.isabs(sys.argv[0]) else '/usr/sbin/dscreate', run_name='__main__')
"""


class DS389Error(RuntimeError):
    """The 389-DS instance could not be created, started or stopped."""


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "389-DS instances need root (dscreate writes /etc/dirsrv, runs as dirsrv)"
    for path in (NS_SLAPD, DSCREATE, SYSTEM_PYTHON):
        if not path.exists():
            return f"{path} not found (Debian package 389-ds-base)"
    if shutil.which("unshare") is None:
        return "unshare not found (util-linux)"
    return None


def ds389_spec() -> DirectorySpec:
    """The lab company with "All Bulk" cut to :data:`BULK_USERS` users."""
    from .dc_pair import pair_spec

    return pair_spec(bulk=BULK_USERS)


def _free_port() -> int:
    for port in range(*PORT_RANGE):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        with socket.socket() as probe:  # also free on every interface (dscreate binds 0.0.0.0)
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                continue
        return port
    raise DS389Error(f"no free port in {PORT_RANGE}")


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in "ZX"


def clear_leftovers() -> None:
    """Stop and delete instances left by a killed session (hold :func:`ds389_lock`)."""
    for pid_file in RUN_PARENT.glob(f"{RUN_PREFIX}*/run/slapd.pid"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pid_file.read_text().split()[0])
            if _pid_alive(pid) and Path(os.readlink(f"/proc/{pid}/exe")).name == "ns-slapd":
                os.kill(pid, signal.SIGKILL)
    for path in RUN_PARENT.glob(f"{RUN_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)
    for link in Path("/etc/dirsrv").glob("slapd-adldap*"):
        if link.is_symlink() and not link.exists():
            link.unlink()


@contextlib.contextmanager
def ds389_lock() -> Iterator[None]:
    """One session with lab 389-DS instances per machine, so leftovers are safe to remove."""
    with open(LOCK_FILE, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- entries ------------------------------------------------------------------------------------


def user_attrs(user: Any) -> ldif.Attrs:
    """An ``inetOrgPerson`` with nothing AD-specific; disabled means ``nsAccountLock``."""
    attrs: ldif.Attrs = {
        "objectClass": [b"top", b"person", b"organizationalPerson", b"inetOrgPerson"],
        "uid": [user.key.encode()],
        "cn": [user.common_name.encode()],
        "sn": [user.sn.encode()],
    }
    optional = {
        "givenName": user.given_name,
        "mail": user.mail,
        "title": user.title,
        "departmentNumber": user.department,
    }
    for name, value in optional.items():
        if value:
            attrs[name] = [value.encode()]
    if user.photo:
        attrs["jpegPhoto"] = [user.photo]
    if user.password:
        attrs["userPassword"] = [ldif.ssha(user.password, user.key)]
    if user.disabled:
        attrs["nsAccountLock"] = [b"true"]
    return attrs


def reader_aci() -> bytes:
    attrs = "||".join(("*", *READER_OPERATIONAL))
    return (
        f'(targetattr="{attrs}")(version 3.0; acl "adldap-auth lab reader"; '
        f'allow (read, search, compare) userdn="ldap:///{ldif.READER_DN}";)'
    ).encode()


def changelog_aci() -> bytes:
    """The Content Synchronization plugin reads the retro changelog with the searcher's own
    rights: without read rights on ``cn=changelog`` a refresh advances its cookie and reports
    no change at all."""
    return (
        f'(targetattr="*")(version 3.0; acl "adldap-auth lab reader: changelog"; '
        f'allow (read, search, compare) userdn="ldap:///{ldif.READER_DN}";)'
    ).encode()


def self_aci() -> bytes:
    return (
        b'(targetattr="*")(version 3.0; acl "read own entry"; '
        b'allow (read, search, compare) userdn="ldap:///self";)'
    )


class DS389:
    """A running instance. :meth:`launch` creates and starts it; :meth:`close` destroys it."""

    base_dn = SUFFIX
    reader_dn = ldif.READER_DN
    reader_password = ldif.READER_PASSWORD
    root_dn = DM_DN
    root_password = DM_PASSWORD
    people_dn = ldif.PEOPLE_DN
    groups_dn = ldif.GROUPS_DN

    def __init__(self, root: Path, port: int, spec: DirectorySpec) -> None:
        self.root = root
        self.port = port
        self.name = f"adldap{port}"
        self.spec = spec
        self.initial_spec = spec
        self.pid: int | None = None
        self.timings: dict[str, float] = {}

    # paths and names
    @property
    def uri(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def conf_link(self) -> Path:
        return Path(f"/etc/dirsrv/slapd-{self.name}")

    @property
    def pid_file(self) -> Path:
        return self.root / "run" / "slapd.pid"

    @property
    def ldapi_uri(self) -> str:
        return "ldapi://" + str(self.root / "run" / "slapd.socket").replace("/", "%2F")

    def user_dn(self, key: str) -> str:
        return ldif.user_dn(self.spec.user(key))

    def group_dn(self, name: str) -> str:
        return ldif.group_dn(self.spec.group(name))

    # lifecycle
    @classmethod
    def launch(cls, spec: DirectorySpec | None = None, notify: Notify | None = None) -> DS389:
        root = Path(tempfile.mkdtemp(prefix=RUN_PREFIX, dir=RUN_PARENT))
        root.chmod(0o755)  # ns-slapd runs as dirsrv
        server = cls(root, _free_port(), spec or ds389_spec())
        try:
            started = time.monotonic()
            server._create()
            server.timings["create"] = time.monotonic() - started
            mark = time.monotonic()
            server.load(server.spec)
            server.timings["load"] = time.monotonic() - mark
        except BaseException:
            server.close()
            raise
        if notify:
            notify(f"389-DS {server.name} on {server.uri}: created in {server.timings['create']:.1f} s")
        return server

    def _inf(self) -> str:
        r = self.root
        return f"""[general]
config_version = 2
full_machine_name = localhost
strict_host_checking = False
systemd = False
selinux = False
start = True
[slapd]
instance_name = {self.name}
port = {self.port}
self_sign_cert = False
root_dn = {DM_DN}
root_password = {DM_PASSWORD}
db_dir = {r}/db
db_home_dir = {r}/db
ldif_dir = {r}/ldif
backup_dir = {r}/bak
log_dir = {r}/log
lock_dir = {r}/lock
run_dir = {r}/run
inst_dir = {r}/inst
tmp_dir = {r}/tmp
initconfig_dir = {r}/initconfig
local_state_dir = {r}/var
ldapi = {r}/run/slapd.socket
[backend-userroot]
suffix = {SUFFIX}
create_suffix_entry = True
sample_entries = no
"""

    def _create(self) -> None:
        if self.conf_link.exists() or self.conf_link.is_symlink():
            raise DS389Error(f"{self.conf_link} already exists")
        etc = self.root / "etc"
        etc.mkdir()
        shutil.chown(etc, "dirsrv", "dirsrv")
        self.conf_link.parent.mkdir(parents=True, exist_ok=True)
        self.conf_link.symlink_to(etc)
        inf = self.root / "create.inf"
        inf.write_text(self._inf())
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env["DS_PIDFILE"] = str(self.pid_file)
        env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
        mark = time.monotonic()
        result = subprocess.run(
            ["unshare", "--net", "sh", "-c",
             f'ip link set lo up && exec {SYSTEM_PYTHON} -c "$0" "$1"', _DSCREATE_SHIM, str(inf)],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        self.timings["dscreate"] = time.monotonic() - mark
        (self.root / "create.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise DS389Error(f"dscreate failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
        self._enable_plugins()
        self.stop()
        dse = etc / "dse.ldif"
        text = dse.read_text()
        text = text.replace(
            "nsslapd-port: ", "nsslapd-listenhost: 127.0.0.1\nnsslapd-port: ", 1
        )
        dse.write_text(text)
        self.start()

    def _enable_plugins(self) -> None:
        """Over LDAPI (reachable from outside dscreate's network namespace); effective at the
        restart that follows."""
        conn = ldap.initialize(self.ldapi_uri)
        conn.simple_bind_s(DM_DN, DM_PASSWORD)
        for plugin in PLUGINS:
            conn.modify_s(
                f"cn={plugin},cn=plugins,cn=config",
                [(ldap.MOD_REPLACE, "nsslapd-pluginEnabled", [b"on"])],
            )
        # Content Synchronization finds a change's entry by the nsUniqueId the retro changelog
        # records as targetUniqueId; without it a refresh reports no change.
        conn.modify_s(
            "cn=Retro Changelog Plugin,cn=plugins,cn=config",
            [(ldap.MOD_ADD, "nsslapd-attribute", [b"nsuniqueid:targetUniqueId"])],
        )
        conn.unbind_s()

    def _read_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(self.pid_file.read_text().split()[0])
        return None

    @property
    def running(self) -> bool:
        pid = self.pid or self._read_pid()
        return pid is not None and _pid_alive(pid)

    def start(self, timeout: float = START_TIMEOUT) -> float:
        """Start ns-slapd (it daemonises once listening); return the seconds until it answers."""
        if self.running:
            return 0.0
        started = time.monotonic()
        result = subprocess.run(
            [str(NS_SLAPD), "-D", str(self.conf_link), "-i", str(self.pid_file)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise DS389Error(f"ns-slapd failed: {result.stdout}{result.stderr}\n{self.log_tail()}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                conn = self.connect()
                conn.search_s("", ldap.SCOPE_BASE, attrlist=["vendorVersion"])
                conn.unbind_s()
                self.pid = self._read_pid()
                self.timings["start"] = time.monotonic() - started
                return self.timings["start"]
            except ldap.LDAPError:
                time.sleep(0.05)
        raise DS389Error(f"389-DS did not answer on {self.uri}\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        pid = self.pid or self._read_pid()
        self.pid = None
        if pid is None or not _pid_alive(pid):
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid_alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            text = (self.root / "log" / "errors").read_text(errors="replace").splitlines()
            return "\n".join(text[-lines:])
        return "(no errors log)"

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if self.conf_link.is_symlink():
                self.conf_link.unlink()
            shutil.rmtree(self.root, ignore_errors=True)

    # connections
    def connect(self) -> LDAPObject:
        conn = ldap.initialize(self.uri)
        conn.set_option(ldap.OPT_PROTOCOL_VERSION, 3)
        conn.set_option(ldap.OPT_REFERRALS, 0)
        conn.set_option(ldap.OPT_NETWORK_TIMEOUT, 3)
        conn.set_option(ldap.OPT_TIMEOUT, 30)
        return conn

    def admin_connection(self) -> LDAPObject:
        conn = self.connect()
        conn.simple_bind_s(DM_DN, DM_PASSWORD)
        return conn

    def reader_connection(self) -> LDAPObject:
        conn = self.connect()
        conn.simple_bind_s(self.reader_dn, self.reader_password)
        return conn

    # content
    def load(self, spec: DirectorySpec) -> None:
        """ACIs, ``ou=People``/``ou=Groups``, the reader, then ``spec``'s OUs, users, groups
        (empty first: members may be groups created later, and the cycle has no order)."""
        conn = self.admin_connection()
        try:
            if not self._exists(conn, ldif.PEOPLE_DN):
                conn.modify_s(SUFFIX, [(ldap.MOD_ADD, "aci", [reader_aci(), self_aci()])])
                conn.modify_s("cn=changelog", [(ldap.MOD_ADD, "aci", [changelog_aci()])])
                for dn, attrs in ldif.base_entries()[1:]:
                    conn.add_s(dn, list(attrs.items()))
            for dn, attrs in ldif._ou_entries(spec):
                conn.add_s(dn, list(attrs.items()))
            for user in spec.users:
                conn.add_s(ldif.user_dn(user), list(user_attrs(user).items()))
            dns = ldif.DnMap(spec)
            for group in spec.groups:
                attrs = {"objectClass": [b"top", b"groupOfNames"], "cn": [group.name.encode()]}
                if group.description:
                    attrs["description"] = [group.description.encode()]
                conn.add_s(ldif.group_dn(group), list(attrs.items()))
            for group in spec.groups:
                if group.members:
                    values = [dns.member(m).encode() for m in group.members]
                    conn.modify_s(ldif.group_dn(group), [(ldap.MOD_ADD, "member", values)])
        finally:
            conn.unbind_s()
        self.spec = spec

    @staticmethod
    def _exists(conn: LDAPObject, dn: str) -> bool:
        try:
            conn.search_s(dn, ldap.SCOPE_BASE, attrlist=["1.1"])
        except ldap.NO_SUCH_OBJECT:
            return False
        return True

    def clear(self) -> None:
        """Delete everything below ``ou=People`` and ``ou=Groups`` (deepest entries first)."""
        conn = self.admin_connection()
        try:
            dns: list[str] = []
            for base in (ldif.GROUPS_DN, ldif.PEOPLE_DN):
                with contextlib.suppress(ldap.NO_SUCH_OBJECT):
                    found = conn.search_s(base, ldap.SCOPE_SUBTREE, attrlist=["1.1"])
                    dns += [dn for dn, _ in found if dn.lower() != base.lower()]
            for dn in sorted(dns, key=lambda d: d.count(","), reverse=True):
                conn.delete_s(dn)
        finally:
            conn.unbind_s()

    def ensure_spec(self, spec: DirectorySpec) -> None:
        """Reload the directory with ``spec`` unless it already holds it."""
        if self.spec is spec:
            return
        self.clear()
        self.load(spec)

    def modify(self, dn: str, mods: Sequence[tuple[int, str, list[bytes] | None]], spec: DirectorySpec) -> None:
        """One write as Directory Manager; ``spec`` is what the directory now holds."""
        conn = self.admin_connection()
        try:
            conn.modify_s(dn, list(mods))
        finally:
            conn.unbind_s()
        self.spec = spec

    def __repr__(self) -> str:
        return f"<DS389 {self.name} {self.uri} pid={self.pid}>"
