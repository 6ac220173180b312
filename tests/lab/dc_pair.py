"""Two replicating Samba AD domain controllers of one domain, for multi-DC tests.

Why this shape:

* Samba's ports are fixed (389, 88, 135...), so two DCs cannot share a network stack. Each
  runs in its own network namespace (``ip netns``) on a link-local address
  (:data:`NET` ``.1`` and ``.2``); a bridge in the default namespace (:data:`NET` ``.254``)
  joins them and lets the tests' process reach both. Nothing routes out: the namespaces have
  no default route. Root is required.
* DC1 is provisioned and loaded with a small lab directory, DC2 joins as an additional DC
  (``samba-tool domain join ... DC``), both register their SPNs (and DC2 its DNS records on
  DC1: without them DRS binds and pulls fail), then the KCC runs and the domain replicates
  once both ways. That takes 25-40 s, so the stopped pair is cached as a *template* in
  ``<repo>/.lab-cache/dcpair-<key>`` (key: :data:`TEMPLATE_VERSION`, the spec, the Samba version) and each
  test session copies it to ``/tmp/adldap-dcpair-XXXX`` and starts both DCs (a few seconds).
  Absolute paths live only in each DC's ``etc/smb.conf``, rewritten after the copy.
* Each DC gets its own ``ncalrpc dir``: the default ``/run/samba/ncalrpc`` is machine-wide,
  and two DCs (or the single-DC lab of :mod:`tests.lab.samba`) would steal each other's sockets.
* :meth:`DCPair.blackhole` drops every packet in and out of a DC's namespace (iptables when
  present, else the namespace's link goes down): clients then wait for their timeouts, unlike a
  stopped DC, which refuses connections at once.
* A machine-wide lock (``/tmp/adldap-dcpair.lock``) keeps two pytest processes from building
  or starting pairs at once: the namespace names and addresses are fixed, since the template's
  DNS records and SPNs name the addresses.

The directory layout is that of :mod:`tests.lab.samba` (``OU=Lab``, the ``svc-reader``
account), so :func:`tests.helpers.samba_settings` works with a :class:`DCPair` or a
:class:`DC`.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import ldap
from ldap.ldapobject import LDAPObject

from .samba import (
    ADMIN_DN,
    ADMIN_PASSWORD,
    BASE_DN,
    CACHE_DIR,
    LAB_DN,
    NETBIOS,
    READER_DN,
    READER_PASSWORD,
    REALM,
    SambaError,
    _pid_alive,
    _samba_env,
    _terminate,
    _tool,
    add_reader,
    group_dn_for,
    load_directory,
    samba_version,
    user_dn_for,
)
from .spec import BIG_GROUP_SIZE, DirectorySpec, company

__all__ = ["DC", "DCPair", "LabUnavailable", "pair_spec", "unavailable_reason"]

logger = logging.getLogger(__name__)

NET = "169.254.77"
NAMESPACES = ("adldap-dc1", "adldap-dc2")
VETHS = ("v-adldap-dc1", "v-adldap-dc2")  # host-side ends; interface names stay under 16 bytes
BRIDGE = "adldap-br"
HOST_NAMES = ("dc1", "dc2")
SERVICES = "ldap cldap kdc rpc drepl kcc dns"
DNS_DOMAIN = REALM.lower()
#: The domain's naming contexts replicated when a test forces replication.
NAMING_CONTEXTS = (
    BASE_DN,
    f"CN=Configuration,{BASE_DN}",
    f"DC=DomainDnsZones,{BASE_DN}",
    f"DC=ForestDnsZones,{BASE_DN}",
)
RUN_PARENT = Path("/tmp")
RUN_PREFIX = "adldap-dcpair-"
LOCK_FILE = RUN_PARENT / "adldap-dcpair.lock"
START_TIMEOUT = 60.0
#: Bump when a change here alters what the template holds (provision, join, load, network).
TEMPLATE_VERSION = "1"
#: Users of the lab's "All Bulk" group kept in the pair's directory (loading is slow on AD).
BULK_USERS = 30

Notify = Callable[[str], None]


class LabUnavailable(RuntimeError):
    """This machine cannot run the pair (not root, no ``ip netns``, no Samba)."""


def unavailable_reason() -> str | None:
    """Why the pair cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "the DC pair needs root (network namespaces, Samba's fixed ports)"
    ip = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin")
    if ip is None:
        return "`ip` not found (Debian package iproute2)"
    probe = subprocess.run([ip, "netns", "list"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"`ip netns` is unavailable: {probe.stderr.strip()}"
    for tool in ("samba", "samba-tool", "samba_spnupdate", "samba_dnsupdate", "ldbmodify"):
        if not (shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")):
            return f"{tool!r} not found (Debian packages samba samba-ad-dc ldb-tools)"
    return None


def pair_spec(bulk: int = BULK_USERS) -> DirectorySpec:
    """The lab company with "All Bulk" cut to ``bulk`` users."""
    spec = company()
    dropped = {f"bulk{i:04d}" for i in range(bulk, BIG_GROUP_SIZE)}
    users = [u for u in spec.users if u.key not in dropped]
    groups = [
        dataclasses.replace(g, members=[m for m in g.members if m not in dropped])
        for g in spec.groups
    ]
    return DirectorySpec(users=users, groups=groups)


def _log_only(message: str) -> None:
    logger.warning("%s", message)


def _ip_tool() -> str:
    return shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin") or "ip"


def _run(cmd: Sequence[str], what: str, *, env: dict[str, str] | None = None, check: bool = True) -> str:
    """Run a command (the first word resolved in /usr/sbin too); raise with its output."""
    full = [_tool(cmd[0]) if cmd[0] != "ip" else _ip_tool(), *cmd[1:]]
    result = subprocess.run(full, capture_output=True, text=True, env=env or _samba_env(), check=False)
    if check and result.returncode != 0:
        raise SambaError(
            f"{what} failed (exit {result.returncode}): {' '.join(cmd)}\n"
            f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return result.stdout


def _in_ns(n: int, cmd: Sequence[str], what: str, *, env: dict[str, str] | None = None, check: bool = True) -> str:
    """Run ``cmd`` in DC ``n``'s network namespace."""
    tool = _tool(cmd[0])
    return _run(["ip", "netns", "exec", NAMESPACES[n - 1], tool, *cmd[1:]], what, env=env, check=check)


def ip_of(n: int) -> str:
    return f"{NET}.{n}"


# --- network --------------------------------------------------------------------------------


def net_down() -> None:
    """Kill what still runs in the lab namespaces, delete them and the bridge. Idempotent."""
    listed = _run(["ip", "netns", "list"], "ip netns list", check=False)
    present = {line.split()[0] for line in listed.splitlines() if line.strip()}
    for ns in NAMESPACES:
        if ns in present:
            pids = _run(["ip", "netns", "pids", ns], "ip netns pids", check=False).split()
            for pid in pids:
                with contextlib.suppress(SambaError, ValueError):
                    _terminate(int(pid), timeout=5.0)
            _run(["ip", "netns", "del", ns], f"ip netns del {ns}", check=False)
        shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir("/etc/netns")  # only when empty: somebody else's namespaces keep theirs
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        _run(["ip", "link", "del", BRIDGE], f"ip link del {BRIDGE}", check=False)


def net_up() -> None:
    """The bridge and both namespaces (after removing leftovers of a crashed session)."""
    net_down()
    _run(["ip", "link", "add", BRIDGE, "type", "bridge"], "creating the bridge")
    _run(["ip", "addr", "add", f"{NET}.254/24", "dev", BRIDGE], "bridge address")
    _run(["ip", "link", "set", BRIDGE, "up"], "bridge up")
    hosts = "127.0.0.1 localhost\n" + "".join(
        f"{ip_of(i + 1)} {name}.{DNS_DOMAIN} {name}\n" for i, name in enumerate(HOST_NAMES)
    )
    for n, (ns, veth) in enumerate(zip(NAMESPACES, VETHS, strict=True), start=1):
        _run(["ip", "netns", "add", ns], f"ip netns add {ns}")
        _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns], "veth")
        _run(["ip", "link", "set", veth, "master", BRIDGE, "up"], "veth up")
        _run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], "lo up")
        _run(["ip", "netns", "exec", ns, "ip", "addr", "add", f"{ip_of(n)}/24", "dev", "eth0"], "address")
        _run(["ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up"], "eth0 up")
        # ip netns exec bind-mounts these over /etc/hosts and /etc/resolv.conf
        etc = Path(f"/etc/netns/{ns}")
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(hosts)
        (etc / "resolv.conf").write_text(
            f"search {DNS_DOMAIN}\nnameserver {ip_of(n)}\nnameserver {ip_of(3 - n)}\n"
        )


