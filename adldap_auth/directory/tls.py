"""TLS for directory connections: refusing clear-text URIs, explaining an unusable CA file,
and naming the cause of a failed handshake that libldap reports only as "Can't contact"."""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Iterable
from urllib.parse import urlsplit

import ldap

from .config import ConnectionConfig


def uses_tls(uri: str, config: ConnectionConfig) -> bool:
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


def await_tls_handshake(uri: str, timeout: float) -> None:
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


def tls_problem(uri: str, config: ConnectionConfig) -> str | None:
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
