"""`mpu certs`: a certificate authority, a server certificate and client node keys.

For a test or a small deployment: the server's TLS certificate is signed by a fresh CA that the
clients pin (`ca.crt`), and each client gets an EC key pair (NIST P-384, OpenSSH format, the
format Flower's node authentication reads). The server registers the public halves; a node whose
key is not registered is refused by the SuperLink. Private keys are written mode 0600 and never
leave the party that owns them: `ca.key` and `server.key` stay with the server, `client-N.key`
goes to client N only. A production deployment would use its organisation's own CA instead.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mpu.errors import ConfigError
from mpu.io.checkpoint import atomic_write_bytes

VALID_DAYS = 365


@dataclass(frozen=True)
class CertFiles:
    """Where `make_certs` put each file (all in one folder)."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    def client_key(self, i: int) -> Path:
        return self.folder / f"client-{i}.key"

    def client_public_key(self, i: int) -> Path:
        return self.folder / f"client-{i}.pub"


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_certs(folder: str | Path, *, hosts: list[str], clients: int) -> CertFiles:
    """Write a CA, a server certificate valid for `hosts`, and `clients` node key pairs."""
    if clients < 1:
        raise ConfigError(f"--clients must be at least 1, got {clients}")
    if not hosts:
        raise ConfigError("the server certificate needs at least one host name or address")
    files = CertFiles(Path(folder))
    files.folder.mkdir(parents=True, exist_ok=True)
    if files.ca_cert.exists():
        raise ConfigError(f"{files.ca_cert}: already exists; make certificates in a new folder")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "MPU deployment CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    atomic_write_bytes(files.folder / "ca.key", _pem_key(ca_key), 0o600)
    atomic_write_bytes(files.server_key, _pem_key(server_key), 0o600)
    atomic_write_bytes(
        files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), 0o644
    )
    for i in range(1, clients + 1):
        key = ec.generate_private_key(ec.SECP384R1())
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        atomic_write_bytes(files.client_key(i), private, 0o600)
        atomic_write_bytes(files.client_public_key(i), public + b"\n", 0o644)
    atomic_write_bytes(
        files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644
    )  # last: done
    return files
