"""One session with one directory server, chosen from a failover list.

A :class:`DirectorySession` owns a bound python-ldap connection. It sets every timeout (a dead
or silent server costs seconds, not minutes), turns referral chasing off, verifies TLS
certificates against the configured CA, streams paged searches, and fetches AD's ranged
attribute values (``member;range=0-1499``) so callers always see whole values.

Every way a search can return less than its scope (size or time limit, dropped connection,
timeout) raises :class:`IncompleteRead`; nothing here ever returns a silently shortened result.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import ldap
import ldap.schema
from ldap.controls import SimplePagedResultsControl
from ldap.ldapobject import LDAPObject

from ..conf import sync_settings
from . import DirectoryError, DirectoryTLSError, DirectoryUnavailable, Entry, IncompleteRead
from .decoding import domain_sid_and_rid, guid_to_str, sid_to_str

logger = logging.getLogger("adldap_auth.directory")

#: supportedCapabilities value announced by Active Directory (and Samba AD).
AD_CAPABILITY_OID = "1.2.840.113556.1.4.800"

_RANGE_RE = re.compile(r"^(?P<name>[^;]+);range=(?P<start>\d+)-(?P<end>\d+|\*)$", re.IGNORECASE)

#: Errors after which the next URI is tried.
_FAILOVER_ERRORS = (ldap.SERVER_DOWN, ldap.TIMEOUT, ldap.CONNECT_ERROR, ldap.UNAVAILABLE, ldap.BUSY)
#: Errors that mean a search did not see its whole scope.
_INCOMPLETE_ERRORS = (
    ldap.SIZELIMIT_EXCEEDED,
    ldap.TIMELIMIT_EXCEEDED,
    ldap.ADMINLIMIT_EXCEEDED,
    ldap.SERVER_DOWN,
    ldap.TIMEOUT,
    ldap.CONNECT_ERROR,
    ldap.UNAVAILABLE,
    ldap.BUSY,
    ldap.REFERRAL,
)


@dataclass(frozen=True)
class ConnectionConfig:
    """Everything needed to reach and bind to the directory. The password is never printed."""

    uris: tuple[str, ...]
    bind_dn: str
    bind_password: str = field(repr=False)
    start_tls: bool = False
    ca_file: str | None = None
    require_cert: bool = True
    network_timeout: float = 5.0
    operation_timeout: float = 60.0
    page_size: int = 200
    #: ``LDAP_SYNC_REQUIRE_TLS``: refuse any clear-text URI (ldap:// without StartTLS) before
    #: connecting, so the bind password never crosses the network in clear text.
    require_tls: bool = False
    #: When set, multi-valued attributes named in ``ranged`` searches are requested in explicit
    #: ranges of this size (Windows AD does this by itself above MaxValRange=1500; Samba only
    #: when asked, which is how tests exercise the code path).
    range_size: int | None = None


@dataclass(frozen=True)
class RootDSE:
    """What the server says about itself before a run's searches."""

    is_ad: bool
    naming_context: str | None
    highest_committed_usn: int | None
    ds_service_name: str | None
    invocation_id: str | None
    current_time: str | None
    vendor: str | None
    #: SIDs of the bound account's token (AD's rootDSE ``tokenGroups``), for
    #: :attr:`privileged_groups`; empty elsewhere.
    token_sids: tuple[str, ...] = ()
    #: The DN of the entry holding the server's schema (RFC 4512, 5.1), for
    #: :meth:`DirectorySession.attribute_types`.
    subschema_subentry: str | None = None

    @property
    def privileged_groups(self) -> list[str]:
        """The administrators' groups the bound account belongs to (see :func:`privileged_groups`)."""
        return privileged_groups(self.token_sids)


#: Domain groups (by RID) and built-in groups (by SID) whose members administer the domain or
#: the forest: a sync account in one of them can change everything it reads.
PRIVILEGED_RIDS = {512: "Domain Admins", 518: "Schema Admins", 519: "Enterprise Admins"}
PRIVILEGED_SIDS = {"S-1-5-32-544": "BUILTIN\\Administrators"}


