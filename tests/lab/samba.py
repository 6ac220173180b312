"""A real Samba Active Directory domain controller for tests.

Why this shape:

* Provisioning a domain and loading the lab directory (:func:`tests.lab.spec.company`, 1,600+
  users) takes tens of seconds, so it happens once: the stopped DC's directory is cached as a
  *template* in ``<repo>/.lab-cache/samba-<key>``. The key hashes the spec data, this module,
  ``certs.py`` and the Samba version, so changing any of them builds a new template.
* Each test session copies the template (``cp -a``) to ``/tmp/adldap-samba-XXXX/dc`` and starts
  ``samba -D`` there. ``/tmp`` keeps the ldapi socket path short (Unix sockets allow ~108 bytes).
  Provisioning writes absolute paths into ``etc/smb.conf`` and nowhere else (measured), so the
  copy only needs that one file rewritten: ``lab.json`` records the path it was built in.
* Samba's ports are fixed (389, 636, 88, 3268...), so only one DC can run per machine.
  :func:`lab_lock` (``fcntl.flock``) serialises pytest processes; whoever holds the lock may
  treat any other lab samba as left over from a crashed run and kill it.
* :meth:`SambaDC.reset` stops the DC, re-copies the template and starts again (about 0.5 s),
  for tests that change the directory. :meth:`SambaDC.is_clean` notices changes by comparing
  the rootDSE ``highestCommittedUSN`` with its value at start, so even writes a test did not
  ask for (a user's first bind writes ``lastLogonTimestamp``) are caught.

Naming: ``*_dn`` is a DN string, ``root`` the DC's directory (holding ``etc/smb.conf``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
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
from ldap.dn import escape_dn_chars
from ldap.ldapobject import LDAPObject

from . import certs as certs_module
from .certs import Certs, make_certs
from .spec import DirectorySpec, GroupSpec, UserSpec

__all__ = [
    "ADMIN_DN",
    "ADMIN_PASSWORD",
    "BASE_DN",
    "CACHE_DIR",
    "LAB_DN",
    "READER_DN",
    "READER_PASSWORD",
    "SambaDC",
    "SambaError",
    "display_name",
    "ensure_template",
    "lab_lock",
    "sid_to_str",
    "template_key",
]

logger = logging.getLogger(__name__)


REALM = "EXAMPLE.TEST"
NETBIOS = "EXAMPLE"
BASE_DN = "DC=example,DC=test"
LAB_DN = f"OU=Lab,{BASE_DN}"
ADMIN_DN = f"CN=Administrator,CN=Users,{BASE_DN}"
ADMIN_PASSWORD = "Admin-Passw0rd!"  # provision still enforces complexity
READER_NAME = "svc-reader"
READER_DN = f"CN={READER_NAME},CN=Users,{BASE_DN}"
READER_PASSWORD = "Reader-Passw0rd!"

HOST = "127.0.0.1"
#: TCP ports the DC binds; any of them taken makes samba fail (or, for 389, fool the start poll).
SAMBA_PORTS = (389, 636, 3268, 3269, 88, 464, 135)

REPO_DIR = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_DIR / ".lab-cache"
#: Session and build copies live here; a short path keeps ``private/ldap_priv/ldapi`` legal.
RUN_PARENT = Path("/tmp")
RUN_PREFIX = "adldap-samba-"
#: Machine-wide (not per checkout): the ports are machine-wide too.
LOCK_FILE = RUN_PARENT / "adldap-samba.lock"

#: Rebuild older templates: accounts bound while loading (Administrator, svc-reader) get
#: ``lastLogonTimestamp`` rewritten once it is 9-14 days old, which would make a fresh copy
#: change by itself on the first bind.
TEMPLATE_MAX_AGE = 7 * 24 * 3600
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
LOCK_TIMEOUT = 3600.0
#: Values per ``member`` modify: "All Bulk" has 1,601 members.
MEMBER_CHUNK = 400

UF_ACCOUNTDISABLE = 0x2
UF_PASSWD_NOTREQD = 0x20
UF_NORMAL_ACCOUNT = 0x200


#: Receives progress lines worth showing a waiting human (pytest capture hides logging).
Notify = Callable[[str], None]


def _log_only(message: str) -> None:
    logger.warning("%s", message)


class SambaError(RuntimeError):
    """The lab DC could not be provisioned, started or stopped."""


# --- directory layout -----------------------------------------------------------------------


def ou_dn(ou: str) -> str:
    return f"OU={escape_dn_chars(ou)},{LAB_DN}"


def user_dn_for(user: UserSpec) -> str:
    return f"CN={escape_dn_chars(user.common_name)},{ou_dn(user.ou)}"


def group_dn_for(group: GroupSpec) -> str:
    return f"CN={escape_dn_chars(group.name)},{ou_dn(group.ou)}"


def display_name(user: UserSpec) -> str:
    """The ``displayName`` the loader writes ("John Doe", whatever the cn)."""
    return f"{user.given_name} {user.sn}"


def user_account_control(user: UserSpec) -> int:
    """512 enabled, 514 disabled; users without a password also get PASSWD_NOTREQD (544)."""
    flags = UF_NORMAL_ACCOUNT
    if user.disabled:
        flags |= UF_ACCOUNTDISABLE
    if user.password is None:
        flags |= UF_PASSWD_NOTREQD
    return flags


def encode_password(password: str) -> bytes:
    """``unicodePwd`` wants the quoted password in UTF-16-LE."""
    return f'"{password}"'.encode("utf-16-le")


def sid_to_str(raw: bytes) -> str:
    """Decode a binary ``objectSid`` to ``S-1-5-21-...`` (kept here: the lab must not rely on
    the code under test)."""
    count = raw[1]
    authority = int.from_bytes(raw[2:8], "big")
    subs = (int.from_bytes(raw[8 + 4 * i : 12 + 4 * i], "little") for i in range(count))
    return f"S-{raw[0]}-{authority}" + "".join(f"-{s}" for s in subs)


def _user_attrs(user: UserSpec) -> list[tuple[str, list[bytes]]]:
    values: dict[str, str | bytes | None] = {
        "sAMAccountName": user.key,
        "userPrincipalName": f"{user.key}@{REALM.lower()}",
        "givenName": user.given_name,
        "sn": user.sn,
        "displayName": display_name(user),
        "mail": user.mail,
        "department": user.department,
        "title": user.title,
        "thumbnailPhoto": user.photo,
        "userAccountControl": str(user_account_control(user)),
    }
    if user.password is not None:
        values["unicodePwd"] = encode_password(user.password)
    attrs = [("objectClass", [b"user"])]
    for name, value in values.items():
        if value is not None:
            attrs.append((name, [value if isinstance(value, bytes) else value.encode()]))
    return attrs


def _group_attrs(group: GroupSpec) -> list[tuple[str, list[bytes]]]:
    attrs = [("objectClass", [b"group"]), ("sAMAccountName", [group.name.encode()])]
    if group.description:
        attrs.append(("description", [group.description.encode()]))
    return attrs


def _chunks(values: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def load_directory(conn: LDAPObject, spec: DirectorySpec) -> None:
    """Create the lab OUs, users and groups, then the memberships.

    Groups are created empty first because members may be groups created later (and the
    ``Cycle A``/``Cycle B`` cycle has no valid order at all).
    """
    conn.add_s(LAB_DN, [("objectClass", [b"organizationalUnit"])])
    for ou in sorted({u.ou for u in spec.users} | {g.ou for g in spec.groups}):
        conn.add_s(ou_dn(ou), [("objectClass", [b"organizationalUnit"])])
    dns = {}
    for user in spec.users:
        dns[user.key] = user_dn_for(user)
        conn.add_s(dns[user.key], _user_attrs(user))
    for group in spec.groups:
        dns["group:" + group.name] = group_dn_for(group)
        conn.add_s(dns["group:" + group.name], _group_attrs(group))
    for group in spec.groups:
        missing = [m for m in group.members if m not in dns]
        if missing:
            raise SambaError(f"group {group.name!r} names unknown members {missing}")
        member_dns = [dns[m] for m in group.members]
        for chunk in _chunks(member_dns, MEMBER_CHUNK):
            values = [dn.encode() for dn in chunk]
            conn.modify_s(dns["group:" + group.name], [(ldap.MOD_ADD, "member", values)])


def add_reader(conn: LDAPObject) -> None:
    """The sync's least-privilege account: an ordinary user (Domain Users only)."""
    conn.add_s(
        READER_DN,
        [
            ("objectClass", [b"user"]),
            ("sAMAccountName", [READER_NAME.encode()]),
            ("userPrincipalName", [f"{READER_NAME}@{REALM.lower()}".encode()]),
            ("description", [b"adldap-auth sync reader (least privilege)"]),
            ("userAccountControl", [str(UF_NORMAL_ACCOUNT).encode()]),
            ("unicodePwd", [encode_password(READER_PASSWORD)]),
        ],
    )


