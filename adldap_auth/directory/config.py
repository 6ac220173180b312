"""What a directory connection needs (URIs, bind account, TLS, timeouts), as the
``LDAP_SYNC_*`` settings describe it."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..conf import get_config


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


def connection_config() -> ConnectionConfig:
    """The directory connection described by the ``LDAP_SYNC_*`` settings."""
    s = get_config()
    return ConnectionConfig(
        uris=tuple(s.bind_uris),
        bind_dn=s.BIND_DN or "",
        bind_password=s.BIND_PASS or "",
        start_tls=s.START_TLS,
        ca_file=s.CA_FILE,
        require_cert=s.REQUIRE_CERT,
        network_timeout=s.NETWORK_TIMEOUT,
        operation_timeout=s.OPERATION_TIMEOUT,
        page_size=s.BIND_PAGESIZE,
        range_size=s.RANGE_SIZE,
        require_tls=s.REQUIRE_TLS,
    )