def privileged_groups(sids: Iterable[str]) -> list[str]:
    """Names of the administrators' groups among ``sids`` (``S-1-5-...`` strings), sorted."""
    found = set()
    for sid in sids:
        if sid in PRIVILEGED_SIDS:
            found.add(PRIVILEGED_SIDS[sid])
        elif sid.startswith("S-1-5-21-") and sid.count("-") == 7:  # S-1-5-21-a-b-c-RID
            with contextlib.suppress(ValueError):
                rid = domain_sid_and_rid(sid)[1]
                if rid in PRIVILEGED_RIDS:
                    found.add(PRIVILEGED_RIDS[rid])
    return sorted(found)


def _error_text(error: ldap.LDAPError) -> str:
    """A one-line description of a python-ldap error, without any credentials."""
    details = error.args[0] if error.args and isinstance(error.args[0], dict) else {}
    desc = details.get("desc") or type(error).__name__
    info = details.get("info")
    return f"{desc} ({info})" if info else str(desc)


def _uses_tls(uri: str, config: ConnectionConfig) -> bool:
    scheme = urlsplit(uri).scheme.lower()
    return scheme == "ldaps" or (scheme == "ldap" and config.start_tls)


def split_uris(uris: str | Iterable[str]) -> list[str]:
    """The URIs of a list, or of a string as libldap reads it (separated by spaces or commas)."""
    if isinstance(uris, str):
        uris = [uris]
    return [part for uri in uris for part in re.split(r"[\s,]+", uri.strip()) if part]


def clear_text_refusal(uris: str | Iterable[str], start_tls: bool) -> str | None:
    """Why ``LDAP_SYNC_REQUIRE_TLS`` refuses these URIs, or None when every one uses TLS.

    A URI is clear text when its scheme is ``ldap`` and StartTLS is off (the rule of check
    ``adldap_auth.E027``). The whole list is refused, not only that URI: the configuration
    needs a fix, and a failover must never be what decides whether the password is sent in
    clear text.
    """
    if start_tls:
        return None
    clear = [uri for uri in split_uris(uris) if urlsplit(uri).scheme.lower() == "ldap"]
    if not clear:
        return None
    return (
        f"clear-text URI {clear[0]!r} refused: LDAP_SYNC_REQUIRE_TLS is True and StartTLS is "
        "off (use ldaps:// or LDAP_SYNC_START_TLS = True); nothing was sent to the server"
    )


def ca_file_problem(ca_file: str) -> str | None:
    """What makes ``ca_file`` unusable as a PEM CA file, or None when Python's ssl loads it.

    Used to explain libldap's refusal (python-ldap says only "option error") and by the
    system check, which runs without the network.
    """
    try:
        with open(ca_file, "rb") as handle:
            data = handle.read()
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    begins = data.count(b"-----BEGIN CERTIFICATE-----")
    if not begins:
        return "holds no PEM certificate (-----BEGIN CERTIFICATE----- not found)"
    if begins != data.count(b"-----END CERTIFICATE-----"):
        return "holds a truncated PEM certificate (a BEGIN CERTIFICATE line without its END line)"
    try:
        ssl.create_default_context(cafile=ca_file)
    except (ssl.SSLError, ValueError) as error:
        return f"is not a valid PEM certificate file ({getattr(error, 'reason', None) or error})"
    return None


def tls_settings_refused(ca_file: str | None) -> str:
    """The error when libldap refuses the TLS settings (``OPT_X_TLS_NEWCTX`` raises
    ``ValueError: option error``), naming the CA file and, when it finds one, its problem."""
    if not ca_file:
        return (
            "libldap refused its TLS settings: its default CA certificates (TLS_CACERT in "
            "ldap.conf) are unusable; set LDAP_SYNC_CA_FILE"
        )
    problem = ca_file_problem(ca_file) or "libldap cannot load it"
    return f"CA file {ca_file} unusable: {problem} (LDAP_SYNC_CA_FILE)"


def _await_tls_handshake(uri: str, timeout: float) -> None:
    """Raise ``ldap.TIMEOUT`` when an ldaps:// server does not finish a TLS handshake within
    ``timeout`` seconds. Only liveness is probed: libldap checks the certificate afterwards.
    Any other failure (refused, reset, TLS error) is left for libldap to report."""
    parts = urlsplit(uri)
    try:
        with socket.create_connection((parts.hostname, parts.port or 636), timeout=timeout) as raw:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            with context.wrap_socket(raw, server_hostname=parts.hostname):
                pass
    except TimeoutError:
        raise ldap.TIMEOUT(
            {"desc": "TIMEOUT", "info": f"no TLS handshake within {timeout:g} s"}
        ) from None
    except (OSError, ValueError):
        return