#: The control access right "Replicating Directory Changes" (DS-Replication-Get-Changes).
GET_CHANGES_RIGHT = "1131f6aa-9c07-11d1-f79f-00c04fc2dcd2"


# --- processes, ports, lock -----------------------------------------------------------------


def _samba_env() -> dict[str, str]:
    """Samba's tools run on the system Python: keep the venv's Python settings away."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["LC_ALL"] = "C.UTF-8"
    return env


def _tool(name: str) -> str:
    """Full path of a command; ``samba`` lives in /usr/sbin, which a user's PATH may lack."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise SambaError(
            f"{name!r} not found: the Samba lab needs the Debian packages "
            "samba samba-ad-dc winbind krb5-user"
        )
    return path


def _run(cmd: Sequence[str], what: str) -> str:
    result = subprocess.run(
        [_tool(cmd[0]), *cmd[1:]], capture_output=True, text=True, env=_samba_env(), check=False
    )
    if result.returncode != 0:
        raise SambaError(
            f"{what} failed (exit {result.returncode}): {' '.join(cmd)}\n"
            f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return result.stdout


def samba_version() -> str:
    return _run(["samba", "--version"], "samba --version").strip()


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of a process, or None when it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rindex(")") + 2 :].split()
    return fields[0], int(fields[2])