# --- LDAP -----------------------------------------------------------------------------------


def connect(uri: str, *, start_tls: bool = False, timeout: float = 3.0) -> LDAPObject:
    """An unbound connection. StartTLS does not verify Samba's self-made certificate: only the
    lab's own writes (``unicodePwd`` needs an encrypted connection) use it."""
    conn = ldap.initialize(uri)
    conn.set_option(ldap.OPT_PROTOCOL_VERSION, 3)
    conn.set_option(ldap.OPT_REFERRALS, 0)
    conn.set_option(ldap.OPT_NETWORK_TIMEOUT, timeout)
    conn.set_option(ldap.OPT_TIMEOUT, 30)
    if start_tls:
        conn.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, ldap.OPT_X_TLS_NEVER)
        conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)
        conn.start_tls_s()
    return conn


def root_dse(uri: str) -> dict[str, list[bytes]]:
    conn = connect(uri)
    try:
        attrs = ["highestCommittedUSN", "dsServiceName"]
        return conn.search_s("", ldap.SCOPE_BASE, "(objectClass=*)", attrs)[0][1]
    finally:
        conn.unbind_s()


# --- one DC ---------------------------------------------------------------------------------


class DC:
    """One DC of the pair: its directory ``root`` (``etc/smb.conf``...) and namespace."""

    base_dn = BASE_DN
    lab_dn = LAB_DN
    admin_dn = ADMIN_DN
    admin_password = ADMIN_PASSWORD
    reader_dn = READER_DN
    reader_password = READER_PASSWORD
    netbios = NETBIOS
    realm = DNS_DOMAIN

    def __init__(self, n: int, root: Path, spec: DirectorySpec) -> None:
        self.n = n
        self.root = root
        self.spec = spec
        self.name = HOST_NAMES[n - 1].upper()
        self.namespace = NAMESPACES[n - 1]
        self.uri = f"ldap://{ip_of(n)}"
        self.pid: int | None = None
        self.blackholed = False

    @property
    def smb_conf(self) -> Path:
        return self.root / "etc" / "smb.conf"

    def user_dn(self, key: str) -> str:
        return user_dn_for(self.spec.user(key))

    def group_dn(self, name: str) -> str:
        return group_dn_for(self.spec.group(name))

    # lifecycle
    @property
    def running(self) -> bool:
        return self.pid is not None and _pid_alive(self.pid)

    def start(self, timeout: float = START_TIMEOUT) -> float:
        """Start samba in the namespace and wait for its rootDSE; return the seconds taken."""
        if self.running:
            return 0.0
        started = time.monotonic()
        run_dir = self.root / "run"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir()
        env = {**_samba_env(), "KRB5_CONFIG": str(self.root / "private" / "krb5.conf")}
        _in_ns(self.n, ["samba", "-s", str(self.smb_conf), "-D"], f"starting {self.name}", env=env)
        deadline = time.monotonic() + timeout
        error: Exception | None = None
        while time.monotonic() < deadline:
            if self.pid is None:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    self.pid = int((run_dir / "samba.pid").read_text().split()[0])
            if self.pid is not None and not _pid_alive(self.pid):
                self.pid = None
                raise SambaError(f"{self.name} exited while starting\n{self.log_tail()}")
            try:
                if self.pid is not None and "dsServiceName" in root_dse(self.uri):
                    return time.monotonic() - started
            except ldap.LDAPError as exc:
                error = exc
            time.sleep(0.05)
        self.stop()
        raise SambaError(f"{self.name} did not answer on {self.uri}: {error}\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM samba's process group (SIGKILL after 10 s); keeps the data."""
        if self.pid is not None:
            _terminate(self.pid)
            self.pid = None

    def log_tail(self, lines: int = 30) -> str:
        path = self.root / "log" / "samba.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return f"(no log at {path})"

    def blackhole(self, on: bool = True) -> None:
        """Drop every packet to and from this DC (``on=False`` lets them through again)."""
        if on == self.blackholed:
            return
        if shutil.which("iptables") or shutil.which("iptables", path="/usr/sbin:/sbin"):
            action = "-I" if on else "-D"
            for chain in ("INPUT", "OUTPUT"):
                iface = "-i" if chain == "INPUT" else "-o"
                _in_ns(self.n, ["iptables", action, chain, iface, "eth0", "-j", "DROP"], "iptables")
        else:
            state = "down" if on else "up"
            _in_ns(self.n, ["ip", "link", "set", "eth0", state], f"eth0 {state}")
        self.blackholed = on

    def partition(self, other: DC, on: bool = True) -> None:
        """Cut (``on=False``: restore) the link between this DC and ``other`` only, so no
        replication happens while clients still reach both. Needs iptables."""
        action = "-I" if on else "-D"
        _in_ns(self.n, ["iptables", action, "INPUT", "-s", ip_of(other.n), "-j", "DROP"], "iptables")
        _in_ns(self.n, ["iptables", action, "OUTPUT", "-d", ip_of(other.n), "-j", "DROP"], "iptables")

    # directory
    def connection(self, who: str = READER_DN, password: str = READER_PASSWORD) -> LDAPObject:
        conn = connect(self.uri)
        conn.simple_bind_s(who, password)
        return conn

    def admin_connection(self) -> LDAPObject:
        """Administrator over StartTLS (so ``unicodePwd`` can be written)."""
        conn = connect(self.uri, start_tls=True)
        conn.simple_bind_s(ADMIN_DN, ADMIN_PASSWORD)
        return conn

    def highest_usn(self) -> int:
        return int(root_dse(self.uri)["highestCommittedUSN"][0])

    def invocation_id(self) -> str:
        """The invocationId of this DC's NTDS Settings object (read here, not by the product)."""
        service = root_dse(self.uri)["dsServiceName"][0].decode()
        conn = self.connection(ADMIN_DN, ADMIN_PASSWORD)
        try:
            raw = conn.search_s(service, ldap.SCOPE_BASE, attrlist=["invocationId"])[0][1]
        finally:
            conn.unbind_s()
        return str(uuid.UUID(bytes_le=raw["invocationId"][0]))

    def read(self, dn: str, attrs: Sequence[str]) -> dict[str, list[bytes]] | None:
        conn = self.connection(ADMIN_DN, ADMIN_PASSWORD)
        try:
            return conn.search_s(dn, ldap.SCOPE_BASE, attrlist=list(attrs))[0][1]
        except ldap.NO_SUCH_OBJECT:
            return None
        finally:
            conn.unbind_s()

    def replicate_from(self, source: DC, contexts: Sequence[str] = (BASE_DN,)) -> None:
        """Pull ``contexts`` from ``source`` now (``samba-tool drs replicate``)."""
        for nc in contexts:
            _in_ns(
                self.n,
                ["samba-tool", "drs", "replicate", self.name, source.name, nc,
                 "-s", str(self.smb_conf), "-U", f"Administrator%{ADMIN_PASSWORD}"],
                f"replicating {nc} {source.name} -> {self.name}",
            )  # fmt: skip

    def new_invocation_id(self) -> str:
        """Give this (stopped) DC a new invocationId, as a restore from backup does on Windows.

        Samba's own ``domain backup restore`` always makes a DC with a new name; a restore
        that keeps the host name is simulated offline: the NTDS Settings object's
        ``invocationId`` is replaced in ``sam.ldb`` (``relax`` control).
        """
        if self.running:
            raise SambaError(f"stop {self.name} before changing its invocationId")
        new = uuid.uuid4()
        sam = str(self.root / "private" / "sam.ldb")
        service = (
            f"CN=NTDS Settings,CN={self.name},CN=Servers,CN=Default-First-Site-Name,CN=Sites,"
            f"CN=Configuration,{BASE_DN}"
        )
        value = base64.b64encode(new.bytes_le).decode()
        ldif = Path(tempfile.mkstemp(suffix=".ldif")[1])
        try:
            ldif.write_text(
                f"dn: {service}\nchangetype: modify\nreplace: invocationId\ninvocationId:: {value}\n"
            )
            _run(["ldbmodify", "-H", sam, "--controls=relax:0", str(ldif)], "ldbmodify invocationId")
        finally:
            ldif.unlink(missing_ok=True)
        return str(new)

    def __repr__(self) -> str:
        return f"<DC {self.name} {self.uri} pid={self.pid}{' blackholed' if self.blackholed else ''}>"


# --- build ----------------------------------------------------------------------------------


def _common_options(root: Path, n: int) -> dict[str, str]:
    return {
        "interfaces": ip_of(n),
        "bind interfaces only": "yes",
        "pid directory": str(root / "run"),
        "log file": str(root / "log" / "samba.log"),
        "server services": SERVICES,
        "prefork children": "2",
        "ncalrpc dir": str(root / "ncalrpc"),
    }


def _fix_conf(root: Path) -> None:
    """What provision/join drop or copy from the host: no DNS forwarder, own ncalrpc dir,
    plain-LDAP simple binds, no fsync (``ldb:nosync``: a lab DC needs no crash safety)."""
    conf = root / "etc" / "smb.conf"
    lines = [
        line for line in conf.read_text().splitlines(keepends=True)
        if not line.strip().startswith("dns forwarder")
    ]  # fmt: skip
    text = "".join(lines)
    extra = "\tldb:nosync = true\n\tldap server require strong auth = no\n"
    if "ncalrpc dir" not in text:
        extra += f"\tncalrpc dir = {root / 'ncalrpc'}\n"
    if "[global]\n" not in text:
        raise SambaError(f"unexpected smb.conf:\n{text}")
    conf.write_text(text.replace("[global]\n", "[global]\n" + extra, 1))


def _prepare(root: Path) -> None:
    for sub in ("etc", "run", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "etc" / "smb.conf").write_text("")  # empty: /etc/samba/smb.conf must not leak in


def provision_dc1(dc: DC) -> None:
    _prepare(dc.root)
    _in_ns(
        1,
        ["samba-tool", "domain", "provision", "-s", str(dc.smb_conf), f"--targetdir={dc.root}",
         f"--realm={REALM}", f"--domain={NETBIOS}", "--server-role=dc",
         "--dns-backend=SAMBA_INTERNAL", "--host-name=dc1", f"--host-ip={ip_of(1)}",
         f"--adminpass={ADMIN_PASSWORD}",
         *(f"--option={k}={v}" for k, v in _common_options(dc.root, 1).items())],
        "provisioning DC1",
    )  # fmt: skip
    _fix_conf(dc.root)
    _in_ns(
        1,
        ["samba-tool", "domain", "passwordsettings", "set", "-s", str(dc.smb_conf),
         "--complexity=off", "--history-length=0", "--min-pwd-age=0", "--max-pwd-age=0",
         "--min-pwd-length=1"],
        "password settings",
    )  # fmt: skip


def join_dc2(dc: DC) -> None:
    """Join as an additional DC, from an empty ``-s`` file plus options (a DC smb.conf
    without ``[netlogon]`` makes the join fail)."""
    _prepare(dc.root)
    _in_ns(
        2,
        ["samba-tool", "domain", "join", DNS_DOMAIN, "DC", "-s", str(dc.smb_conf),
         f"--targetdir={dc.root}", f"--server={ip_of(1)}", "-U", f"Administrator%{ADMIN_PASSWORD}",
         "--use-kerberos=off", "--dns-backend=SAMBA_INTERNAL", "--option=netbios name=DC2",
         f"--option=realm={REALM}", f"--option=workgroup={NETBIOS}",
         *(f"--option={k}={v}" for k, v in _common_options(dc.root, 2).items())],
        "joining DC2",
    )  # fmt: skip
    _fix_conf(dc.root)


def register(dc: DC) -> None:
    """The DC's SPNs (the ``dnsupdate`` service we do not run adds them; without them DRS
    binds fail with NT_STATUS_INVALID_PARAMETER); for DC2 also its DNS records on DC1
    (link-local addresses need ``--current-ip``)."""
    _in_ns(dc.n, ["samba_spnupdate", "-s", str(dc.smb_conf)], f"SPNs of {dc.name}")
    if dc.n == 2:
        _in_ns(
            1,
            ["samba_dnsupdate", "-s", str(dc.smb_conf), "--use-samba-tool", "--all-names",
             f"--current-ip={ip_of(2)}", f"--rpc-server-ip={ip_of(1)}"],
            "DNS records of DC2",
        )  # fmt: skip


def _clean_transient(root: Path) -> None:
    for transient in ("run", "ncalrpc", "private/ldapi", "private/ldap_priv", "private/smbd.tmp"):
        path = root / transient
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    (root / "log" / "samba.log").unlink(missing_ok=True)


def template_key(spec: DirectorySpec) -> str:
    """Hash of what the template holds: :data:`TEMPLATE_VERSION`, the spec, Samba's version."""
    digest = hashlib.sha256()
    digest.update(TEMPLATE_VERSION.encode())
    digest.update(repr(spec).encode())
    digest.update(samba_version().encode())
    return digest.hexdigest()[:16]


def build_template(spec: DirectorySpec, dest: Path) -> dict[str, object]:
    """Provision DC1, load ``spec``, join DC2, replicate, stop both, copy to ``dest``.

    The network must be up (:func:`net_up`) and the pair lock held.
    """
    build_dir = Path(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}build-", dir=RUN_PARENT))
    dcs = [DC(1, build_dir / "dc1", spec), DC(2, build_dir / "dc2", spec)]
    timings: dict[str, float] = {}
    try:
        mark = started = time.monotonic()
        provision_dc1(dcs[0])
        timings["provision"] = time.monotonic() - mark
        dcs[0].start()
        register(dcs[0])
        mark = time.monotonic()
        admin = dcs[0].admin_connection()
        load_directory(admin, spec)
        add_reader(admin)
        admin.unbind_s()
        # The reader's first bind writes lastLogonTimestamp: now, not in a test.
        dcs[0].connection().unbind_s()
        timings["load"] = time.monotonic() - mark
        mark = time.monotonic()
        join_dc2(dcs[1])
        register(dcs[1])
        timings["join"] = time.monotonic() - mark
        dcs[1].start()
        mark = time.monotonic()
        _in_ns(
            1,
            ["samba-tool", "drs", "kcc", "DC1", "-s", str(dcs[0].smb_conf),
             "-U", f"Administrator%{ADMIN_PASSWORD}"],
            "KCC on DC1",
            check=False,
        )  # fmt: skip
        dcs[1].replicate_from(dcs[0], NAMING_CONTEXTS)
        dcs[0].replicate_from(dcs[1], NAMING_CONTEXTS)
        timings["replicate"] = time.monotonic() - mark
        for dc in dcs:
            dc.stop()
            _clean_transient(dc.root)
        meta = {
            "roots": {str(dc.n): str(dc.root) for dc in dcs},
            "created": time.time(),
            "samba_version": samba_version(),
            "users": len(spec.users),
            "timings": timings,
        }
        shutil.rmtree(dest, ignore_errors=True)
        _run(["cp", "-a", str(build_dir), str(dest)], "copying the pair template")
        timings["total"] = time.monotonic() - started
        (dest / "lab.json").write_text(json.dumps(meta, indent=2))
        return meta
    finally:
        for dc in dcs:
            with contextlib.suppress(SambaError):
                dc.stop()
        shutil.rmtree(build_dir, ignore_errors=True)


def ensure_template(spec: DirectorySpec, notify: Notify = _log_only) -> Path:
    """The cached pair template for ``spec``, built first when missing (network up, lock held).

    No age limit, unlike the single-DC template: the accounts bound while loading are bound
    again at once in every session, and a week-old lastLogonTimestamp rewrite changes nothing
    the tests compare.
    """
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path = CACHE_DIR / f"dcpair-{template_key(spec)}"
    if (path / "lab.json").exists():
        return path
    notify(f"building the DC pair template {path} (about 40 s, once)")
    staging = path.with_name(path.name + ".partial")
    meta = build_template(spec, staging)
    shutil.rmtree(path, ignore_errors=True)
    staging.rename(path)
    notify(f"DC pair template built in {meta['timings']['total']:.1f} s")  # type: ignore[index]
    for other in CACHE_DIR.glob("dcpair-*"):
        if other != path and other.is_dir():
            shutil.rmtree(other, ignore_errors=True)
    return path


@contextlib.contextmanager
def pair_lock(timeout: float = 3600.0, notify: Notify = _log_only) -> Iterator[None]:
    """Hold the machine-wide DC pair lock (released by the kernel if the process dies)."""
    with open(LOCK_FILE, "a+") as handle:
        deadline = time.monotonic() + timeout
        waiting = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    notify(f"waiting for the DC pair lock {LOCK_FILE}")
                    waiting = True
                if time.monotonic() > deadline:
                    raise SambaError(f"gave up waiting for {LOCK_FILE}") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- the fixture object ---------------------------------------------------------------------


class DCPair:
    """Two running DCs copied from the template. :meth:`launch` under :func:`pair_lock`;
    :meth:`close` stops both, removes the namespaces and the copy."""

    base_dn = BASE_DN
    lab_dn = LAB_DN
    reader_dn = READER_DN
    reader_password = READER_PASSWORD
    admin_dn = ADMIN_DN
    admin_password = ADMIN_PASSWORD
    netbios = NETBIOS
    realm = DNS_DOMAIN

    def __init__(self, spec: DirectorySpec, template: Path, run_dir: Path) -> None:
        meta = json.loads((template / "lab.json").read_text())
        self.spec = spec
        self.template = template
        self.run_dir = run_dir
        self._template_roots: dict[str, str] = meta["roots"]
        self.dc1 = DC(1, run_dir / "dc1", spec)
        self.dc2 = DC(2, run_dir / "dc2", spec)
        self.timings: dict[str, float] = {f"build_{k}": v for k, v in meta["timings"].items()}
        self.built_now = False
        #: Set by anything that may have changed the directory; cleared by :meth:`reset`.
        self.dirty = False

    @property
    def dcs(self) -> tuple[DC, DC]:
        return self.dc1, self.dc2

    @property
    def uri(self) -> str:
        return self.dc1.uri

    @property
    def uris(self) -> list[str]:
        return [self.dc1.uri, self.dc2.uri]

    def user_dn(self, key: str) -> str:
        return self.dc1.user_dn(key)

    def group_dn(self, name: str) -> str:
        return self.dc1.group_dn(name)

    @classmethod
    def launch(cls, spec: DirectorySpec | None = None, notify: Notify = _log_only) -> DCPair:
        """Network up, template built or reused, copied, both DCs started."""
        spec = spec or pair_spec()
        started = time.monotonic()
        net_up()
        run_dir: Path | None = None
        try:
            launched = time.time()
            template = ensure_template(spec, notify)
            run_dir = Path(tempfile.mkdtemp(prefix=RUN_PREFIX, dir=RUN_PARENT))
            pair = cls(spec, template, run_dir)
            pair.built_now = json.loads((template / "lab.json").read_text())["created"] >= launched
            pair._copy_and_start()
        except BaseException:
            net_down()
            if run_dir is not None:
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        pair.timings["launch"] = time.monotonic() - started
        return pair

    def _copy_and_start(self) -> None:
        mark = time.monotonic()
        for dc in self.dcs:
            shutil.rmtree(dc.root, ignore_errors=True)
            _run(["cp", "-a", str(self.template / f"dc{dc.n}"), str(dc.root)], "copying the template")
            conf = dc.smb_conf
            conf.write_text(conf.read_text().replace(self._template_roots[str(dc.n)], str(dc.root)))
        self.timings["copy"] = time.monotonic() - mark
        mark = time.monotonic()
        for dc in self.dcs:
            dc.start()
        self.timings["start"] = time.monotonic() - mark

    def reset(self) -> None:
        """Back to the template: both DCs stopped, unblocked, re-copied and started."""
        mark = time.monotonic()
        for dc in self.dcs:
            dc.blackhole(False)
            dc.stop()
        self._copy_and_start()
        self.dirty = False
        self.timings["reset"] = time.monotonic() - mark

    def restore(self, dc: DC) -> None:
        """Put ``dc``'s files back as they were in the template (a file-level restore of an
        old backup: same invocationId, lower USNs) and start it."""
        dc.blackhole(False)
        dc.stop()
        shutil.rmtree(dc.root, ignore_errors=True)
        _run(["cp", "-a", str(self.template / f"dc{dc.n}"), str(dc.root)], "copying the template")
        dc.smb_conf.write_text(
            dc.smb_conf.read_text().replace(self._template_roots[str(dc.n)], str(dc.root))
        )
        dc.start()

    def replicate(self) -> None:
        """Force replication of the domain partition both ways."""
        self.dc2.replicate_from(self.dc1)
        self.dc1.replicate_from(self.dc2)

    def wait_until(self, check: Callable[[], bool], timeout: float = 30.0, what: str = "") -> float:
        """Poll ``check`` (e.g. "the change is on DC2"); return the seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            with contextlib.suppress(ldap.LDAPError):
                if check():
                    return time.monotonic() - started
            time.sleep(0.1)
        raise AssertionError(f"not within {timeout:.0f} s: {what}")

    def close(self) -> None:
        try:
            for dc in self.dcs:
                with contextlib.suppress(SambaError):
                    dc.stop()
        finally:
            net_down()
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<DCPair {self.dc1!r} {self.dc2!r}>"