#: An LDAPMessage with message id 1 holding the StartTLS extended request (RFC 4511, 4.14).
_START_TLS_REQUEST = b"\x30\x1d\x02\x01\x01\x77\x18\x80\x16" + b"1.3.6.1.4.1.1466.20037"


def _tls_problem(uri: str, config: ConnectionConfig) -> str | None:
    """Why TLS with ``uri`` fails, found by repeating the handshake with Python's ssl module
    (after a StartTLS request on ldap://), or None when it finds nothing wrong.

    libldap built with GnuTLS reports every TLS failure as "Can't contact LDAP server" or
    "Connect error"; this names the cause (an unknown CA, a certificate that does not cover
    the host name, an expired certificate, a server that refuses StartTLS...).
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    port = parts.port or (636 if scheme == "ldaps" else 389)
    if config.require_cert:
        trusted = f"CA file {config.ca_file}" if config.ca_file else "the system's CA certificates"
        try:
            context = ssl.create_default_context(cafile=config.ca_file or None)
        except (OSError, ValueError) as error:
            return f"cannot load {trusted}: {error}"
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        trusted = "no certificate verification"
    timeout = config.network_timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            if scheme == "ldap":
                refusal = _start_tls(raw)
                if refusal:
                    return refusal
            with context.wrap_socket(raw, server_hostname=host):
                return None
    except ssl.SSLCertVerificationError as error:
        reason = error.verify_message or error.reason or "certificate verify failed"
        return f"the certificate of {host} is not accepted: {reason} (trusted: {trusted})"
    except ssl.SSLError as error:
        return f"TLS handshake with {host}:{port} failed: {error.reason or error}"
    except (OSError, ValueError):
        return None  # not a TLS problem: libldap's own error stands


def _start_tls(raw: socket.socket) -> str | None:
    """Send StartTLS on a plain socket; None when the server agrees, else why not."""
    raw.sendall(_START_TLS_REQUEST)
    head = _read_exactly(raw, 2)
    length = head[1]
    if length & 0x80:
        length = int.from_bytes(_read_exactly(raw, length & 0x7F), "big")
    body = _read_exactly(raw, length)
    # messageID (02 01 01), then the ExtendedResponse [APPLICATION 24] whose first element
    # is the resultCode (0a 01 nn).
    code_at = body.find(b"\x0a\x01", 3)
    code = body[code_at + 2] if code_at != -1 and code_at + 2 < len(body) else None
    if code == 0:
        return None
    return f"the server refused StartTLS (result code {code})"


def _read_exactly(raw: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = raw.recv(count - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data


def _is_tls_failure(error: ldap.LDAPError) -> bool:
    text = _error_text(error).lower()
    return any(word in text for word in ("certificate", "tls", "ssl", "handshake"))


class DirectorySession:
    """A bound connection to the first answering server of ``config.uris``.

    Use :meth:`open`; ``session.uri`` says which server answered, because incremental markers
    belong to one server. ``search_count`` counts the searches sent, for run records and tests.
    """

    def __init__(self, connection: LDAPObject, uri: str, config: ConnectionConfig):
        self.connection = connection
        self.uri = uri
        self.config = config
        self.search_count = 0

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, config: ConnectionConfig) -> DirectorySession:
        """Connect and bind to the first URI that answers; raise if none does.

        Raises :class:`DirectoryTLSError`, before any connection, for a clear-text URI under
        ``config.require_tls``, and at the first URI for a CA file libldap cannot use.
        """
        if not config.uris:
            raise DirectoryUnavailable("no directory URI configured")
        if config.require_tls:
            refusal = clear_text_refusal(config.uris, config.start_tls)
            if refusal:
                raise DirectoryTLSError(refusal)
        failures: list[str] = []
        tls_failed = False
        for uri in config.uris:
            try:
                connection = cls._connect(uri, config)
            except ldap.INVALID_CREDENTIALS as error:
                # The same account fails on every server: stop before it gets locked out.
                raise DirectoryError(
                    f"bind as {config.bind_dn!r} refused by {uri}: invalid credentials"
                ) from _scrubbed(error)
            except _FAILOVER_ERRORS as error:
                text = _error_text(error)
                problem = None
                if _uses_tls(uri, config) and not isinstance(error, ldap.TIMEOUT):
                    # libldap (GnuTLS) says only "Can't contact LDAP server": name the cause.
                    problem = _tls_problem(uri, config)
                if problem:
                    text = f"TLS failed: {problem}"
                tls_failed = tls_failed or bool(problem) or _is_tls_failure(error)
                failures.append(f"{uri}: {text}")
                logger.warning("directory server %s unavailable: %s", uri, text)
                continue
            except ldap.LDAPError as error:
                raise DirectoryError(f"{uri}: {_error_text(error)}") from _scrubbed(error)
            logger.debug("bound to %s as %s", uri, config.bind_dn)
            return cls(connection, uri, config)
        message = "no directory server answered: " + "; ".join(failures)
        if tls_failed:
            raise DirectoryTLSError(message)
        raise DirectoryUnavailable(message)

    @staticmethod
    def _connect(uri: str, config: ConnectionConfig) -> LDAPObject:
        if urlsplit(uri).scheme.lower() == "ldaps":
            # libldap waits for a TLS handshake without any timeout: a server that accepts
            # TCP and never answers would hold the run forever instead of failing over.
            _await_tls_handshake(uri, config.network_timeout)
        connection = ldap.initialize(uri, bytes_mode=False)
        connection.set_option(ldap.OPT_PROTOCOL_VERSION, ldap.VERSION3)
        connection.set_option(ldap.OPT_REFERRALS, 0)
        connection.set_option(ldap.OPT_NETWORK_TIMEOUT, config.network_timeout)
        connection.set_option(ldap.OPT_TIMEOUT, config.operation_timeout)
        uses_tls = urlsplit(uri).scheme.lower() == "ldaps" or config.start_tls
        if uses_tls:
            if config.ca_file:
                connection.set_option(ldap.OPT_X_TLS_CACERTFILE, config.ca_file)
            connection.set_option(
                ldap.OPT_X_TLS_REQUIRE_CERT,
                ldap.OPT_X_TLS_DEMAND if config.require_cert else ldap.OPT_X_TLS_NEVER,
            )
            # Options above apply only to a new TLS context; this must come last.
            try:
                connection.set_option(ldap.OPT_X_TLS_NEWCTX, 0)
            except ValueError:  # python-ldap's "option error": e.g. a truncated CA file
                raise DirectoryTLSError(tls_settings_refused(config.ca_file)) from None
        if config.start_tls and urlsplit(uri).scheme.lower() == "ldap":
            # start_tls_s() is synchronous, bounded by OPT_TIMEOUT: the network timeout here,
            # so a silent server fails over as fast as one that refuses connections.
            connection.set_option(ldap.OPT_TIMEOUT, config.network_timeout)
            connection.start_tls_s()
            connection.set_option(ldap.OPT_TIMEOUT, config.operation_timeout)
        # An asynchronous bind bounded by the network timeout: a server that accepts TCP but
        # never answers must not hold the run for the (longer) operation timeout.
        msgid = connection.simple_bind(config.bind_dn, config.bind_password)
        try:
            connection.result(msgid, all=1, timeout=config.network_timeout)
        except ldap.TIMEOUT:
            connection.abandon(msgid)
            raise
        return connection

    def close(self) -> None:
        with contextlib.suppress(ldap.LDAPError):
            self.connection.unbind_s()

    def __enter__(self) -> DirectorySession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- searching -------------------------------------------------------------------------

    def root_dse(self) -> RootDSE:
        """Read the rootDSE, and on AD the DC's invocationId (restores change it)."""
        entry = self.read_entry(
            "",
            [
                "defaultNamingContext",
                "namingContexts",
                "highestCommittedUSN",
                "dsServiceName",
                "supportedCapabilities",
                "currentTime",
                "vendorName",
                "tokenGroups",  # AD: the SIDs of the bound account's token
                "subschemaSubentry",
            ],
        )
        if entry is None:
            raise DirectoryError(f"{self.uri}: the rootDSE is not readable")
        capabilities = {v.decode() for v in entry.attrs.get("supportedcapabilities", [])}
        is_ad = AD_CAPABILITY_OID in capabilities
        usn = entry.text("highestCommittedUSN")
        service = entry.text("dsServiceName")
        invocation_id = None
        if is_ad and service:
            server = self.read_entry(service, ["invocationId"])
            raw = server.first("invocationId") if server else None
            invocation_id = guid_to_str(raw) if raw else None
        return RootDSE(
            is_ad=is_ad,
            naming_context=entry.text("defaultNamingContext") or entry.text("namingContexts"),
            highest_committed_usn=int(usn) if usn else None,
            ds_service_name=service,
            invocation_id=invocation_id,
            current_time=entry.text("currentTime"),
            vendor=entry.text("vendorName"),
            token_sids=tuple(_sids(entry.attrs.get("tokengroups", ()))),
            subschema_subentry=entry.text("subschemaSubentry"),
        )

    def attribute_types(self, subschema_dn: str | None) -> frozenset[str] | None:
        """The names and OIDs (lower-case) of every attribute type of the server's schema,
        read from the subschema entry ``subschema_dn`` (the rootDSE's ``subschemaSubentry``)
        in one search; None when the server does not publish a readable schema."""
        if not subschema_dn:
            return None
        try:
            entry = self.read_entry(subschema_dn, ["attributeTypes"])
            values = entry.attrs.get("attributetypes") if entry is not None else None
            return attribute_type_names(values) if values else None
        except (DirectoryError, ValueError, LookupError) as error:  # unreadable, unparsable
            logger.info("%s: the schema in %r is not readable: %s", self.uri, subschema_dn, error)
            return None

    def read_entry(self, dn: str, attrlist: Iterable[str]) -> Entry | None:
        """A base-scope read of one entry; None when it does not exist."""
        try:
            results = self._search_all(dn, ldap.SCOPE_BASE, "(objectClass=*)", list(attrlist))
        except ldap.NO_SUCH_OBJECT:
            return None
        for result_dn, attrs in results:
            if result_dn is not None:
                return self._complete_ranges(_entry(result_dn, attrs))
        return None

    def search(
        self,
        base: str,
        filterstr: str,
        attrlist: Iterable[str],
        scope: int = ldap.SCOPE_SUBTREE,
        ranged: Iterable[str] = (),
    ) -> Iterator[Entry]:
        """Every entry under ``base`` matching ``filterstr``, a page at a time.

        ``ranged`` names multi-valued attributes that may come back in ranges; each entry is
        yielded with their values complete. Raises :class:`IncompleteRead` when the server
        stops early for any reason.
        """
        requested = self._request_attrs(attrlist, ranged)
        page = SimplePagedResultsControl(True, size=self.config.page_size, cookie=b"")
        while True:
            try:
                self.search_count += 1
                msgid = self.connection.search_ext(
                    base, scope, filterstr, requested, serverctrls=[page]
                )
                _type, data, _msgid, controls = self.connection.result3(
                    msgid, all=1, timeout=self.config.operation_timeout
                )
            except ldap.NO_SUCH_OBJECT:
                raise IncompleteRead(f"{self.uri}: search base {base!r} does not exist") from None
            except _INCOMPLETE_ERRORS as error:
                raise IncompleteRead(
                    f"{self.uri}: search of {base!r} stopped early: {_error_text(error)}"
                ) from _scrubbed(error)
            except ldap.LDAPError as error:
                raise DirectoryError(
                    f"{self.uri}: search of {base!r} failed: {_error_text(error)}"
                ) from _scrubbed(error)
            for dn, attrs in data:
                if dn is None:  # a search continuation reference: referrals are not chased
                    continue
                yield self._complete_ranges(_entry(dn, attrs))
            cookie = _page_cookie(controls)
            if not cookie:
                return
            page.cookie = cookie

    def _search_all(self, base: str, scope: int, filterstr: str, attrlist: list[str]) -> list:
        self.search_count += 1
        try:
            msgid = self.connection.search_ext(base, scope, filterstr, attrlist)
            return self.connection.result3(msgid, all=1, timeout=self.config.operation_timeout)[1]
        except ldap.NO_SUCH_OBJECT:
            raise
        except _INCOMPLETE_ERRORS as error:
            raise IncompleteRead(
                f"{self.uri}: read of {base!r} failed: {_error_text(error)}"
            ) from _scrubbed(error)
        except ldap.LDAPError as error:
            raise DirectoryError(f"{self.uri}: read of {base!r} failed: {_error_text(error)}") from (
                _scrubbed(error)
            )

    def _request_attrs(self, attrlist: Iterable[str], ranged: Iterable[str]) -> list[str]:
        names = list(dict.fromkeys(attrlist))
        if self.config.range_size:
            lowered = {name.lower() for name in ranged}
            names = [
                f"{name};range=0-{self.config.range_size - 1}" if name.lower() in lowered else name
                for name in names
            ]
        return names

    def _complete_ranges(self, entry: Entry) -> Entry:
        """Fetch the rest of every attribute the server returned as ``name;range=a-b``."""
        partial = {
            key: match
            for key in entry.attrs
            if ";" in key and (match := _RANGE_RE.match(key)) is not None
        }
        if not partial:
            return entry
        attrs = {key: values for key, values in entry.attrs.items() if key not in partial}
        for key, match in partial.items():
            name = match["name"].lower()
            values = list(entry.attrs[key])
            end = match["end"]
            while end != "*":
                next_start = int(end) + 1
                more = self._read_range(entry.dn, name, next_start)
                if more is None:
                    raise IncompleteRead(
                        f"{self.uri}: ranged read of {name} on {entry.dn!r} returned nothing"
                    )
                chunk, end = more
                values.extend(chunk)
            attrs[name] = attrs.get(name, []) + values
        return Entry(entry.dn, attrs)

    def _read_range(self, dn: str, name: str, start: int) -> tuple[list[bytes], str] | None:
        results = self._search_all(dn, ldap.SCOPE_BASE, "(objectClass=*)", [f"{name};range={start}-*"])
        for result_dn, attrs in results:
            if result_dn is None:
                continue
            for key, values in attrs.items():
                match = _RANGE_RE.match(key)
                if match and match["name"].lower() == name:
                    return list(values), match["end"]
            return [], "*"  # the attribute has no values past ``start``
        return None


