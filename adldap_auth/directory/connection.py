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
from collections.abc import Iterable, Iterator
from urllib.parse import urlsplit

import ldap
from ldap.controls import SimplePagedResultsControl
from ldap.ldapobject import LDAPObject

from . import DirectoryError, DirectoryTLSError, DirectoryUnavailable, Entry, IncompleteRead
from .config import ConnectionConfig, connection_config
from .decoding import guid_to_str, sid_to_str
from .rootdse import (
    AD_CAPABILITY_OID,
    PRIVILEGED_RIDS,
    PRIVILEGED_SIDS,
    RootDSE,
    attribute_type_names,
    privileged_groups,
)
from .tls import (
    await_tls_handshake,
    ca_file_problem,
    clear_text_refusal,
    split_uris,
    tls_problem,
    tls_settings_refused,
    uses_tls,
)

logger = logging.getLogger("adldap_auth.directory")

#: The session, and the configuration, TLS and rootDSE names callers import from here.
__all__ = [
    "AD_CAPABILITY_OID",
    "PRIVILEGED_RIDS",
    "PRIVILEGED_SIDS",
    "ConnectionConfig",
    "DirectorySession",
    "RootDSE",
    "attribute_type_names",
    "ca_file_problem",
    "clear_text_refusal",
    "connection_config",
    "privileged_groups",
    "split_uris",
    "tls_settings_refused",
]

_RANGE_RE = re.compile(r"^(?P<name>[^;]+);range=(?P<start>\d+)-(?P<end>\d+|\*)$", re.IGNORECASE)

#: Errors after which the next URI is tried.
_FAILOVER_ERRORS = (ldap.SERVER_DOWN, ldap.TIMEOUT, ldap.CONNECT_ERROR, ldap.UNAVAILABLE, ldap.BUSY)
#: Errors that mean a search did not see its whole scope.
INCOMPLETE_ERRORS = (
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


def error_text(error: ldap.LDAPError) -> str:
    """A one-line description of a python-ldap error, without any credentials."""
    details = error.args[0] if error.args and isinstance(error.args[0], dict) else {}
    desc = details.get("desc") or type(error).__name__
    info = details.get("info")
    return f"{desc} ({info})" if info else str(desc)


def _is_tls_failure(error: ldap.LDAPError) -> bool:
    text = error_text(error).lower()
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
                ) from scrubbed(error)
            except _FAILOVER_ERRORS as error:
                text = error_text(error)
                problem = None
                if uses_tls(uri, config) and not isinstance(error, ldap.TIMEOUT):
                    # libldap (GnuTLS) says only "Can't contact LDAP server": name the cause.
                    problem = tls_problem(uri, config)
                if problem:
                    text = f"TLS failed: {problem}"
                tls_failed = tls_failed or bool(problem) or _is_tls_failure(error)
                failures.append(f"{uri}: {text}")
                logger.warning("directory server %s unavailable: %s", uri, text)
                continue
            except ldap.LDAPError as error:
                raise DirectoryError(f"{uri}: {error_text(error)}") from scrubbed(error)
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
            await_tls_handshake(uri, config.network_timeout)
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
                "supportedControl",
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
            supported_controls=frozenset(
                v.decode("ascii", "replace") for v in entry.attrs.get("supportedcontrol", [])
            ),
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
            except INCOMPLETE_ERRORS as error:
                raise IncompleteRead(
                    f"{self.uri}: search of {base!r} stopped early: {error_text(error)}"
                ) from scrubbed(error)
            except ldap.LDAPError as error:
                raise DirectoryError(
                    f"{self.uri}: search of {base!r} failed: {error_text(error)}"
                ) from scrubbed(error)
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
        except INCOMPLETE_ERRORS as error:
            raise IncompleteRead(
                f"{self.uri}: read of {base!r} failed: {error_text(error)}"
            ) from scrubbed(error)
        except ldap.LDAPError as error:
            raise DirectoryError(
                f"{self.uri}: read of {base!r} failed: {error_text(error)}"
            ) from scrubbed(error)

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
        results = self._search_all(
            dn, ldap.SCOPE_BASE, "(objectClass=*)", [f"{name};range={start}-*"]
        )
        for result_dn, attrs in results:
            if result_dn is None:
                continue
            for key, values in attrs.items():
                match = _RANGE_RE.match(key)
                if match and match["name"].lower() == name:
                    return list(values), match["end"]
            return [], "*"  # the attribute has no values past ``start``
        return None


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


def scrubbed(error: ldap.LDAPError) -> DirectoryError:
    """A chained cause that keeps the server's words but none of python-ldap's call arguments."""
    return DirectoryError(error_text(error))