def _pid_alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in "ZX"


def _group_members(pgid: int) -> list[int]:
    """Running processes of a process group.

    Zombies do not count: they hold no sockets or files, and on this machine PID 1 reaps
    orphans only about once a second, which would add ~1.4 s to every stop.
    """
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[1] == pgid and stat[0] not in "ZX":
                members.append(int(entry.name))
    return members


def _is_samba(pid: int) -> bool:
    try:
        return Path(os.readlink(f"/proc/{pid}/exe")).name == "samba"
    except OSError:
        return False


def _terminate(pid: int, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM a samba and its whole process group, wait, then SIGKILL.

    ``samba -D`` calls setsid(), so its pid is its process group id, and the group outlives
    a leader that died first (its task processes then linger). The group is only signalled
    while samba processes are in it and it is not pytest's own group.
    """
    stat = _proc_stat(pid)
    as_group = pid != os.getpgrp() and (stat is None or stat[1] == pid)
    if as_group:
        if not any(_is_samba(member) for member in _group_members(pid)):
            return  # all gone (or the id now belongs to something else)
    elif stat is None:
        return

    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if as_group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    def alive() -> bool:
        return bool(_group_members(pid)) if as_group else _pid_alive(pid)

    send(signal.SIGTERM)
    for sig in (signal.SIGKILL, None):
        deadline = time.monotonic() + timeout
        while alive():
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        else:
            return
        if sig is None:
            raise SambaError(f"samba (pid {pid}) survived SIGTERM and SIGKILL")
        logger.warning("samba pid %s ignored SIGTERM for %.0f s: sending SIGKILL", pid, timeout)
        send(sig)


def _port_taken(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (binding is the only reliable test)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except PermissionError:
            raise SambaError(
                f"the Samba AD lab must run as root: samba binds privileged ports {SAMBA_PORTS}"
            ) from None
        except OSError:
            return True
    return False


def _listener_pids(port: int) -> set[int]:
    """Pids holding a listening TCP socket on ``port`` (via /proc/net and /proc/*/fd)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    pids = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path) in inodes:
                        pids.add(int(entry.name))
                        break
    return pids


def _describe(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return f"pid {pid} (gone)"
    return f"pid {pid} ({exe}: {cmdline.strip()})"


def _is_lab_samba(pid: int) -> bool:
    """A samba process whose files live in a lab directory (/tmp/adldap-samba-*, .lab-cache).

    Samba rewrites its command line ("samba: task[ldap] ..."), so look at its open files.
    """
    if not _is_samba(pid):
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    prefixes = (str(RUN_PARENT / RUN_PREFIX), str(CACHE_DIR) + "/")
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefixes):
                return True
    return False


def _kill_leftover(pid: int) -> None:
    """Stop a leftover lab samba process together with its whole process group."""
    stat = _proc_stat(pid)
    if stat is not None:
        _terminate(stat[1] if stat[1] != os.getpgrp() else pid)


def _leftover_pids() -> set[int]:
    """Pids from lab pid files (/tmp/adldap-samba-*/dc, .lab-cache) that still run samba."""
    pid_files = [*RUN_PARENT.glob(f"{RUN_PREFIX}*/dc/run/samba.pid")]
    pid_files += CACHE_DIR.glob("*/run/samba.pid")
    pids = set()
    for pid_file in pid_files:
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().split()[0])
            if _pid_alive(pid) and _is_lab_samba(pid):
                pids.add(pid)
    return pids


def clear_ports(keep: Path | None = None) -> None:
    """Kill lab sambas left over by crashed runs; fail clearly if a port is taken otherwise.

    Only call this while holding :func:`lab_lock`: the lock holder owns the lab, so every other
    lab samba is a leftover. Also removes leftover session directories (except ``keep``).
    """
    for pid in _leftover_pids():
        logger.warning("killing leftover lab samba: %s", _describe(pid))
        _kill_leftover(pid)
    for port in SAMBA_PORTS:
        if not _port_taken(port):
            continue
        for pid in _listener_pids(port):
            if _is_lab_samba(pid):
                logger.warning("killing leftover lab samba on port %s: %s", port, _describe(pid))
                _kill_leftover(pid)
        if _port_taken(port):
            who = ", ".join(_describe(pid) for pid in sorted(_listener_pids(port))) or "unknown"
            raise SambaError(
                f"{HOST}:{port} is already in use by {who}. The Samba AD lab needs ports "
                f"{', '.join(map(str, SAMBA_PORTS))} on {HOST} (one DC per machine): stop that "
                "service (e.g. `systemctl stop samba-ad-dc slapd`) and run the tests again."
            )
    for path in RUN_PARENT.glob(f"{RUN_PREFIX}*"):
        if path.is_dir() and path != keep and not (keep and keep.is_relative_to(path)):
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def lab_lock(timeout: float = LOCK_TIMEOUT, notify: Notify = _log_only) -> Iterator[None]:
    """Hold the machine-wide Samba lab lock (released by the kernel if the process dies)."""
    with open(LOCK_FILE, "a+") as handle:
        deadline = time.monotonic() + timeout
        holder: str | None = None
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if holder is None:
                    handle.seek(0)
                    holder = handle.read().strip() or "?"
                    notify(f"waiting for the Samba lab lock {LOCK_FILE} (held by pid {holder})")
                if time.monotonic() > deadline:
                    raise SambaError(
                        f"gave up after {timeout:.0f} s waiting for the Samba lab lock "
                        f"{LOCK_FILE} (held by pid {holder})"
                    ) from None
                time.sleep(0.2)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- one samba process ----------------------------------------------------------------------


def connect(uri: str, ca_file: Path | None = None, start_tls: bool = False) -> LDAPObject:
    """An unbound connection with timeouts; TLS verified against ``ca_file`` when given."""
    conn = ldap.initialize(uri)
    conn.set_option(ldap.OPT_PROTOCOL_VERSION, 3)
    conn.set_option(ldap.OPT_REFERRALS, 0)
    conn.set_option(ldap.OPT_NETWORK_TIMEOUT, 5)
    conn.set_option(ldap.OPT_TIMEOUT, 60)
    if ca_file is not None:
        conn.set_option(ldap.OPT_X_TLS_CACERTFILE, str(ca_file))
        conn.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, ldap.OPT_X_TLS_DEMAND)
        conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)
    if start_tls:
        conn.start_tls_s()
    return conn


def root_dse(uri: str = f"ldap://{HOST}") -> dict[str, list[bytes]]:
    conn = connect(uri)
    try:
        attrs = ["highestCommittedUSN", "dsServiceName", "defaultNamingContext"]
        return conn.search_s("", ldap.SCOPE_BASE, "(objectClass=*)", attrs)[0][1]
    finally:
        conn.unbind_s()


def _log_tail(root: Path, lines: int = 40) -> str:
    log = root / "log" / "samba.log"
    try:
        text = log.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return f"(no log at {log})"
    return f"--- last {len(text)} lines of {log} ---\n" + "\n".join(text)


def _start_samba(root: Path, timeout: float = START_TIMEOUT) -> tuple[int, int]:
    """Start ``samba -D`` on ``root``; wait for the rootDSE. Return (pid, highestCommittedUSN).

    Only call with the ports cleared (:func:`clear_ports`): otherwise another server on 389
    could answer the poll.
    """
    run_dir = root / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir()
    (root / "log").mkdir(exist_ok=True)
    conf = root / "etc" / "smb.conf"
    result = subprocess.run(
        [_tool("samba"), "-s", str(conf), "-D"],
        capture_output=True,
        text=True,
        env=_samba_env(),
        check=False,
    )
    if result.returncode != 0:
        raise SambaError(
            f"samba -s {conf} -D failed (exit {result.returncode}):\n"
            f"{result.stdout}{result.stderr}\n{_log_tail(root)}"
        )
    pid_file = run_dir / "samba.pid"
    deadline = time.monotonic() + timeout
    pid: int | None = None
    error: Exception | None = None
    while time.monotonic() < deadline:
        if pid is None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int(pid_file.read_text().split()[0])
        if pid is not None and not _pid_alive(pid):
            # Its task processes may linger: a failed ldap task ignores SIGTERM for ~10 s.
            _terminate(pid, timeout=1.0)
            raise SambaError(f"samba (pid {pid}) exited while starting\n{_log_tail(root)}")
        try:
            attrs = root_dse()
        except ldap.LDAPError as exc:
            error = exc
            time.sleep(0.05)
            continue
        if pid is not None:
            if "dsServiceName" not in attrs:
                _terminate(pid, timeout=1.0)
                raise SambaError(f"{HOST}:389 answers but is not an AD DC: {attrs}")
            return pid, int(attrs["highestCommittedUSN"][0])
        time.sleep(0.05)
    if pid is not None:
        _terminate(pid, timeout=1.0)
    raise SambaError(
        f"samba did not answer on ldap://{HOST} within {timeout:.0f} s (last error: {error})\n"
        f"{_log_tail(root)}"
    )


# --- template -------------------------------------------------------------------------------


def template_key(spec: DirectorySpec) -> str:
    """Hash of what a template depends on: spec data, loader source, Samba version."""
    digest = hashlib.sha256()
    digest.update(repr(spec).encode())
    for source in (Path(__file__), Path(certs_module.__file__)):
        digest.update(source.read_bytes())
    digest.update(samba_version().encode())
    return digest.hexdigest()[:16]


def provision(root: Path) -> None:
    """``samba-tool domain provision`` into ``root``, touching nothing in /etc or /var/lib."""
    (root / "etc").mkdir(parents=True)
    (root / "log").mkdir()
    (root / "etc" / "smb.conf").write_text("")  # without it, /etc/samba/smb.conf leaks in
    options = {
        "interfaces": HOST,
        "bind interfaces only": "yes",
        "pid directory": str(root / "run"),
        "log file": str(root / "log" / "samba.log"),
        "server services": "ldap cldap kdc rpc drepl kcc",
        "prefork children": "2",
    }
    _run(
        [
            "samba-tool", "domain", "provision", "-s", str(root / "etc" / "smb.conf"),
            f"--targetdir={root}", f"--realm={REALM}", f"--domain={NETBIOS}",
            "--server-role=dc", "--dns-backend=NONE", "--host-name=dc1",
            f"--adminpass={ADMIN_PASSWORD}",
            *(f"--option={name}={value}" for name, value in options.items()),
        ],
        "samba-tool domain provision",
    )  # fmt: skip


def configure(root: Path, certs: Certs) -> None:
    """Add what provision cannot: plain-LDAP simple binds (provision drops that option) and
    our TLS certificate; relax the password policy so tests can set any password.

    ``ldb:nosync`` (as Samba's own selftest uses) skips fsync on every write: loading and
    test writes run about twice as fast, and a lab DC's data needs no crash safety.
    """
    conf = root / "etc" / "smb.conf"
    extra = (
        "\tldb:nosync = true\n"
        "\tldap server require strong auth = no\n"
        "\ttls enabled = yes\n"
        f"\ttls keyfile = {certs.key_file}\n"
        f"\ttls certfile = {certs.cert_file}\n"
        f"\ttls cafile = {certs.ca_file}\n"
    )
    text = conf.read_text()
    if "[global]\n" not in text:
        raise SambaError(f"unexpected smb.conf from provision:\n{text}")
    conf.write_text(text.replace("[global]\n", "[global]\n" + extra, 1))
    _run(
        [
            "samba-tool", "domain", "passwordsettings", "set", "-s", str(conf),
            "--complexity=off", "--history-length=0", "--min-pwd-age=0",
            "--max-pwd-age=0", "--min-pwd-length=1",
        ],
        "samba-tool domain passwordsettings set",
    )  # fmt: skip


def build_template(spec: DirectorySpec, dest: Path) -> dict[str, Any]:
    """Provision, load ``spec``, stop, and copy the DC's directory to ``dest``.

    Runs samba, so the caller must hold :func:`lab_lock` with the ports cleared.
    """
    build_dir = Path(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}build-", dir=RUN_PARENT))
    root = build_dir / "dc"
    timings: dict[str, float] = {}
    pid: int | None = None
    try:
        started = time.monotonic()
        provision(root)
        lab_certs = make_certs(root / "tls")
        configure(root, lab_certs)
        timings["provision"] = time.monotonic() - started

        mark = time.monotonic()
        pid, _ = _start_samba(root)
        timings["first_start"] = time.monotonic() - mark

        mark = time.monotonic()
        admin = connect(f"ldap://{HOST}", lab_certs.ca_file, start_tls=True)
        admin.simple_bind_s(ADMIN_DN, ADMIN_PASSWORD)
        load_directory(admin, spec)
        add_reader(admin)
        domain_sid = sid_to_str(
            admin.search_s(BASE_DN, ldap.SCOPE_BASE, attrlist=["objectSid"])[0][1]["objectSid"][0]
        )
        admin.unbind_s()
        # The reader's first bind writes lastLogonTimestamp: do it now, not in a test.
        reader = connect(f"ldap://{HOST}")
        reader.simple_bind_s(READER_DN, READER_PASSWORD)
        reader.unbind_s()
        timings["load"] = time.monotonic() - mark

        mark = time.monotonic()
        _terminate(pid)
        pid = None
        timings["stop"] = time.monotonic() - mark

        for transient in ("run", "private/ldapi", "private/ldap_priv", "private/smbd.tmp"):
            path = root / transient
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        (root / "log" / "samba.log").unlink(missing_ok=True)
        meta = {
            "root": str(root),
            "domain_sid": domain_sid,
            "created": time.time(),
            "samba_version": samba_version(),
            "users": len(spec.users),
            "groups": len(spec.groups),
            "timings": timings,
        }
        shutil.rmtree(dest, ignore_errors=True)
        _run(["cp", "-a", str(root), str(dest)], "copying the new template")
        timings["total"] = time.monotonic() - started
        (dest / "lab.json").write_text(json.dumps(meta, indent=2))
        return meta
    except BaseException:
        if pid is not None:
            _terminate(pid)
        raise
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)


def ensure_template(spec: DirectorySpec, notify: Notify = _log_only) -> Path:
    """The cached template for ``spec``, built first if missing or stale.

    Caller holds :func:`lab_lock`. Templates for other keys are deleted (they are only
    reachable by an older checkout of this module, which would rebuild them anyway).
    """
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path = CACHE_DIR / f"samba-{template_key(spec)}"
    meta_file = path / "lab.json"
    if meta_file.exists():
        with contextlib.suppress(ValueError, KeyError):
            age = time.time() - json.loads(meta_file.read_text())["created"]
            if 0 <= age < TEMPLATE_MAX_AGE:
                return path
            notify(f"the Samba lab template is {age / 86400:.1f} days old: rebuilding it")
    notify(f"building the Samba lab template {path} (about 15 s, once)")
    clear_ports()
    staging = path.with_name(path.name + ".partial")
    meta = build_template(spec, staging)
    shutil.rmtree(path, ignore_errors=True)
    staging.rename(path)
    notify(f"Samba lab template built in {meta['timings']['total']:.1f} s")
    for other in CACHE_DIR.glob("samba-*"):
        if other != path and other.is_dir():
            shutil.rmtree(other, ignore_errors=True)
    return path


# --- the fixture object ---------------------------------------------------------------------


class SambaDC:
    """A running copy of the lab template.

    Create with :meth:`launch` while holding :func:`lab_lock`; :meth:`close` stops it and
    deletes the copy. ``stop()``/``start()`` keep the data (outage tests); ``reset()`` goes
    back to the template.
    """

    uri = f"ldap://{HOST}"
    ldaps_uri = f"ldaps://{HOST}"
    base_dn = BASE_DN
    lab_dn = LAB_DN
    admin_dn = ADMIN_DN
    admin_password = ADMIN_PASSWORD
    reader_dn = READER_DN
    reader_password = READER_PASSWORD
    netbios = NETBIOS
    realm = REALM.lower()

    def __init__(self, spec: DirectorySpec, template: Path, run_dir: Path) -> None:
        meta = json.loads((template / "lab.json").read_text())
        self.spec = spec
        self.template = template
        self.run_dir = run_dir
        self.root = run_dir / "dc"
        self.domain_sid: str = meta["domain_sid"]
        self.created: float = meta["created"]
        self._template_root: str = meta["root"]
        #: Seconds: ``build_*`` from the template's creation, others from this session.
        self.timings: dict[str, float] = {f"build_{k}": v for k, v in meta["timings"].items()}
        #: Set by :meth:`admin_connection`; cleared by :meth:`reset`.
        self.dirty = False
        #: ``highestCommittedUSN`` right after the last start from the template.
        self.baseline_usn: int | None = None
        self.pid: int | None = None
        #: Whether :meth:`launch` had to build the template.
        self.built_now = False

    @classmethod
    def launch(cls, spec: DirectorySpec, notify: Notify = _log_only) -> SambaDC:
        """Build (or reuse) the template, copy it and start samba. Hold :func:`lab_lock`."""
        launched = time.time()
        clear_ports()
        template = ensure_template(spec, notify)
        run_dir = Path(tempfile.mkdtemp(prefix=RUN_PREFIX, dir=RUN_PARENT))
        dc = cls(spec, template, run_dir)
        dc.built_now = dc.created >= launched
        try:
            dc._copy_template()
            dc.start()
        except BaseException:
            dc.close()
            raise
        dc.timings["first_copy_and_start"] = dc.timings["copy"] + dc.timings["start"]
        return dc

    # paths
    @property
    def ca_file(self) -> Path:
        return self.root / "tls" / "lab-ca.pem"

    @property
    def smb_conf(self) -> Path:
        return self.root / "etc" / "smb.conf"

    @property
    def log_file(self) -> Path:
        return self.root / "log" / "samba.log"

    # directory names
    def user_dn(self, key: str) -> str:
        try:
            return user_dn_for(self.spec.user(key))
        except StopIteration:
            raise KeyError(f"no user {key!r} in the lab spec") from None

    def group_dn(self, name: str) -> str:
        try:
            return group_dn_for(self.spec.group(name))
        except StopIteration:
            raise KeyError(f"no group {name!r} in the lab spec") from None

    # connections
    def connect(
        self, uri: str | None = None, *, start_tls: bool = False, ca_file: Path | None = None
    ) -> LDAPObject:
        """An unbound connection; ldaps/StartTLS verify against the lab CA unless told."""
        uri = uri or self.uri
        if ca_file is None and (start_tls or uri.startswith("ldaps:")):
            ca_file = self.ca_file
        return connect(uri, ca_file, start_tls)

    def bind(self, who: str, password: str, uri: str | None = None) -> LDAPObject:
        """A connection bound as ``who`` (DN, ``user@example.test`` or ``EXAMPLE\\user``)."""
        conn = self.connect(uri)
        conn.simple_bind_s(who, password)
        return conn

    def reader_connection(self) -> LDAPObject:
        return self.bind(self.reader_dn, self.reader_password)

    def admin_connection(self) -> LDAPObject:
        """Administrator over StartTLS (so ``unicodePwd`` works); marks the DC dirty."""
        self.dirty = True
        conn = self.connect(start_tls=True)
        conn.simple_bind_s(self.admin_dn, self.admin_password)
        return conn

    # rights
    def object_sid(self, dn: str) -> str:
        found = self.reader_connection().search_s(dn, ldap.SCOPE_BASE, attrlist=["objectSid"])
        return sid_to_str(found[0][1]["objectSid"][0])

    def grant_replication_right(self, dn: str) -> None:
        """Grant "Replicating Directory Changes" on the domain to ``dn``, the documented way
        (docs/ad-permissions.md: ``samba-tool dsacl set``)."""
        self.dirty = True
        _run(
            ["samba-tool", "dsacl", "set", "-H", self.uri, f"--simple-bind-dn={self.admin_dn}",
             f"--password={self.admin_password}", f"--objectdn={self.base_dn}",
             f"--sddl=(OA;;CR;{GET_CHANGES_RIGHT};;{self.object_sid(dn)})"],
            "samba-tool dsacl set",
        )  # fmt: skip

    def grant_deleted_objects(self, dn: str) -> None:
        """List contents and Read property on CN=Deleted Objects for ``dn``: ``samba-tool
        dsacl`` cannot read that container, so its descriptor is changed with ldbmodify."""
        self.dirty = True
        deleted_objects = f"CN=Deleted Objects,{self.base_dn}"
        database = str(self.root / "private" / "sam.ldb")
        found = _run(
            ["ldbsearch", "-H", database, "-s", "base", "-b", deleted_objects,
             "--controls=show_deleted:1", "nTSecurityDescriptor"],
            "reading the SD of CN=Deleted Objects",
        ).replace("\n ", "")  # fmt: skip
        sddl = next(line for line in found.splitlines() if line.startswith("nTSecurityDescriptor:"))
        ace = f"(A;CI;LCRP;;;{self.object_sid(dn)})"
        new_sddl = sddl.split(": ", 1)[1].replace("D:PAI", "D:PAI" + ace, 1)
        if ace not in new_sddl:
            raise SambaError(f"unexpected descriptor of {deleted_objects}: {sddl}")
        path = self.run_dir / "deleted-objects-sd.ldif"
        path.write_text(
            f"dn: {deleted_objects}\nchangetype: modify\nreplace: nTSecurityDescriptor\n"
            f"nTSecurityDescriptor: {new_sddl}\n"
        )
        _run(
            ["ldbmodify", "-H", database, "--controls=show_deleted:1", str(path)],
            "granting list and read on CN=Deleted Objects",
        )

    def add_tombstone(self) -> None:
        """Create and delete a contact: a domain has tombstones, a fresh lab copy none."""
        conn = self.admin_connection()
        dn = f"CN=Deleted Contact {time.monotonic_ns()},{self.lab_dn}"
        conn.add_s(dn, [("objectClass", [b"contact"])])
        conn.delete_s(dn)

    # state
    def highest_usn(self) -> int:
        return int(root_dse(self.uri)["highestCommittedUSN"][0])

    @property
    def running(self) -> bool:
        return self.pid is not None and _pid_alive(self.pid)

    def is_clean(self) -> bool:
        """True if running and nothing was written since the start from the template."""
        if not self.running or self.dirty or self.baseline_usn is None:
            return False
        try:
            return self.highest_usn() == self.baseline_usn
        except ldap.LDAPError:
            return False

    def ensure_clean(self) -> None:
        if not self.is_clean():
            self.reset()

    # lifecycle
    def _copy_template(self) -> None:
        started = time.monotonic()
        shutil.rmtree(self.root, ignore_errors=True)
        _run(["cp", "-a", str(self.template), str(self.root)], "copying the template")
        text = self.smb_conf.read_text()
        self.smb_conf.write_text(text.replace(self._template_root, str(self.root)))
        self.timings["copy"] = time.monotonic() - started

    def start(self) -> None:
        """Start samba on the current data (no-op when running)."""
        if self.running:
            return
        started = time.monotonic()
        clear_ports(keep=self.run_dir)
        self.pid, usn = _start_samba(self.root)
        if self.baseline_usn is None:
            self.baseline_usn = usn
        self.timings["start"] = time.monotonic() - started

    def stop(self) -> None:
        """Stop samba (SIGTERM to its process group, then SIGKILL); keeps the data."""
        if self.pid is None:
            return
        started = time.monotonic()
        _terminate(self.pid)
        self.pid = None
        self.timings["stop"] = time.monotonic() - started

    def reset(self) -> None:
        """Back to the template state: stop, re-copy the template, start."""
        started = time.monotonic()
        self.stop()
        self._copy_template()
        self.baseline_usn = None
        self.start()
        self.dirty = False
        self.timings["reset"] = time.monotonic() - started

    def close(self) -> None:
        """Stop samba and delete this session's copy."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<SambaDC {self.uri} root={self.root} pid={self.pid}>"