def attribute_type_names(values: Iterable[bytes]) -> frozenset[str]:
    """The names and OIDs (lower-case) of the ``attributeTypes`` values of a subschema entry,
    parsed by python-ldap's :class:`ldap.schema.SubSchema`."""
    schema = ldap.schema.SubSchema({"attributeTypes": list(values)}, check_uniqueness=0)
    names: set[str] = set()
    for oid in schema.listall(ldap.schema.AttributeType):
        names.add(oid.lower())
        names.update(name.lower() for name in schema.get_obj(ldap.schema.AttributeType, oid).names)
    return frozenset(names)


def _sids(values: Iterable[bytes]) -> Iterator[str]:
    for value in values:
        with contextlib.suppress(ValueError, IndexError):
            yield sid_to_str(value)


def _entry(dn: str, attrs: dict[str, list[bytes]]) -> Entry:
    return Entry(dn, {key.lower(): values for key, values in attrs.items()})


def _page_cookie(controls: list) -> bytes | None:
    for control in controls or ():
        if control.controlType == SimplePagedResultsControl.controlType:
            return control.cookie
    return None


def _scrubbed(error: ldap.LDAPError) -> DirectoryError:
    """A chained cause that keeps the server's words but none of python-ldap's call arguments."""
    return DirectoryError(_error_text(error))


def connection_config() -> ConnectionConfig:
    """The directory connection described by the ``LDAP_SYNC_*`` settings."""
    s = sync_settings
    return ConnectionConfig(
        uris=tuple(s.bind_uris),
        bind_dn=s.BIND_DN or "",
        bind_password=s.BIND_PASS or "",
        start_tls=s.START_TLS,
        ca_file=s.CA_FILE,
        require_cert=s.REQUIRE_CERT,
        network_timeout=float(s.NETWORK_TIMEOUT),
        operation_timeout=float(s.OPERATION_TIMEOUT),
        page_size=int(s.BIND_PAGESIZE),
        range_size=s.RANGE_SIZE,
        require_tls=s.REQUIRE_TLS is True,
    )
