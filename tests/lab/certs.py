"""A throw-away certificate authority for the lab servers (Samba AD, slapd).

Servers' self-made certificates carry no ``subjectAltName``, so a client that verifies the
host name cannot accept them for ``127.0.0.1``. :func:`make_certs` makes a CA and a server
certificate with ``subjectAltName=IP:127.0.0.1`` (plus ``DNS:localhost``) signed by it;
clients verify with ``ca_file``. :func:`make_wrong_ca` makes an unrelated CA so negative
tests can prove that verification really happens.

Only the ``openssl`` command line tool is used (no Python crypto dependency). Keys are
written with mode 0600 because Samba refuses a TLS key file readable by others.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Certs", "make_certs", "make_wrong_ca"]

#: Long enough that a cached lab template never outlives its certificates.
VALID_DAYS = 3650


@dataclass(frozen=True)
class Certs:
    """PEM files: the CA certificate clients trust, and the server's certificate and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def _openssl(*args: str, cwd: Path) -> None:
    """Run ``openssl``; raise with its stderr (not just the exit status) when it fails."""
    result = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


def _slug(name: str) -> str:
    """A file-name-safe form of a CA name, so several CAs can share one directory."""
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "ca"


def _make_ca(directory: Path, ca_name: str) -> tuple[Path, Path]:
    """Create a self-signed CA; return (certificate, key) paths."""
    slug = _slug(ca_name)
    ca_key, ca_file = directory / f"{slug}.key", directory / f"{slug}.pem"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
        "-days", str(VALID_DAYS), "-subj", f"/O=adldap-auth lab/CN={ca_name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", str(ca_key), "-out", str(ca_file),
        cwd=directory,
    )  # fmt: skip
    os.chmod(ca_key, 0o600)
    return ca_file, ca_key


def make_certs(directory: Path, ca_name: str = "Lab CA") -> Certs:
    """Create a CA named ``ca_name`` and a server certificate for 127.0.0.1 signed by it.

    Files are named after the CA (``lab-ca.pem``, ``lab-ca-server.pem``,
    ``lab-ca-server.key``), so a second call with another ``ca_name`` in the same directory
    does not overwrite the first set.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca_file, ca_key = _make_ca(directory, ca_name)
    slug = _slug(ca_name)
    key_file = directory / f"{slug}-server.key"
    cert_file = directory / f"{slug}-server.pem"
    csr_file = directory / f"{slug}-server.csr"
    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".ext", delete=False) as ext:
        ext.write(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        )
    try:
        _openssl(
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256",
            "-subj", "/O=adldap-auth lab/CN=127.0.0.1",
            "-keyout", str(key_file), "-out", str(csr_file),
            cwd=directory,
        )  # fmt: skip
        os.chmod(key_file, 0o600)
        _openssl(
            "x509", "-req", "-in", str(csr_file), "-CA", str(ca_file), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", str(VALID_DAYS), "-sha256",
            "-extfile", ext.name, "-out", str(cert_file),
            cwd=directory,
        )  # fmt: skip
    finally:
        Path(ext.name).unlink(missing_ok=True)
        csr_file.unlink(missing_ok=True)
    return Certs(ca_file=ca_file, cert_file=cert_file, key_file=key_file)


def make_wrong_ca(directory: Path, ca_name: str = "Wrong CA") -> Path:
    """Create an unrelated CA and return its certificate: verifying a lab server must fail."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca_file, _ = _make_ca(directory, ca_name)
    return ca_file
