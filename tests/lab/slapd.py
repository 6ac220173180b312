"""A lab OpenLDAP server: python-ldap's ``slapdtest.SlapdObject`` with the lab's layout.

What it adds to ``SlapdObject``:

- the schemas core, cosine, inetorgperson, nis and Debian's ``msuser`` (AD attribute types),
  suffix ``dc=example,dc=test``, the ACLs of :mod:`tests.lab.ldif`'s layout (a read-only
  ``cn=reader``; binds of disabled users refused, as on AD);
- overlays as options (``memberof``, ``refint``, ``syncprov``), loaded from /usr/lib/ldap;
  ``syncprov`` (RFC 4533 Content Synchronization) with a checkpoint, a session log and an
  ``entryCSN`` index (see :class:`LabSlapd`);
- an optional size limit for unpaged searches (paged searches stay unlimited, as on AD);
- optional TLS with a lab CA (:mod:`tests.lab.certs`): StartTLS on :attr:`uri`, and
  :attr:`ldaps_uri`;
- loading a :class:`~tests.lab.spec.DirectorySpec` offline (``slapadd -q``, 100,000 users in
  seconds) or online (pipelined adds), and applying the diff between two specs online;
- ``stop()``/``start()`` that keep the data, for outage tests (``SlapdObject.stop`` deletes
  it; here :meth:`close` does);
- the server's own access log (``-d stats``), to count the SEARCH operations a client sent.

Always on a free 127.0.0.1 port, in its own temporary directory.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote_plus

import ldap
from ldap.filter import escape_filter_chars
from ldap.ldapobject import LDAPObject
from slapdtest import SlapdObject

from tests.lab import ldif
from tests.lab.certs import Certs, make_certs
from tests.lab.spec import DirectorySpec

__all__ = ["LabSlapd", "SearchOp"]

SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")
SCHEMAS = ("core", "cosine", "inetorgperson", "nis", "msuser")
OVERLAYS = ("memberof", "refint", "syncprov")
#: Equality indexes of a typical deployment. member and memberOf cost about 40% of the
#: slapadd time of a big directory; pass ``indexes=("objectClass",)`` to skip them.
DEFAULT_INDEXES = ("objectClass", "uid", "cn", "mail", "member", "memberOf", "entryUUID")

_MODIFY = {"add": ldap.MOD_ADD, "delete": ldap.MOD_DELETE, "replace": ldap.MOD_REPLACE}
_SRCH = re.compile(
    r"conn=(\d+) op=(\d+) SRCH base=\"(.*)\" scope=(\d) deref=\d+ filter=\"(.*)\"$", re.M
)


@dataclass(frozen=True)
class SearchOp:
    """One SEARCH request as slapd logged it (a paged search logs one per page)."""

    conn: int
    op: int
    base: str
    scope: int
    filter: str


def _msuser_ldif() -> str:
    """Debian's msuser schema without its ``memberOf``: the memberof module defines the real
    one (operational, with an EQUALITY rule), and slapd refuses a second definition of the
    same OID, or a user class (``mstop``) that allows an operational attribute."""
    records: list[list[str]] = []
    for line in (SCHEMA_DIR / "msuser.ldif").read_text().split("\n"):
        if line[:1] in (" ", "\t") and records:
            records[-1].append(line)
        else:
            records.append([line])
    kept = []
    for record in records:
        text = "\n".join(record)
        if text.startswith("olcAttributeTypes:") and "NAME 'memberOf'" in text:
            continue
        kept.append(text.replace(" $ memberOf $ ", " $ "))
    return "\n".join(kept)


class LabSlapd(SlapdObject):
    """A slapd for one test or one session. Use as a context manager, or call :meth:`close`.

    ``spec`` is loaded at the first :meth:`start`: offline with ``slapadd -q`` (default), or
    online when ``offline=False``. Without a spec, the server holds the base entries and
    the reader account only. ``sizelimit`` caps *unpaged* searches of non-root users
    (SIZELIMIT_EXCEEDED beyond it). ``certs`` reuses a CA made earlier (saves ~0.5 s).
    ``indexes`` are the attributes with an equality index.

    With ``"syncprov"`` in ``overlays``: a contextCSN checkpoint every 100 writes or 10 minutes,
    a session log of ``syncprov_sessionlog`` writes (0: none; a cookie older than the log gets a
    present phase instead of deletes), an ``entryCSN`` index (without it syncprov cannot tell a
    stale cookie, and accepts every one) and, with ``syncprov_reload_hint``, e-syncRefreshRequired
    for a stale cookie instead of a full refresh. Opt-in: syncprov makes writes slower.
    """

    suffix = ldif.BASE_DN
    root_cn = "admin"
    root_pw = ldif.ROOT_PASSWORD
    TMPDIR = tempfile.gettempdir()

    def __init__(
        self,
        spec: DirectorySpec | None = None,
        *,
        offline: bool = True,
        overlays: Sequence[str] = ("memberof",),
        sizelimit: int | None = None,
        tls: bool = False,
        certs: Certs | None = None,
        access_log: bool = True,
        indexes: Sequence[str] = DEFAULT_INDEXES,
        photo_attribute: str = ldif.PHOTO_ATTRIBUTE,
        syncprov_sessionlog: int = 1000,
        syncprov_reload_hint: bool = False,
    ) -> None:
        unknown = set(overlays) - set(OVERLAYS)
        if unknown:
            raise ValueError(f"unknown overlays {sorted(unknown)}; known: {OVERLAYS}")
        super().__init__()
        self.testrundir = tempfile.mkdtemp(prefix=f"adldap-slapd-{self._port}-", dir=self.TMPDIR)
        self._slapd_conf = os.path.join(self.testrundir, "slapd.d")
        self._db_directory = os.path.join(self.testrundir, "data")
        self.ldapi_uri = "ldapi://" + quote_plus(os.path.join(self.testrundir, "ldapi"))
        self.default_ldap_uri = self.ldapi_uri
        self.cli_sasl_external = True
        self.overlays = tuple(overlays)
        self.sizelimit = sizelimit
        self.tls = tls or certs is not None
        self.certs = certs
        self.access_log = access_log
        self.indexes = tuple(indexes)
        if "syncprov" in self.overlays and "entryCSN" not in self.indexes:
            self.indexes += ("entryCSN",)
        self.syncprov_sessionlog = syncprov_sessionlog
        self.syncprov_reload_hint = syncprov_reload_hint
        self.photo_attribute = photo_attribute
        self.ldaps_uri: str | None = None
        if self.tls:
            self.ldaps_uri = f"ldaps://{self.local_host}:{self._avail_tcp_port()}"
        self.log_path = Path(self.testrundir, "slapd.log")
        self.spec = DirectorySpec(users=[], groups=[])
        self._pending: tuple[DirectorySpec, bool] | None = (
            spec or DirectorySpec(users=[], groups=[]),
            offline,
        )
        self._prepared = False
        self._loaded = False
        self._dns: ldif.DnMap | None = None

    # -- identity of the lab ---------------------------------------------------------------

    @property
    def uri(self) -> str:
        return f"ldap://{self.local_host}:{self._port}"

    @property
    def base_dn(self) -> str:
        return ldif.BASE_DN

    @property
    def root_password(self) -> str:
        return self.root_pw

    @property
    def reader_dn(self) -> str:
        return ldif.READER_DN

    @property
    def reader_password(self) -> str:
        return ldif.READER_PASSWORD

    @property
    def ca_file(self) -> str | None:
        return str(self.certs.ca_file) if self.certs else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def user_dn(self, key: str) -> str:
        return self._dn_map().users[key]

    def group_dn(self, name: str) -> str:
        return self._dn_map().groups[name]

    def _dn_map(self) -> ldif.DnMap:
        if self._dns is None:
            self._dns = ldif.DnMap(self.spec)
        return self._dns

    def _set_spec(self, spec: DirectorySpec) -> None:
        self.spec = spec
        self._dns = None

    def sync_settings(self, tls: Literal["none", "starttls", "ldaps"] = "none") -> dict[str, Any]:
        """``LDAP_SYNC_*`` settings for this server (see :func:`ldif.openldap_sync_settings`)."""
        return ldif.openldap_sync_settings(self, tls=tls, photo_attribute=self.photo_attribute)

    # -- configuration ---------------------------------------------------------------------

    def gen_config(self) -> str:
        """cn=config: global settings, modules and schemas (the database comes after the
        schemas, see :meth:`_database_config`)."""
        tls = ""
        if self.certs:
            tls = (
                f"olcTLSCACertificateFile: {self.certs.ca_file}\n"
                f"olcTLSCertificateFile: {self.certs.cert_file}\n"
                f"olcTLSCertificateKeyFile: {self.certs.key_file}\n"
                "olcTLSVerifyClient: never\n"
            )
        # memberof is always loaded: its memberOf definition replaces msuser's (see _msuser_ldif)
        modules = "".join(
            f"olcModuleLoad: {name}\n"
            for name in dict.fromkeys(("back_mdb", "memberof", *self.overlays))
        )
        uid, gid = os.getuid(), os.getgid()
        config = (
            "dn: cn=config\n"
            "objectClass: olcGlobal\n"
            "cn: config\n"
            f"olcServerID: {self.server_id}\n"
            "olcLogLevel: 0\n"
            f'olcAuthzRegexp: "gidnumber={gid}\\+uidnumber={uid},cn=peercred,cn=external,'
            f'cn=auth" "{self.root_dn}"\n'
            f"{tls}\n"
            "dn: cn=module,cn=config\n"
            "objectClass: olcModuleList\n"
            "cn: module\n"
            f"olcModulePath: {MODULE_DIR}\n"
            f"{modules}\n"
            "dn: cn=schema,cn=config\n"
            "objectClass: olcSchemaConfig\n"
            "cn: schema\n\n"
        )
        schemas = [
            _msuser_ldif() if name == "msuser" else (SCHEMA_DIR / f"{name}.ldif").read_text()
            for name in SCHEMAS
        ]
        return config + "\n\n".join(schemas) + "\n\n" + self._database_config()

    def _database_config(self) -> str:
        limit = "unlimited"
        if self.sizelimit is not None:
            limit = f"size.soft={self.sizelimit} size.hard={self.sizelimit} size.prtotal=unlimited"
        # {0} refuses binds of disabled users (invalidCredentials, like AD's "data 533").
        access = [
            f"to attrs=userPassword filter={ldif.DISABLED_FILTER} by * none",
            "to attrs=userPassword by self =xw by anonymous auth by * none",
            f'to * by dn.exact="{ldif.READER_DN}" read by users read by * none',
        ]
        index = "".join(f"olcDbIndex: {name} eq\n" for name in self.indexes)
        text = (
            "dn: olcDatabase={-1}frontend,cn=config\n"
            "objectClass: olcDatabaseConfig\n"
            "objectClass: olcFrontendConfig\n"
            "olcDatabase: {-1}frontend\n"
            "olcSizeLimit: unlimited\n\n"
            "dn: olcDatabase={0}config,cn=config\n"
            "objectClass: olcDatabaseConfig\n"
            "olcDatabase: {0}config\n"
            f"olcRootDN: {self.root_dn}\n\n"
            "dn: olcDatabase={1}mdb,cn=config\n"
            "objectClass: olcDatabaseConfig\n"
            "objectClass: olcMdbConfig\n"
            "olcDatabase: {1}mdb\n"
            f"olcSuffix: {self.suffix}\n"
            f"olcRootDN: {self.root_dn}\n"
            f"olcRootPW: {self.root_pw}\n"
            f"olcDbDirectory: {self._db_directory}\n"
            "olcDbMaxSize: 17179869184\n"  # a sparse map: room for 100,000 users with photos
            "olcDbNoSync: TRUE\n"
            f"olcSizeLimit: {limit}\n"
            f"{index}"
            + "".join(f"olcAccess: {{{i}}}{rule}\n" for i, rule in enumerate(access))
            + "\n"
        )
        for position, name in enumerate(self.overlays):
            text += (
                f"dn: olcOverlay={{{position}}}{name},olcDatabase={{1}}mdb,cn=config\n"
                "objectClass: olcOverlayConfig\n"
                f"olcOverlay: {{{position}}}{name}\n"
            )
            if name == "memberof":
                text += (
                    "objectClass: olcMemberOf\n"
                    "olcMemberOfGroupOC: groupOfNames\n"
                    "olcMemberOfMemberAD: member\n"
                    "olcMemberOfMemberOfAD: memberOf\n"
                    "olcMemberOfRefInt: TRUE\n"
                )
            elif name == "refint":
                text += "objectClass: olcRefintConfig\nolcRefintAttribute: member\n"
            elif name == "syncprov":
                text += "objectClass: olcSyncProvConfig\nolcSpCheckpoint: 100 10\n"
                if self.syncprov_sessionlog:
                    text += f"olcSpSessionlog: {self.syncprov_sessionlog}\n"
                if self.syncprov_reload_hint:
                    text += "olcSpReloadHint: TRUE\n"
            text += "\n"
        return text

    def prepare(self) -> None:
        """Write the configuration (and TLS files); idempotent. :meth:`start` calls it."""
        if self._prepared:
            return
        atexit.register(self.close)
        os.makedirs(self._slapd_conf)
        os.makedirs(self._db_directory)
        if self.tls and self.certs is None:
            self.certs = make_certs(Path(self.testrundir, "certs"))
        self._slapadd(self.gen_config().encode(), ["-n0"])
        self._prepared = True

    def _slapadd(self, data: bytes, args: list[str]) -> None:
        result = subprocess.run(
            [self.PATH_SLAPADD, "-F", self._slapd_conf, *args],
            input=data,
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"slapadd {args} failed:\n{result.stderr.decode(errors='replace')}")

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start slapd (first time: configure and load the spec given to the constructor).
        After :meth:`stop`, the same data comes back."""
        if self.running:
            return
        self.prepare()
        if self._pending and self._pending[1]:
            spec, _ = self._pending
            self.load_offline(spec)
            self._pending = None
        self._start_slapd()
        if self._pending:
            self.load_online(self._pending[0])
            self._pending = None

    def _start_slapd(self) -> None:
        urls = [self.uri + "/", self.ldapi_uri]
        if self.ldaps_uri:
            urls.append(self.ldaps_uri + "/")
        args = [self.PATH_SLAPD, "-F", self._slapd_conf, "-h", " ".join(urls)]
        args += ["-d", "stats" if self.access_log else "0"]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                args, stdout=subprocess.DEVNULL, stderr=log, preexec_fn=_die_with_parent
            )
        deadline = time.monotonic() + 10
        while True:
            if self._proc.poll() is not None:
                self._proc = None
                raise RuntimeError(f"slapd exited at start; see {self.log_path}")
            try:
                probe = ldap.initialize(self.uri)
                probe.set_option(ldap.OPT_NETWORK_TIMEOUT, 1.0)
                probe.search_s("", ldap.SCOPE_BASE, attrlist=["1.1"])
                probe.unbind_s()
                return
            except ldap.SERVER_DOWN:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"slapd did not answer; see {self.log_path}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop slapd, keeping its data (an outage); :meth:`start` resumes it."""
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()
            self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop slapd and delete its directory."""
        atexit.unregister(self.close)
        self.stop()
        shutil.rmtree(self.testrundir, ignore_errors=True)

    def __enter__(self) -> LabSlapd:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- loading ---------------------------------------------------------------------------

    def load_offline(self, spec: DirectorySpec) -> None:
        """Load ``spec`` with ``slapadd -q`` into this new server, before its first start.

        The LDIF carries what overlays would have written (``memberOf`` when the memberof
        overlay is on) and deterministic entryUUIDs; slapadd adds entryCSN and timestamps.
        """
        if self.running or self._loaded:
            raise RuntimeError("slapadd loads a new server before its first start")
        self.prepare()
        data = ldif.spec_ldif(
            spec, member_of="memberof" in self.overlays, photo_attribute=self.photo_attribute
        )
        self._slapadd(data, ["-q", "-b", self.suffix])
        self._loaded = True
        self._set_spec(spec)

    def load_online(self, spec: DirectorySpec, *, window: int = 64) -> None:
        """Make the running server hold ``spec``, over LDAP as the rootdn (overlays see every
        write); from empty, this adds everything. Pipelined: about 5,000 entries/s."""
        self.apply(self.spec, spec, window=window)

    def apply(self, old: DirectorySpec, new: DirectorySpec, *, window: int = 64) -> None:
        """Write the difference between ``old`` (what the server holds) and ``new``."""
        conn = self.admin_connection()
        try:
            if not self._has_suffix(conn):
                _run_phase(
                    conn, [ldif.Op("add", dn, attrs) for dn, attrs in ldif.base_entries()], 1
                )
            for phase in self.operations(old, new):
                _run_phase(conn, phase, window)
                if "refint" in self.overlays and phase[0].kind == "moddn":
                    _await_refint(conn, [op.dn for op in phase])
            self._loaded = True
        finally:
            conn.unbind_s()
        self._set_spec(new)

    def operations(self, old: DirectorySpec, new: DirectorySpec) -> list[list[ldif.Op]]:
        """The writes :meth:`apply` sends (:func:`ldif.changes_ldif` makes them LDIF; with
        the refint overlay alone, which rewrites members in the background, only
        :meth:`apply` waits for it between the moves and the member changes)."""
        return ldif.diff_operations(
            old,
            new,
            member_renames=bool({"memberof", "refint"} & set(self.overlays)),
            photo_attribute=self.photo_attribute,
        )

    def _has_suffix(self, conn: LDAPObject) -> bool:
        try:
            conn.search_s(self.suffix, ldap.SCOPE_BASE, attrlist=["1.1"])
        except ldap.NO_SUCH_OBJECT:
            return False
        return True

    def set_sizelimit(self, limit: int | None) -> None:
        """Change the unpaged size limit of the running server (via cn=config)."""
        value = "unlimited"
        if limit is not None:
            value = f"size.soft={limit} size.hard={limit} size.prtotal=unlimited"
        conn = self.admin_connection()
        try:
            conn.modify_s(
                "olcDatabase={1}mdb,cn=config",
                [(ldap.MOD_REPLACE, "olcSizeLimit", [value.encode()])],
            )
        finally:
            conn.unbind_s()
        self.sizelimit = limit

    # -- connections -----------------------------------------------------------------------

    def connect(
        self,
        who: str | None = None,
        password: str | None = None,
        *,
        uri: str | None = None,
        start_tls: bool = False,
        ca_file: str | None = None,
        timeout: float = 5.0,
    ) -> LDAPObject:
        """A bound python-ldap connection (anonymous when ``who`` is None). TLS connections
        verify the certificate against ``ca_file`` (default: the lab CA)."""
        conn = ldap.initialize(uri or self.uri)
        conn.protocol_version = 3
        conn.set_option(ldap.OPT_REFERRALS, 0)
        conn.set_option(ldap.OPT_NETWORK_TIMEOUT, timeout)
        conn.set_option(ldap.OPT_TIMEOUT, timeout)
        if start_tls or (uri or "").startswith("ldaps://"):
            conn.set_option(ldap.OPT_X_TLS_CACERTFILE, ca_file or self.ca_file)
            conn.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, ldap.OPT_X_TLS_DEMAND)
            conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)
        if start_tls:
            conn.start_tls_s()
        if who is not None:
            conn.simple_bind_s(who, password or "")
        return conn

    def admin_connection(self) -> LDAPObject:
        """Bound as the rootdn: no ACLs, no limits. For test mutations."""
        return self.connect(self.root_dn, self.root_pw)

    def reader_connection(self) -> LDAPObject:
        """Bound as ``cn=reader``, the account the sync uses (ACLs and limits apply)."""
        return self.connect(self.reader_dn, self.reader_password)

    # -- access log ------------------------------------------------------------------------

    def log_position(self) -> int:
        """A mark in the access log, for :meth:`searches` (``since=``)."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def searches(self, since: int = 0) -> list[SearchOp]:
        """SEARCH operations logged after the mark ``since`` (needs ``access_log=True``)."""
        if not self.access_log:
            raise RuntimeError("this server runs without access log")
        with open(self.log_path, "rb") as log:
            log.seek(since)
            text = log.read().decode("utf-8", errors="replace")
        return [
            SearchOp(int(conn), int(op), base, int(scope), filter_)
            for conn, op, base, scope, filter_ in _SRCH.findall(text)
        ]


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, so no slapd outlives a run."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _await_refint(conn: LDAPObject, old_dns: list[str], timeout: float = 30.0) -> None:
    """Wait until the refint overlay, which works in a background thread after the rename
    has returned, has rewritten every ``member`` value naming one of ``old_dns``."""
    deadline = time.monotonic() + timeout
    for start in range(0, len(old_dns), 100):
        chunk = old_dns[start : start + 100]
        terms = "".join(f"(member={escape_filter_chars(dn)})" for dn in chunk)
        filterstr = f"(|{terms})"
        while conn.search_s(ldif.GROUPS_DN, ldap.SCOPE_SUBTREE, filterstr, ["1.1"]):
            if time.monotonic() > deadline:
                raise TimeoutError("refint did not rewrite the members of renamed entries")
            time.sleep(0.01)


def _run_phase(conn: LDAPObject, ops: Iterable[ldif.Op], window: int) -> None:
    """Send ``ops`` with up to ``window`` outstanding requests; raise on the first error."""
    pending: collections.deque[tuple[int, ldif.Op]] = collections.deque()

    def collect() -> None:
        msgid, op = pending.popleft()
        try:
            conn.result3(msgid)
        except ldap.LDAPError as error:
            error.args = (*error.args, f"{op.kind} {op.dn!r}")
            raise

    for op in ops:
        if op.kind == "add":
            msgid = conn.add_ext(op.dn, list(op.attrs.items()))
        elif op.kind == "modify":
            msgid = conn.modify_ext(op.dn, [(_MODIFY[k], a, v) for k, a, v in op.mods])
        elif op.kind == "delete":
            msgid = conn.delete_ext(op.dn)
        else:
            msgid = conn.rename(op.dn, op.new_rdn, op.new_superior, delold=1)
        pending.append((msgid, op))
        if len(pending) >= window:
            collect()
    while pending:
        collect()
